"""Open- and closed-loop load, and the latency statistics of what it measured.

Open loop: requests start on a fixed schedule (``rate`` per second) whatever
the answers do, and each latency is counted from the *scheduled* start, so a
server that falls behind shows it in the percentiles instead of slowing the
generator down (no coordinated omission). Closed loop: ``concurrency``
clients each send the next request as soon as the last one is answered, for
a fixed time; it measures the most the server (and this client) can do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

# Sends request number ``n`` with a client; returns the HTTP status (0: no answer).
Send = Callable[[httpx.AsyncClient, int], Awaitable[int]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0 to 100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Run:
    """What one load run measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    statuses: Counter[int] = field(default_factory=Counter)
    scheduled: list[float] = field(default_factory=list)  # wall-clock start of each request
    elapsed: float = 0.0  # seconds from the first start to the last answer
    send_span: float = 0.0  # seconds from the first start to the last start

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def throughput(self) -> float:
        """Answered 2xx requests per second."""
        return self.ok / self.elapsed if self.elapsed else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def _timed(send: Send, http: httpx.AsyncClient, n: int, due: float, run: Run) -> None:
    try:
        status = await send(http, n)
    except httpx.HTTPError:
        status = 0
    run.statuses[status] += 1
    if status:
        run.latencies.append(asyncio.get_running_loop().time() - due)


async def open_loop(clients: Clients, send: Send, rate: float, count: int) -> Run:
    """``count`` requests at ``rate`` per second, latencies from their scheduled starts."""
    loop = asyncio.get_running_loop()
    run = Run()
    start = loop.time() + 0.05
    wall = time.time() + 0.05
    tasks: list[asyncio.Task[None]] = []
    last_start = start
    for n in range(count):
        due = start + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        last_start = loop.time()
        run.scheduled.append(wall + n / rate)
        tasks.append(asyncio.create_task(_timed(send, clients.pick(n), n, due, run)))
    await asyncio.gather(*tasks)
    run.elapsed = loop.time() - start
    run.send_span = last_start - start
    return run


async def closed_loop(clients: Clients, send: Send, concurrency: int, seconds: float) -> Run:
    """``concurrency`` clients sending back to back for ``seconds``."""
    loop = asyncio.get_running_loop()
    run = Run()
    start = loop.time()
    stop = start + seconds
    counter = iter(range(1 << 62))

    async def client(http: httpx.AsyncClient) -> None:
        while loop.time() < stop:
            await _timed(send, http, next(counter), loop.time(), run)

    await asyncio.gather(*(client(clients.pick(n)) for n in range(concurrency)))
    run.elapsed = loop.time() - start
    run.send_span = run.elapsed
    return run


class Clients:
    """Keep-alive HTTP clients to one server, a few requests in flight on each.

    httpx's connection pool costs more per request the more requests share
    it (with 32 in flight on one client, about five times as much CPU as with
    one): this load generator would measure itself. So each closed-loop
    worker gets its own client, and open-loop requests take turns.
    """

    def __init__(self, base_url: str, count: int = 32) -> None:
        self.base_url = base_url
        self.all = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=httpx.Timeout(60.0),
                # Shorter than uvicorn's keep-alive (5 s): a connection the
                # server is closing is never reused (a spurious ReadError).
                limits=httpx.Limits(
                    max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0
                ),
            )
            for _ in range(count)
        ]

    def pick(self, n: int) -> httpx.AsyncClient:
        return self.all[n % len(self.all)]

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(http.aclose() for http in self.all))
