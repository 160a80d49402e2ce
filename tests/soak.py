"""The soak: thousands of Checkout Sessions through the emulator while everything goes wrong.

``make soak`` (``python -m tests.soak``) buys 10,000 sessions from the
Stripe emulator and lets a real ``fulfill serve`` process fulfill them, while

- the emulator sends every webhook twice, now and then holds them and
  flushes them newest-first or shuffled (a delayed payment's
  ``async_payment_succeeded`` before its ``completed``), and redelivers
  recent events several times at once;
- customers land on the order page as soon as they have paid, racing the
  webhooks;
- the API fails on a schedule: 500s, 429s with ``Retry-After``, dropped
  connections and latency, as shares of the calls and as bursts;
- the server is killed with SIGKILL twice, mid-load, and started again on
  the same port;
- the server's own reconcile sweep runs through the same faults.

The action of every product is a webhook to a merchant receiver that
records every request it gets: each is a performance. The soak counts what
the receiver saw, not what a receiver deduplicating by ``Idempotency-Key``
would have kept (that would be one per key, whatever the service did):

- repeats: performances of a line item beyond its first;
- of which in flight at a kill: the design allows a repeat only of an
  action in flight when its process died (the next holder performs it again
  with the same key, SPEC §6). Each start of the server sends to its own
  path on the receiver, so every performance names the process that made
  it; after each SIGKILL, before the next start, the soak reads which items
  the database holds recorded ``done``. A repeat is explained when the
  performance before it came from a killed server, the item was not
  recorded done when that server died, and the repeat came from a later
  server under the same key;
- unexplained repeats: every other one. Must be 0, or the soak fails.

Everything listens on 127.0.0.1; the run is bounded by ``time_limit``.
``tests/test_soak.py`` runs a 500-session version in ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfill.records import ITEM_DONE
from fulfill.store.database import create_engine
from tests.processes import Instance, start_instance
from tests.servers import free_port, serve_in_thread

API_KEY = "sk_test_soak"
WEBHOOK_SECRET = "whsec_soak_0123456789abcdef0123456789"
HOOK_SECRET = "soak_merchant_hook_secret"
ACTION_TIMEOUT = 30  # seconds: the webhook action's timeout in the soak's catalog
FAULT_PATH = "/v1/checkout/sessions*"  # what fulfillment and reconcile call: retrieve, pages, list
# Stripe's webhook retry schedule, shortened (Stripe's own spans three days).
RETRY_DELAYS = ("--retry-delays", "0.5,1,2,4,8,15,30,60,60,60")
# The share of sessions paid by card, by a delayed method that succeeds, and by one that fails.
OUTCOMES = (("paid", 0.88), ("delayed_ok", 0.08), ("delayed_failed", 0.04))


@dataclass(frozen=True)
class SoakConfig:
    workdir: Path
    sessions: int = 10_000
    kills: int = 2
    seed: int = 1
    buyers: int = 8  # customers paying at once
    max_backlog: int = 400  # paid but not yet fulfilled, before customers wait (a steady shop)
    visit_share: float = 0.5  # customers who land on the order page right after paying
    fault_period: float = 1.5  # seconds between changes of the fault schedule
    reconcile_minutes: float = 1.0  # the server's own sweep, FULFILL_RECONCILE_INTERVAL
    inline_budget: float = 5.0
    time_limit: float = 1800.0  # the whole run
    database_url: str | None = None  # SQLite in workdir by default


@dataclass(frozen=True)
class Plan:
    outcome: str
    prices: tuple[tuple[str, int], ...]
    visit: bool

    @property
    def payable(self) -> bool:
        return self.outcome != "delayed_failed"


@dataclass(frozen=True)
class Receipt:
    key: str
    session_id: str
    line_item_id: str
    at: float
    server: int  # which start of the server sent it: 0, then 1 after the first kill, …

    @property
    def item(self) -> tuple[str, str]:
        return (self.session_id, self.line_item_id)


# -- the merchant's receiver ------------------------------------------------------------------


class MerchantReceiver:
    """The merchant's endpoint behind the webhook action.

    It checks ``Fulfill-Signature`` and records every signed request as a
    performance, with the server that sent it (``/hook/{server}``): the soak
    counts what a receiver sees, repeats included, not what one deduplicating
    by ``Idempotency-Key`` would keep.
    """

    def __init__(self, seed: int) -> None:
        self.receipts: list[Receipt] = []
        self.refused = 0
        self.lock = threading.Lock()
        self.rng = random.Random(seed)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            if not _signed(body, request.headers.get("fulfill-signature", "")):
                with self.lock:
                    self.refused += 1
                return JSONResponse({"error": "bad signature"}, status_code=400)
            item = json.loads(body)
            receipt = Receipt(
                request.headers.get("idempotency-key", ""),
                str(item.get("session_id")),
                str(item.get("line_item_id")),
                time.time(),
                request.path_params["server"],
            )
            with self.lock:
                self.receipts.append(receipt)
                delay = self.rng.random() / 100
            # A merchant's system takes a moment: actions are in flight when a kill comes.
            await asyncio.sleep(delay)
            return JSONResponse({"message": f"Delivered {receipt.key[-8:]}"})

        return Starlette(routes=[Route("/hook/{server:int}", hook, methods=["POST"])])


def _signed(body: bytes, header: str) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    signed = f"{parts.get('t', '')}.".encode() + body
    expected = hmac.new(HOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


# -- the emulator and the server as processes -------------------------------------------------


@contextmanager
def emulator_process(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = (workdir / "emulator.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fulfill", "emulator", "--port", str(port), *RETRY_DELAYS],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_emulator/webhooks", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the emulator did not start; see emulator.log")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def catalog(receiver_url: str) -> str:
    return f"""
[[product]]
name = "Everything the soak sells"
match = {{ metadata = {{ fulfill = "soak" }} }}
action = "webhook"
url = "{receiver_url}"
secret = "{HOOK_SECRET}"
timeout = "{ACTION_TIMEOUT}s"
"""


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One soak: its parts, what it did, and what it saw."""

    config: SoakConfig
    emulator: str
    receiver: MerchantReceiver
    receiver_url: str
    env: dict[str, str]
    port: int
    plans: dict[str, Plan] = field(default_factory=dict)
    line_items: dict[str, list[str]] = field(default_factory=dict)
    kill_times: list[float] = field(default_factory=list)
    ready_times: list[float] = field(default_factory=list)  # each start of the server, ready
    # Each kill: the items the database held recorded done once the server was dead.
    done_at_kills: list[set[tuple[str, str]]] = field(default_factory=list)
    visits: Counter[str] = field(default_factory=Counter)
    latency_hits: int = 0
    started: float = field(default_factory=time.monotonic)
    paid: int = 0
    settled: int = 0  # sessions recorded fulfilled or payment_failed
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    instance: Instance | None = None
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.control = httpx.Client(base_url=self.emulator, timeout=120)
        self.api = httpx.Client(base_url=self.emulator, timeout=30, auth=(API_KEY, ""))

    # -- the server --------------------------------------------------------------------------

    def start_server(self) -> None:
        server = len(self.logs)
        log = self.config.workdir / f"server-{server}.log"
        self.logs.append(log)
        # Each start sends to its own path, so that every performance the
        # receiver sees names the process that made it.
        catalog_path = self.config.workdir / f"catalog-{server}.toml"
        catalog_path.write_text(catalog(f"{self.receiver_url}/hook/{server}"))
        env = {**self.env, "FULFILL_CATALOG": str(catalog_path)}
        self.instance = start_instance(env, log, port=self.port)
        self.ready_times.append(time.time())

    def kill_server(self) -> None:
        assert self.instance is not None
        self.kill_times.append(time.time())
        self.instance.kill()
        # Nothing runs until the next start: this is what the dead process
        # left recorded done, and what it was performing that it was not.
        self.done_at_kills.append(self.done_items())

    # -- setting up ----------------------------------------------------------------------------

    def prices(self) -> list[str]:
        found = []
        for n in range(6):
            product = self._api_post(
                "/v1/products", {"name": f"Soak item {n}", "metadata[fulfill]": "soak"}
            )
            price = self._api_post(
                "/v1/prices",
                {"currency": "eur", "unit_amount": str(500 + 100 * n), "product": product["id"]},
            )
            found.append(str(price["id"]))
        return found

    def plan(self, prices: list[str]) -> list[Plan]:
        plans = []
        for _ in range(self.config.sessions):
            outcome = self.rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
            count = self.rng.choice((1, 1, 2, 3))
            chosen = self.rng.sample(prices, count)
            plans.append(
                Plan(
                    outcome,
                    tuple((p, self.rng.randint(1, 3)) for p in chosen),
                    self.rng.random() < self.config.visit_share,
                )
            )
        return plans

    # -- customers --------------------------------------------------------------------------------

    def buy(self, plan: Plan, rng: random.Random) -> None:
        while self.backlog() > self.config.max_backlog and not self.stop.is_set():
            time.sleep(0.2)
        if self.stop.is_set():
            return  # out of time: not bought, so the report counts it short
        form = {
            "mode": "payment",
            "success_url": f"http://127.0.0.1:{self.port}/checkout/complete"
            "?session_id={CHECKOUT_SESSION_ID}",
            "expand[]": "line_items",
        }
        for n, (price, quantity) in enumerate(plan.prices):
            form[f"line_items[{n}][price]"] = price
            form[f"line_items[{n}][quantity]"] = str(quantity)
        session = self._api_post("/v1/checkout/sessions", form)
        session_id = str(session["id"])
        with self.lock:
            self.plans[session_id] = plan
            self.line_items[session_id] = [i["id"] for i in session["line_items"]["data"]]
        outcome = "paid" if plan.outcome == "paid" else "delayed"
        self._pay(f"/_emulator/sessions/{session_id}/complete", {"outcome": outcome})
        if plan.outcome != "paid":
            time.sleep(rng.random())
            result = "succeeded" if plan.outcome == "delayed_ok" else "failed"
            self._pay(f"/_emulator/sessions/{session_id}/settle", {"result": result})
        with self.lock:
            self.paid += 1
        if plan.visit:
            self.visit(session_id)

    def visit(self, session_id: str) -> None:
        """The customer lands, and refreshes while the page says to (or is unreachable)."""
        url = f"http://127.0.0.1:{self.port}/checkout/complete"
        for _ in range(20):
            try:
                answer = httpx.get(
                    url,
                    params={"session_id": session_id},
                    headers={"Accept": "application/json"},
                    timeout=30,
                )
                outcome = str(answer.status_code)
            except httpx.HTTPError:
                outcome = "unreachable"
            with self.lock:
                self.visits[outcome] += 1
            if outcome not in ("503", "unreachable"):
                return
            time.sleep(0.5)

    def backlog(self) -> int:
        with self.lock:
            return self.paid - self.settled

    # -- chaos ------------------------------------------------------------------------------------

    def chaos(self) -> None:
        """Change the API faults and the webhook delivery every ``fault_period`` seconds."""
        rng = random.Random(self.config.seed + 1)
        while not self.stop.wait(self.config.fault_period):
            try:
                self.clear_faults()
                for spec in self._fault_scenario(rng):
                    fault = {"path": FAULT_PATH, "method": "GET", **spec}
                    self._control_post("/_emulator/faults", fault)
                roll = rng.random()
                if roll < 0.2:
                    self._hold_then_flush(rng)
                elif roll < 0.35:
                    self._redeliver_recent(rng)
            except httpx.HTTPError as exc:
                print(f"[soak] chaos step skipped: {exc!r}", flush=True)

    def _fault_scenario(self, rng: random.Random) -> list[dict[str, Any]]:
        roll = rng.random()
        if roll < 0.3:
            return []  # calm
        if roll < 0.55:
            return [
                {"kind": "error", "share": 0.1, "status": rng.choice((500, 502, 503))},
                {"kind": "rate_limit", "share": 0.05, "retry_after": rng.choice((0.2, 0.5, 1))},
                {"kind": "drop", "share": 0.05},
                {"kind": "latency", "share": 0.3, "latency_ms": rng.randint(20, 200)},
            ]
        if roll < 0.65:
            return [{"kind": "error", "count": rng.randint(20, 60), "status": 500}]
        if roll < 0.75:
            return [{"kind": "rate_limit", "count": rng.randint(20, 60), "retry_after": 0.5}]
        if roll < 0.85:
            return [{"kind": "drop", "count": rng.randint(10, 30)}]
        return [{"kind": "latency", "share": 1.0, "latency_ms": rng.randint(300, 800)}]

    def clear_faults(self) -> None:
        """Remove every fault, counting the latency that was added (failures are in the log)."""
        rules = self.control.get("/_emulator/faults").json()["data"]
        self.latency_hits += sum(r["hits"] for r in rules if r["kind"] == "latency")
        self.control.delete("/_emulator/faults")

    def _hold_then_flush(self, rng: random.Random) -> None:
        self._control_post("/_emulator/webhooks", {"mode": "hold"})
        time.sleep(rng.uniform(0.5, self.config.fault_period))
        self._control_post("/_emulator/webhooks", {"mode": "live"})
        order = rng.choice(("reverse", "shuffle"))
        body = {"order": order, "concurrent": True, "seed": rng.randint(0, 1000)}
        # Flushing answers when every held event is answered: in the background.
        threading.Thread(
            target=self._control_post, args=("/_emulator/webhooks/flush", body), daemon=True
        ).start()

    def _redeliver_recent(self, rng: random.Random) -> None:
        events = self.api.get("/v1/events", params={"limit": 30}).json().get("data", [])
        for event in rng.sample(events, min(5, len(events))):
            threading.Thread(
                target=self._control_post,
                args=(f"/_emulator/events/{event['id']}/deliver", {"copies": 3}),
                daemon=True,
            ).start()

    # -- helpers --------------------------------------------------------------------------------

    def _api_post(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        """A POST to the API, again if the connection broke (a kept-alive one may close)."""
        problem = ""
        for _ in range(10):
            try:
                answer = self.api.post(path, data=form)
            except httpx.TransportError as exc:
                # Maybe created after all: an open session nobody pays, which
                # nothing fulfills and reconcile does not list.
                problem = repr(exc)
            else:
                if answer.status_code == 200:
                    result: dict[str, Any] = answer.json()
                    return result
                problem = f"{answer.status_code} {answer.text[:200]}"
            time.sleep(0.2)
        raise RuntimeError(f"POST {path}: {problem}")

    def _pay(self, path: str, body: dict[str, Any]) -> None:
        """Complete or settle a session: surely, exactly once."""
        for attempt in range(10):
            try:
                answer = self.control.post(path, json=body)
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            # A 400 after a broken connection: the first request did it.
            if answer.status_code == 200 or (answer.status_code == 400 and attempt > 0):
                return
            raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text[:200]}")
        raise RuntimeError(f"POST {path}: the emulator did not answer")

    def _control_post(self, path: str, body: dict[str, Any]) -> None:
        """A control call whose failure changes nothing the soak counts (faults, flushes)."""
        with suppress(httpx.HTTPError):
            self.control.post(path, json=body)

    def database_statuses(self) -> dict[str, str]:
        query = "SELECT session_id, status FROM fulfillments"
        rows = asyncio.run(_rows(self.env["FULFILL_DATABASE_URL"], query))
        return {str(r[0]): str(r[1]) for r in rows}

    def done_items(self) -> set[tuple[str, str]]:
        """The line items the database holds recorded ``done``."""
        rows = asyncio.run(
            _rows(
                self.env["FULFILL_DATABASE_URL"],
                "SELECT session_id, line_item_id FROM fulfillment_items WHERE status = :done",
                {"done": ITEM_DONE},
            )
        )
        return {(str(r[0]), str(r[1])) for r in rows}


async def _rows(
    database_url: str, query: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(text(query), params or {})]
    finally:
        await engine.dispose()


# -- the report -------------------------------------------------------------------------------


@dataclass
class Repeats:
    """The performances of each line item beyond its first, judged against the kills."""

    explained: int  # in flight at a kill: performed again by a later server, as designed
    unexplained: list[str]  # every other repeat, said in a line
    in_flight: list[int]  # each kill: items the killed server performed but had not recorded done


def judge_repeats(receipts: list[Receipt], done_at_kills: list[set[tuple[str, str]]]) -> Repeats:
    """Explain each repeat by a kill that caught its item in flight, or say why it is not.

    ``receipts`` are every performance the receiver saw, each naming its
    server (the n-th start; server n was killed when n < len(done_at_kills)).
    ``done_at_kills[n]`` holds the items the database had recorded done once
    server n was dead. The design allows a repeat only of an action in flight
    when its process died (docs/claims.md): the performance before it came
    from a killed server that had not recorded the item done, and the repeat
    from a later server, under the same ``Idempotency-Key``.
    """
    in_flight = [
        {r.item for r in receipts if r.server == server} - done
        for server, done in enumerate(done_at_kills)
    ]
    performances: dict[tuple[str, str], list[Receipt]] = {}
    for receipt in sorted(receipts, key=lambda r: (r.server, r.at)):
        performances.setdefault(receipt.item, []).append(receipt)
    explained = 0
    unexplained: list[str] = []
    for item, seen in performances.items():
        for before, again in pairwise(seen):
            name = f"{item[0]}:{item[1]}"
            if again.server == before.server:
                why = f"performed twice by server {before.server}"
            elif before.server >= len(in_flight):
                why = f"performed by server {before.server}, never killed, then again"
            elif item not in in_flight[before.server]:
                why = f"recorded done when server {before.server} was killed, then performed again"
            elif again.key != before.key:
                why = f"performed again under another key ({before.key!r}, then {again.key!r})"
            else:
                explained += 1
                continue
            unexplained.append(
                f"{name} {why} (by server {before.server} at {before.at:.3f}, "
                f"by server {again.server} at {again.at:.3f})"
            )
    return Repeats(explained, unexplained, [len(items) for items in in_flight])


@dataclass
class Report:
    sessions: int
    outcomes: Counter[str]
    deliveries: Counter[str]
    unacknowledged: int
    visits: Counter[str]
    api_calls: Counter[str]
    faults: Counter[str]
    crashes: int
    downtimes: list[tuple[float, float]]  # each kill: seconds into the run, seconds down
    performances: int  # every request the receiver got, correctly signed
    items_expected: int
    items_performed: int
    repeats: int  # performances of a line item beyond its first
    repeats_in_flight_at_a_kill: int
    repeats_unexplained: int
    in_flight_at_kills: list[int]  # each kill: items in flight, performed but not recorded done
    missing: int
    performed_unpaid: int
    unexpected: int
    sessions_fulfilled: int
    sessions_payable: int
    payment_failed_recorded: int
    seconds: float
    sessions_planned: int
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.sessions == self.sessions_planned
            and self.missing == 0
            and self.repeats_unexplained == 0
            and self.performed_unpaid == 0
            and self.unexpected == 0
            and self.sessions_fulfilled == self.sessions_payable
            and self.payment_failed_recorded == self.outcomes["delayed_failed"]
        )

    def rows(self) -> list[tuple[str, str]]:
        def counts(counter: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))

        in_flight = sum(self.in_flight_at_kills)
        each_kill = ", ".join(map(str, self.in_flight_at_kills)) or "no kill"
        return [
            ("sessions", f"{self.sessions} of {self.sessions_planned} ({counts(self.outcomes)})"),
            (
                "webhook deliveries",
                f"{sum(self.deliveries.values())} ({counts(self.deliveries)}; "
                f"{self.unacknowledged} not acknowledged: server down)",
            ),
            ("landing visits", f"{sum(self.visits.values())} (answers: {counts(self.visits)})"),
            ("API calls", f"{sum(self.api_calls.values())} ({counts(self.api_calls)})"),
            ("faults injected", f"{sum(self.faults.values())} ({counts(self.faults)})"),
            (
                "crashes (SIGKILL, restarted)",
                f"{self.crashes}"
                + "".join(
                    f"; at {at:.0f} s, back {down:.1f} s later" for at, down in self.downtimes
                ),
            ),
            ("performances (requests received)", str(self.performances)),
            ("line items performed", f"{self.items_performed} of {self.items_expected}"),
            ("repeats (an item again)", str(self.repeats)),
            (
                "of which in flight at a kill",
                f"{self.repeats_in_flight_at_a_kill} (of {in_flight} items the killed servers "
                f"were performing, not recorded done: {each_kill})",
            ),
            ("unexplained repeats", f"{self.repeats_unexplained} (must be 0)"),
            ("missing", f"{self.missing} (must be 0)"),
            ("performed for unpaid sessions", f"{self.performed_unpaid} (must be 0)"),
            ("performed outside any session", f"{self.unexpected} (must be 0)"),
            ("sessions fulfilled", f"{self.sessions_fulfilled} of {self.sessions_payable}"),
            (
                "failed payments recorded",
                f"{self.payment_failed_recorded} of {self.outcomes['delayed_failed']}",
            ),
            ("seconds", f"{self.seconds:.0f}"),
            ("result", "PASS" if self.passed else "FAIL"),
        ]

    def table(self) -> str:
        """The rows as a Markdown table (as docs/soak.md keeps it), then any notes."""
        rows = [("what", "count"), *self.rows()]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {name:<{width}} | {value} |" for name, value in rows]
        lines.insert(1, f"|{'-' * (width + 2)}|---|")
        return "\n".join([*lines, *self.notes])


def report(run: Run, statuses: dict[str, str], seconds: float) -> Report:
    receiver = run.receiver
    with receiver.lock:
        receipts = list(receiver.receipts)
    expected = {
        (session_id, item)
        for session_id, plan in run.plans.items()
        if plan.payable
        for item in run.line_items[session_id]
    }
    unpaid = {s for s, plan in run.plans.items() if not plan.payable}
    performed = {r.item for r in receipts}
    repeats = judge_repeats(receipts, run.done_at_kills)
    times = {
        "kills": run.kill_times,
        "ready": run.ready_times,
        "in_flight_at_kills": repeats.in_flight,
    }
    (run.config.workdir / "kills.json").write_text(json.dumps(times))
    with (run.config.workdir / "receipts.jsonl").open("w") as out:
        for receipt in receipts:
            out.write(json.dumps(receipt.__dict__) + "\n")
    attempts = run.control.get("/_emulator/deliveries").json()["attempts"]
    deliveries: Counter[str] = Counter(str(a["kind"]) for a in attempts)
    unacknowledged = sum(1 for a in attempts if a["status"] is None or not 200 <= a["status"] < 300)
    requests = run.control.get("/_emulator/requests").json()
    log = requests["requests"]
    faults: Counter[str] = Counter(
        {0: "dropped", 429: "429"}.get(r["status"], "5xx") for r in log if r["fault"]
    )
    faults["latency"] = run.latency_hits
    # The server's calls (retrieves, further pages, reconcile's list) and the soak's own.
    calls: Counter[str] = Counter()
    for endpoint, count in requests["counts"].items():
        calls[endpoint if endpoint.startswith("GET /v1/checkout") else "the soak's own"] += count
    payable = [s for s, plan in run.plans.items() if plan.payable]
    outcomes = Counter(plan.outcome for plan in run.plans.values())
    result = Report(
        sessions=len(run.plans),
        outcomes=outcomes,
        deliveries=deliveries,
        unacknowledged=unacknowledged,
        visits=run.visits,
        api_calls=calls,
        faults=faults,
        crashes=len(run.kill_times),
        downtimes=[
            (kill - run.ready_times[0], run.ready_times[n + 1] - kill)
            for n, kill in enumerate(run.kill_times)
            if n + 1 < len(run.ready_times)
        ],
        performances=len(receipts),
        items_expected=len(expected),
        items_performed=len(performed & expected),
        repeats=len(receipts) - len(performed),
        repeats_in_flight_at_a_kill=repeats.explained,
        repeats_unexplained=len(repeats.unexplained),
        in_flight_at_kills=repeats.in_flight,
        missing=len(expected - performed),
        performed_unpaid=sum(1 for session_id, _ in performed if session_id in unpaid),
        unexpected=sum(1 for item in performed - expected if item[0] not in unpaid),
        sessions_fulfilled=sum(1 for s in payable if statuses.get(s) == "fulfilled"),
        sessions_payable=len(payable),
        payment_failed_recorded=sum(1 for s in unpaid if statuses.get(s) == "payment_failed"),
        seconds=seconds,
        sessions_planned=run.config.sessions,
    )
    result.notes += [f"unexplained repeat: {line}" for line in repeats.unexplained[:10]]
    if receiver.refused:
        result.notes.append(f"the receiver refused {receiver.refused} badly signed requests")
    return result


# -- driving it ---------------------------------------------------------------------------------


def run_soak(config: SoakConfig, *, echo: bool = True) -> Report:
    """Run the whole soak and report; the server and the emulator are stopped at the end."""
    config.workdir.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if echo:
            print(f"[soak {time.monotonic() - started:6.1f}s] {message}", flush=True)

    started = time.monotonic()
    receiver = MerchantReceiver(config.seed)
    with (
        serve_in_thread(receiver.app()) as receiver_url,
        emulator_process(config.workdir) as emulator,
    ):
        port = free_port()
        database_url = config.database_url or f"sqlite:///{config.workdir / 'soak.db'}"
        env = {
            "STRIPE_SECRET_KEY": API_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": emulator,
            "FULFILL_DATABASE_URL": database_url,
            "FULFILL_INLINE_BUDGET": str(config.inline_budget),
            "FULFILL_LEASE_SECONDS": "10",
            "FULFILL_RETRY_BASE": "1",
            "FULFILL_WORKER_INTERVAL": "0.5",
            "FULFILL_RECONCILE_INTERVAL": str(config.reconcile_minutes),
            "FULFILL_RECONCILE_SINCE": "1d",
            "FULFILL_RECONCILE_RATE": "20",
            # Every customer of the soak comes from 127.0.0.1.
            "FULFILL_LOOKUPS_PER_CLIENT": "1000000",
            "FULFILL_LOOKUPS_PER_SECOND": "1000000",
        }
        run = Run(config, emulator, receiver, receiver_url, env, port)
        try:
            return _drive(run, say)
        finally:
            run.stop.set()
            if run.instance is not None:
                run.instance.stop()
            run.control.close()
            run.api.close()


def _drive(run: Run, say: Any) -> Report:
    config = run.config
    deadline = time.monotonic() + config.time_limit
    run.start_server()
    run._control_post(
        "/_emulator/webhook_endpoints",
        {
            "url": f"http://127.0.0.1:{run.port}/webhooks/stripe",
            "secret": WEBHOOK_SECRET,
            "enabled_events": ["checkout.session.*"],
        },
    )
    run._control_post("/_emulator/webhooks", {"copies": 2, "timeout": 30})
    plans = run.plan(run.prices())
    say(f"server on port {run.port}; buying {len(plans)} sessions")
    chaos = threading.Thread(target=run.chaos, daemon=True)
    chaos.start()
    watcher = threading.Thread(target=_watch, args=(run,), daemon=True)
    watcher.start()
    kill_at = [len(plans) * (n + 1) // (config.kills + 1) for n in range(config.kills)]
    seeds = random.Random(config.seed + 2)
    with ThreadPoolExecutor(max_workers=config.buyers) as pool:
        futures = [pool.submit(run.buy, plan, random.Random(seeds.random())) for plan in plans]
        for n, future in enumerate(futures, 1):
            try:
                future.result(timeout=max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                say(f"time limit reached after {n - 1} sessions")
                run.stop.set()
                pool.shutdown(cancel_futures=True)
                break
            if kill_at and n >= kill_at[0]:
                kill_at.pop(0)
                run.kill_server()
                say(f"SIGKILL after {n} sessions; restarting")
                time.sleep(seeds.uniform(0.2, 1.5))
                run.start_server()
            if n % 1000 == 0:
                say(f"{n} paid, {run.settled} settled")
    say(f"{run.paid} paid; faults off, webhooks live; waiting for the rest")
    run.stop.set()
    chaos.join(timeout=30)
    run.clear_faults()
    run._control_post("/_emulator/webhooks", {"mode": "live"})
    run._control_post("/_emulator/webhooks/flush", {"order": "shuffle", "concurrent": True})
    payable = {s for s, plan in run.plans.items() if plan.payable}
    unpaid = {s for s, plan in run.plans.items() if not plan.payable}
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = run.database_statuses()
        left = [s for s in payable if statuses.get(s) != "fulfilled"]
        left += [s for s in unpaid if statuses.get(s) != "payment_failed"]
        if not left:
            break
        time.sleep(1)
    # Anything still on its way (an action, a delivery) lands before counting.
    with suppress(httpx.HTTPError):
        run.control.get("/_emulator/webhooks/idle", params={"timeout": 20}, timeout=30)
    time.sleep(2)
    statuses = run.database_statuses()
    seconds = time.monotonic() - run.started
    assert run.instance is not None
    run.instance.stop()
    result = report(run, statuses, seconds)
    logs = "".join(path.read_text(errors="replace") for path in run.logs)
    if "Traceback" in logs:
        result.notes.append(f"server logs hold {logs.count('Traceback')} tracebacks")
    if "database is locked" in logs:
        result.notes.append("server logs say 'database is locked'")
    return result


def _watch(run: Run) -> None:
    """Keep ``run.settled`` current, for the backlog limit and the progress lines."""
    while not run.stop.wait(1.0):
        with suppress(Exception):
            statuses = run.database_statuses().values()
            settled = sum(1 for s in statuses if s in ("fulfilled", "payment_failed"))
            with run.lock:
                run.settled = settled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--buyers", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds")
    parser.add_argument("--database-url", default=None, help="default: SQLite in --workdir")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="default: a new folder under var/soak/"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path("var/soak") / time.strftime("%Y%m%d-%H%M%S")
    if (workdir / "soak.db").exists():
        parser.error(f"{workdir} holds an earlier run; give a new --workdir")
    config = SoakConfig(
        workdir=workdir,
        sessions=args.sessions,
        kills=args.kills,
        seed=args.seed,
        buyers=args.buyers,
        time_limit=args.time_limit,
        database_url=args.database_url,
    )
    result = run_soak(config)
    print(result.table())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
