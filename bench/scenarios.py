"""The scenarios: what load each one offers, and what it reads back.

Every scenario returns plain dataclasses (``report`` prints and saves them).
Times are seconds here; the report shows milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import dataclass, field

from bench.database import Database
from bench.http import ClientError, Pool
from bench.load import Run, Send, closed_loop, open_loop, percentile
from bench.shop import Paid, Shop, signed_headers
from bench.stack import Process

WEBHOOK_SECRET = "whsec_bench_0123456789abcdefghijklmnop"  # noqa: S105 - the bench's own
# Stripe's expanded line_items carries 10; the service asks for the rest 100 a page.
FIRST_PAGE, NEXT_PAGES = 10, 100
WARM_UP = 1.0  # seconds of unmeasured load before each closed-loop measurement


@dataclass
class Target:
    """Who is under load: the process (whose CPU counts) and connections to it."""

    process: Process
    pool: Pool
    emulator: Process | None = None  # its CPU counts as Stripe's, not the service's
    webhook_path: str = "/webhooks/stripe"  # the service's; the guide's peer has its own
    landing_path: str = "/checkout/complete"


def webhook_request(target: Target, paid: Paid) -> bytes:
    """The delivery of ``paid``'s completed event, signed now, as Stripe sends it."""
    return target.pool.build(
        "POST",
        target.webhook_path,
        signed_headers(paid.payload, WEBHOOK_SECRET),
        paid.payload,
    )


def landing_request(target: Target, session_id: str, accept: str) -> bytes:
    return target.pool.build(
        "GET", f"{target.landing_path}?session_id={session_id}", {"Accept": accept}
    )


@dataclass
class Throughput:
    """A closed-loop measurement: requests per second and latency."""

    name: str
    requests: int
    ok: int
    rps: float
    p50: float
    p99: float
    server_cpu: float  # CPU seconds of the server per answered request
    client_cpu: float  # CPU seconds of this load generator per answered request
    statuses: dict[int, int] = field(default_factory=dict)


@dataclass
class Step:
    """One offered rate of new sessions delivered by webhook."""

    rate: float
    sessions: int
    acknowledged: int
    fulfilled: int
    sent_rate: float  # what the generator managed to offer
    fulfilled_rate: float  # sessions / (last fulfilled - first sent)
    ack_p50: float
    ack_p99: float
    fulfil_p50: float
    fulfil_p99: float
    server_cpu: float  # CPU seconds of the service per session
    emulator_cpu: float  # CPU seconds of the emulator (playing Stripe) per session
    client_cpu: float  # CPU seconds of this load generator per session
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def sustained(self) -> bool:
        """Every webhook acknowledged, every session fulfilled, and fulfillment kept pace."""
        return (
            self.acknowledged == self.sessions
            and self.fulfilled == self.sessions
            and self.sent_rate >= 0.95 * self.rate
            and self.fulfilled_rate >= 0.9 * self.rate
        )


@dataclass
class ApiCalls:
    """Stripe API calls the service made per fulfilled session."""

    items: int
    duplicates: bool
    sessions: int
    fulfilled: int
    calls: int
    expected_per_session: int
    max_per_session: int

    @property
    def per_session(self) -> float:
        return self.calls / self.sessions if self.sessions else math.nan


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(
    name: str, target: Target, send: Send, *, concurrency: int, seconds: float
) -> Throughput:
    """Closed-loop load with ``send``, and what it cost the server and this client.

    A short unmeasured warm-up first: connections opened, caches filled.
    """
    await closed_loop(send, concurrency, min(WARM_UP, seconds))
    server0, client0 = target.process.cpu_seconds(), _cpu()
    run: Run = await closed_loop(send, concurrency, seconds)
    server, client = target.process.cpu_seconds() - server0, _cpu() - client0
    return Throughput(
        name=name,
        requests=run.count,
        ok=run.ok,
        rps=run.throughput,
        p50=run.p(50),
        p99=run.p(99),
        server_cpu=server / max(1, run.ok),
        client_cpu=client / max(1, run.ok),
        statuses=dict(run.statuses),
    )


async def ceiling(target: Target, *, concurrency: int, seconds: float) -> Throughput:
    """1. A bare endpoint on the same stack: the most this client and server can do."""

    request = target.pool.build("GET", "/")

    async def send(n: int) -> int:
        return (await target.pool.send(request)).status

    return await measure("ceiling", target, send, concurrency=concurrency, seconds=seconds)


async def wait_fulfilled(
    database: Database, session_ids: list[str], timeout: float
) -> dict[str, float]:
    """When each of ``session_ids`` was fulfilled, waiting up to ``timeout`` for all."""
    wanted = set(session_ids)
    deadline = time.monotonic() + timeout
    while True:
        done = {s: at for s, at in (await database.fulfilled()).items() if s in wanted}
        if len(done) == len(wanted) or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.25)


async def webhook_step(
    target: Target, shop: Shop, database: Database, rate: float, seconds: float
) -> tuple[Step, list[Paid]]:
    """2. New paid sessions whose completed events arrive at ``rate`` per second."""
    paid = await shop.paid_sessions(max(1, round(rate * seconds)))
    # Signed now: a signature stays valid for the tolerance (300 s), far longer than a step.
    requests = [webhook_request(target, p) for p in paid]

    async def send(n: int) -> int:
        return (await target.pool.send(requests[n])).status

    emulator = target.emulator
    server0, client0 = target.process.cpu_seconds(), _cpu()
    emulator0 = emulator.cpu_seconds() if emulator else 0.0
    run = await open_loop(send, rate, len(paid))
    client = _cpu() - client0
    done = await wait_fulfilled(database, [p.session_id for p in paid], timeout=15)
    server = target.process.cpu_seconds() - server0
    emulator_cpu = emulator.cpu_seconds() - emulator0 if emulator else math.nan
    delays = [
        done[p.session_id] - run.scheduled[n] for n, p in enumerate(paid) if p.session_id in done
    ]
    span = max(done.values(), default=run.scheduled[0]) - run.scheduled[0]
    step = Step(
        rate=rate,
        sessions=len(paid),
        acknowledged=run.ok,
        fulfilled=len(done),
        sent_rate=(len(paid) - 1) / run.send_span if run.send_span else rate,
        fulfilled_rate=len(done) / span if span > 0 else 0.0,
        ack_p50=run.p(50),
        ack_p99=run.p(99),
        fulfil_p50=percentile(delays, 50),
        fulfil_p99=percentile(delays, 99),
        server_cpu=server / len(paid),
        emulator_cpu=emulator_cpu / len(paid),
        client_cpu=client / len(paid),
        statuses=dict(run.statuses),
    )
    return step, paid


async def record_sessions(
    target: Target, shop: Shop, database: Database, count: int, *, concurrency: int = 16
) -> list[Paid]:
    """``count`` sessions paid, delivered and fulfilled, unmeasured (for scenarios 3, 4)."""
    paid = await shop.paid_sessions(count)
    slots = asyncio.Semaphore(concurrency)

    async def deliver(p: Paid) -> None:
        async with slots:
            with contextlib.suppress(ClientError):
                await target.pool.send(webhook_request(target, p))

    await asyncio.gather(*(deliver(p) for p in paid))
    done = await wait_fulfilled(database, [p.session_id for p in paid], timeout=60)
    return [p for p in paid if p.session_id in done]


async def duplicates(
    target: Target, paid: list[Paid], *, concurrency: int, seconds: float
) -> Throughput:
    """3. Redeliveries of events already recorded: acknowledged at once, without work."""
    # Signed once: a signature stays valid for the tolerance (300 s), far longer than this.
    requests = [webhook_request(target, p) for p in paid]

    async def send(n: int) -> int:
        answer = await target.pool.send(requests[n % len(requests)])
        if answer.status == 200 and b'"duplicate"' not in answer.body:
            return 299  # an answer, but not a duplicate's: counted apart
        return answer.status

    return await measure("duplicates", target, send, concurrency=concurrency, seconds=seconds)


async def landing(
    target: Target, session_ids: list[str], *, concurrency: int, seconds: float
) -> Throughput:
    """4. Customers (re)loading the landing page of fulfilled orders, as HTML."""
    pool = target.pool
    requests = [landing_request(target, s, "text/html") for s in session_ids]

    # The first visit of each session records the "landing" trigger (one write);
    # what is measured is the steady state of customers reloading the page.
    slots = asyncio.Semaphore(concurrency)

    async def first(request: bytes) -> None:
        async with slots:
            await pool.send(request)

    await asyncio.gather(*(first(r) for r in requests))

    async def send(n: int) -> int:
        answer = await pool.send(requests[n % len(requests)])
        if answer.status == 200 and b"<html" not in answer.body[:200].lower():
            return 299  # not the page
        return answer.status

    return await measure("landing", target, send, concurrency=concurrency, seconds=seconds)


async def api_calls(
    target: Target,
    shop: Shop,
    database: Database,
    *,
    items: int,
    duplicated: bool,
    sessions: int = 20,
    copies: int = 5,
    visits: int = 3,
) -> ApiCalls:
    """5. Stripe calls per fulfilled session; with ``duplicated``, concurrent triggers.

    Duplicated: each session's event is delivered ``copies`` times at once and
    its landing page visited ``visits`` times at once, all sessions together.
    """
    paid = await shop.paid_sessions(sessions, items=items)
    position = await shop.log_position()

    pool = target.pool
    requests = [
        webhook_request(target, p) for p in paid for _ in range(copies if duplicated else 1)
    ]
    if duplicated:
        requests += [
            landing_request(target, p.session_id, "application/json")
            for p in paid
            for _ in range(visits)
        ]

    async def trigger(request: bytes) -> None:
        with contextlib.suppress(ClientError):  # what counts is what Stripe was asked
            await pool.send(request)

    await asyncio.gather(*(trigger(r) for r in requests))
    done = await wait_fulfilled(database, [p.session_id for p in paid], timeout=30)
    calls = await shop.session_calls(position)
    extra_pages = math.ceil(max(0, items - FIRST_PAGE) / NEXT_PAGES)
    return ApiCalls(
        items=items,
        duplicates=duplicated,
        sessions=len(paid),
        fulfilled=len(done),
        calls=sum(calls[p.session_id] for p in paid),
        expected_per_session=1 + extra_pages,
        max_per_session=max(calls[p.session_id] for p in paid),
    )
