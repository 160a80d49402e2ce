"""Stripe API faults during fulfillment and reconcile, and SQLite contention, recovered from.

Every test injects faults with the emulator's control API (latency, 500s,
429s with ``Retry-After``, dropped connections; as a share of the calls or
as a burst of the next N), lets the triggers run, then proves the two
guarantees by counting at the webhook-action receiver: every line item of
every paid session performed, and performed once (one request per
``Idempotency-Key``), and every session recorded ``fulfilled``. Progress is
watched in the database, never through the landing page, so that watching
does not itself trigger fulfillment.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from fulfill.emulator.delivery import sign
from fulfill.store.database import create_engine
from tests.conftest import (
    HOOK_METADATA,
    WEBHOOK_SECRET,
    EmulatorServer,
    ServiceFactory,
    ServiceServer,
)
from tests.load import Load, completed_events
from tests.processes import instances
from tests.servers import Receiver
from tests.test_cli import env_for
from tests.test_engine import wait_status
from tests.test_processes import service_env
from tests.test_reconcile import reconcile

SESSIONS = "/v1/checkout/sessions/*"  # retrieve and the further line-item pages


# -- helpers -----------------------------------------------------------------------------


def inject(shop: EmulatorServer, kind: str, **spec: Any) -> None:
    shop.post("/_emulator/faults", {"kind": kind, **spec})


def clear_faults(shop: EmulatorServer) -> None:
    assert shop.control.delete("/_emulator/faults").status_code == 200


def buy(shop: EmulatorServer, count: int, *, items: int = 2, outcome: str = "paid") -> list[str]:
    """``count`` sessions of ``items`` hook-fulfilled line items each, completed."""
    prices = [shop.price(f"Item {n}", product_metadata=HOOK_METADATA) for n in range(items)]
    sessions = [str(shop.session([(p, 1) for p in prices]).id) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: shop.complete(s, outcome), sessions))
    return sessions


def expected_keys(shop: EmulatorServer, sessions: list[str]) -> set[str]:
    """``{session_id}:{line_item_id}`` of every line item: what must be performed, once."""
    return {
        f"{session_id}:{item['id']}"
        for session_id in sessions
        for item in shop.emulator.state.line_items[session_id]
    }


def statuses(database_url: str) -> dict[str, str]:
    """Each recorded session's status, read straight from the database."""

    async def read() -> dict[str, str]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(text("SELECT session_id, status FROM fulfillments"))
                return {str(r[0]): str(r[1]) for r in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def wait_fulfilled(database_url: str, sessions: list[str], timeout: float) -> float:
    """Seconds until every session is ``fulfilled``; fails with what is left after ``timeout``."""
    started = time.monotonic()
    left: dict[str, str] = {}
    while time.monotonic() - started < timeout:
        recorded = statuses(database_url)
        left = {s: recorded.get(s, "no record") for s in sessions if recorded.get(s) != "fulfilled"}
        if not left:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{len(left)} sessions not fulfilled: {Counter(left.values())}")


def assert_exactly_once(receiver: Receiver, expected: set[str]) -> None:
    counts = Counter(r.headers["idempotency-key"] for r in receiver.received)
    assert set(counts) == expected, (
        f"missing {len(expected - set(counts))}, unexpected {len(set(counts) - expected)}"
    )
    repeated = {key: n for key, n in counts.items() if n > 1}
    assert not repeated, f"performed more than once: {repeated}"


def fault_hits(shop: EmulatorServer) -> Counter[str]:
    """Requests the emulator failed on purpose, by answer (0: dropped)."""
    log = shop.get("/_emulator/requests")["requests"]
    return Counter(str(r["status"]) for r in log if r["fault"])


def wait_idle(shop: EmulatorServer) -> None:
    """Until no webhook delivery is in flight (each may take the whole inline budget)."""
    answer = shop.control.get("/_emulator/webhooks/idle", params={"timeout": 60}, timeout=70)
    assert answer.json() == {"idle": True}


def service_with_webhooks(service_factory: ServiceFactory, **settings: Any) -> ServiceServer:
    service = service_factory(**settings)
    # Stripe's retry schedule, shortened: a refused delivery comes back soon.
    service.shop.post("/_emulator/webhooks", {"retry_delays": [0.2, 0.5, 1, 2, 4]})
    return service


def visit_all(service: ServiceServer, sessions: list[str]) -> list[int]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return [r.status_code for r in pool.map(service.landing, sessions)]


# -- faults while fulfilling ---------------------------------------------------------------


def test_latency_on_every_call_slows_but_each_item_is_performed_once(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_with_webhooks(service_factory)
    shop = service.shop
    shop.post("/_emulator/webhooks", {"copies": 2})
    inject(shop, "latency", latency_ms=400, path=SESSIONS, method="GET")
    sessions = buy(shop, 8)
    pages = visit_all(service, sessions)
    assert set(pages) == {200}
    wait_fulfilled(service.settings.database_url, sessions, timeout=20)
    assert_exactly_once(receiver, expected_keys(shop, sessions))
    # Two webhook copies and a visit racing one slow retrieve still cost one call.
    for session_id in sessions:
        assert shop.requests_to(f"/v1/checkout/sessions/{session_id}") == 1


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"kind": "error", "share": 0.5}, id="500-share"),
        pytest.param({"kind": "error", "count": 40}, id="500-burst"),
        pytest.param({"kind": "error", "status": 503, "share": 0.5}, id="503-share"),
        pytest.param({"kind": "rate_limit", "share": 0.5, "retry_after": 0.2}, id="429-share"),
        pytest.param({"kind": "rate_limit", "count": 40, "retry_after": 0.3}, id="429-burst"),
        pytest.param({"kind": "drop", "share": 0.4}, id="drop-share"),
        pytest.param({"kind": "drop", "count": 30}, id="drop-burst"),
    ],
)
def test_api_faults_during_webhook_fulfillment_are_recovered_from(
    service_factory: ServiceFactory, receiver: Receiver, fault: dict[str, Any]
) -> None:
    service = service_with_webhooks(service_factory)
    shop = service.shop
    inject(shop, path=SESSIONS, method="GET", **fault)
    # Twenty-five items: each retrieve is followed by a second page, which fails too.
    sessions = buy(shop, 12, items=2) + buy(shop, 2, items=25)
    # Each burst is over within seconds; the handler's own retries must carry
    # the work on, not the background worker's sweep of abandoned events.
    elapsed = wait_fulfilled(service.settings.database_url, sessions, timeout=25)
    assert elapsed < 20
    assert sum(fault_hits(shop).values()) >= 1, "the faults were hit (a share is random)"
    assert_exactly_once(receiver, expected_keys(shop, sessions))
    wait_idle(shop)
    deliveries = shop.get("/_emulator/deliveries")["attempts"]
    assert {a["status"] for a in deliveries} == {200}, "Stripe never had to redeliver"


def test_rate_limit_retry_after_is_honoured(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_with_webhooks(service_factory, webhooks=False)
    shop = service.shop
    inject(shop, "rate_limit", path=SESSIONS, method="GET", count=2, retry_after=0.6)
    (session_id,) = buy(shop, 1)
    started = time.monotonic()
    answer = service.landing(session_id)
    assert answer.status_code == 200
    assert answer.json()["status"] == "fulfilled"
    assert time.monotonic() - started >= 1.2, "waited Retry-After before each retry"
    log = shop.get(f"/_emulator/requests?path=/v1/checkout/sessions/{session_id}")["requests"]
    assert [r["status"] for r in log] == [429, 429, 200]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(log)]
    assert min(gaps) >= 0.55
    assert_exactly_once(receiver, expected_keys(shop, [session_id]))


def test_a_long_rate_limit_leaves_webhook_events_for_the_worker_then_recovers(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    """429s for longer than any inline retry: the events stay recorded, nothing is lost."""
    service = service_with_webhooks(service_factory, FULFILL_INLINE_BUDGET=1)
    shop = service.shop
    inject(shop, "rate_limit", path=SESSIONS, method="GET", retry_after=0.5)
    sessions = buy(shop, 6)
    wait_idle(shop)
    time.sleep(3)
    assert receiver.received == []
    assert not set(statuses(service.settings.database_url)) & set(sessions)
    deliveries = shop.get("/_emulator/deliveries")["attempts"]
    assert {a["status"] for a in deliveries} == {200}, "acknowledged: the events are recorded"
    requests_before_clear = shop.get("/_emulator/requests")["requests"]
    clear_faults(shop)
    wait_fulfilled(service.settings.database_url, sessions, timeout=40)
    assert_exactly_once(receiver, expected_keys(shop, sessions))
    # Backing off under a rate limit, not a storm: per event, at most six
    # attempts of the handler (pauses doubling from 0.5 s), each of at most
    # three calls (two retries after Retry-After).
    calls = Counter(str(r["path"]) for r in requests_before_clear if r["method"] == "GET")
    assert max(calls.values()) <= 6 * 3


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"kind": "rate_limit", "retry_after": 1}, id="429"),
        pytest.param({"kind": "error", "status": 500}, id="500"),
    ],
)
def test_landing_page_while_stripe_is_unavailable_claims_nothing_about_the_payment(
    service_factory: ServiceFactory, receiver: Receiver, fault: dict[str, Any]
) -> None:
    """No record and no Stripe: the page cannot tell a paid order from an abandoned one."""
    service = service_factory(webhooks=False)
    shop = service.shop
    (session_id,) = buy(shop, 1)
    inject(shop, path=SESSIONS, method="GET", **fault)
    page = service.landing(session_id, as_json=False)
    assert page.status_code == 503
    assert int(page.headers["retry-after"]) >= 1
    assert page.headers["cache-control"] == "no-store"
    card = page.text[page.text.index("<main") : page.text.index("</main>")]
    assert "Your order page could not be loaded just now" in card
    assert "payment" not in card.lower()
    # No self-reload (axe-core: meta-refresh); a button does it when the customer wants.
    assert 'http-equiv="refresh"' not in page.text
    assert f'href="?session_id={session_id}"' in page.text
    assert ">Try again</a>" in page.text
    answer = service.landing(session_id)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "temporarily_unavailable"
    clear_faults(shop)
    assert service.landing(session_id).json()["status"] == "fulfilled"
    assert_exactly_once(receiver, expected_keys(shop, [session_id]))


def test_landing_page_shows_a_known_order_while_stripe_is_unavailable(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    # Every visit may ask Stripe (no interval): the visits below meet its faults.
    service = service_factory(webhooks=False, FULFILL_PAYMENT_CHECK_INTERVAL=0)
    shop = service.shop
    (session_id,) = buy(shop, 1, outcome="delayed")
    assert service.landing(session_id).json()["status"] == "awaiting_payment"
    # A visit re-reads an unpaid session; with Stripe away the order is still shown.
    inject(shop, "error", path=SESSIONS, method="GET")
    page = service.landing(session_id, as_json=False)
    assert page.status_code == 200
    assert "Your payment is processing" in page.text
    assert 'data-testid="checking"' in page.text, "the page keeps checking by itself"
    shop.post(f"/_emulator/sessions/{session_id}/settle", {"result": "succeeded"})
    assert service.landing(session_id).json()["status"] == "awaiting_payment"
    clear_faults(shop)
    assert service.landing(session_id).json()["status"] == "fulfilled"
    assert_exactly_once(receiver, expected_keys(shop, [session_id]))


def test_out_of_order_and_duplicate_webhooks_under_faults(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_with_webhooks(service_factory)
    shop = service.shop
    shop.post("/_emulator/webhooks", {"mode": "hold", "copies": 2})
    paid = buy(shop, 10)
    delayed = buy(shop, 5, outcome="delayed")
    for session_id in delayed:
        shop.post(f"/_emulator/sessions/{session_id}/settle", {"result": "succeeded"})
    inject(shop, "error", path=SESSIONS, method="GET", share=0.3)
    inject(shop, "rate_limit", path=SESSIONS, method="GET", share=0.2, retry_after=0.2)
    inject(shop, "drop", path=SESSIONS, method="GET", share=0.1)
    inject(shop, "latency", path=SESSIONS, method="GET", latency_ms=50)
    # async_payment_succeeded before completed, copies at once, interleaved.
    flushed = shop.control.post(
        "/_emulator/webhooks/flush", json={"order": "reverse", "concurrent": True}, timeout=60
    )
    assert flushed.status_code == 200
    wait_fulfilled(service.settings.database_url, paid + delayed, timeout=25)
    assert_exactly_once(receiver, expected_keys(shop, paid + delayed))


# -- faults while reconciling ---------------------------------------------------------------


def test_reconcile_under_a_mix_of_faults_fulfills_every_session_once(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    sessions = buy(shop, 50, items=1)
    # On the list call and the retrieves alike.
    inject(shop, "error", path="/v1/checkout/sessions*", share=0.2)
    inject(shop, "rate_limit", path="/v1/checkout/sessions*", share=0.1, retry_after=0.1)
    inject(shop, "drop", path="/v1/checkout/sessions*", share=0.1)
    inject(shop, "latency", path="/v1/checkout/sessions*", latency_ms=20, share=0.5)
    env = env_for(tmp_path, shop, receiver)
    summary = reconcile(env, "--since", "1h", "--rate", "100")
    assert summary["finished"] is True
    assert summary["results"] == {"fulfilled": 50}, summary["errors"]
    assert sum(fault_hits(shop).values()) >= 5
    assert_exactly_once(receiver, expected_keys(shop, sessions))
    clear_faults(shop)
    again = reconcile(env, "--since", "1h", "--rate", "100")
    assert again["results"] == {"already": 50}
    assert len(receiver.received) == 50


def test_reconcile_through_bursts_of_each_fault(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    sessions = buy(shop, 10, items=1)
    # Bursts longer than stripe-python's two retries (and stripe_api's two
    # after a 429), on the list and on the retrieves.
    inject(shop, "error", path="/v1/checkout/sessions", count=4)
    inject(shop, "drop", path=SESSIONS, count=4)
    inject(shop, "rate_limit", path=SESSIONS, count=4, retry_after=0.1)
    inject(shop, "error", status=502, path=SESSIONS, count=4)
    env = env_for(tmp_path, shop, receiver)
    summary = reconcile(env, "--since", "1h", "--rate", "100")
    assert summary["results"] == {"fulfilled": 10}, summary["errors"]
    assert shop.get("/_emulator/faults")["data"] == [], "every burst was spent"
    assert_exactly_once(receiver, expected_keys(shop, sessions))


def test_landing_visit_refused_by_a_rate_limit_is_fulfilled_by_reconcile(
    tmp_path: Path, service_factory: ServiceFactory, receiver: Receiver
) -> None:
    """Every webhook lost and the one visit refused: the session is still fulfilled."""
    service = service_factory(webhooks=False)
    shop = service.shop
    (session_id,) = buy(shop, 1)
    inject(shop, "rate_limit", path=SESSIONS, method="GET", retry_after=0.2)
    assert service.landing(session_id).status_code == 503
    clear_faults(shop)
    env = {
        **env_for(tmp_path, shop, receiver),
        "FULFILL_DATABASE_URL": service.settings.database_url,
        "FULFILL_CATALOG": str(service.settings.catalog_path),
    }
    assert reconcile(env, "--since", "1h")["results"] == {"fulfilled": 1}
    assert_exactly_once(receiver, expected_keys(shop, [session_id]))


# -- SQLite contention ----------------------------------------------------------------------


@pytest.mark.slow
def test_three_processes_on_one_sqlite_file_under_load_and_faults(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    shop.post("/_emulator/webhooks", {"mode": "off"})
    env = service_env(tmp_path, shop, receiver, FULFILL_INLINE_BUDGET="2")
    sessions = buy(shop, 100, items=1) + buy(shop, 50, items=3)
    payloads = completed_events(shop, sessions)
    inject(shop, "error", path=SESSIONS, method="GET", share=0.2)
    inject(shop, "rate_limit", path=SESSIONS, method="GET", share=0.1, retry_after=0.2)
    inject(shop, "drop", path=SESSIONS, method="GET", share=0.05)
    inject(shop, "latency", path=SESSIONS, method="GET", latency_ms=30, share=0.5)
    with instances(env, tmp_path, 3) as servers:
        load = Load([s.url for s in servers], seed=3)
        # Two deliveries of each event and a landing visit, to random processes at once.
        load.run(payloads, webhooks_each=2, threads=32)
        wait_fulfilled(env["FULFILL_DATABASE_URL"], sessions, timeout=60)
        logs = "".join(s.output() for s in servers)
    assert load.statuses["webhook 200"] == 2 * len(sessions)
    assert sum(fault_hits(shop).values()) >= 20
    assert_exactly_once(receiver, expected_keys(shop, sessions))
    assert "database is locked" not in logs
    assert "Traceback" not in logs
    # The landing visits saw an order or, while Stripe failed, a page saying to refresh.
    assert set(load.statuses) <= {"webhook 200", "landing 200", "landing 503"}


# -- the database failing under a read ---------------------------------------------------


async def end_what_waits(admin: asyncpg.Connection, *requests: asyncio.Task[Any]) -> int:
    """End each backend that waits for a lock ``admin`` holds, until ``requests`` are answered."""
    deadline = time.monotonic() + 60
    ended = 0
    while not all(request.done() for request in requests):
        assert time.monotonic() < deadline, "the requests were not answered"
        # pg_stat_activity is a snapshot taken once per transaction, and
        # admin's lasts as long as its lock: ask for a fresh one each time.
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        for row in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ):
            ended += await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", row["pid"])
        await asyncio.sleep(0.05)
    return ended


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_backend_ended_under_a_read_is_503_for_the_landing_page_and_a_duplicate_webhook(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> None:
    """The pool's ping passed, then the connection died: the page and Stripe are told 503.

    The reads of a landing page and of a redelivered event go to the driver
    directly (``Query``); what the driver raises there must reach the
    handlers as the SQLAlchemy error they answer 503 for, not as a 500.
    Two instances share the database, as behind a load balancer: the event
    was recorded by the first, and its redelivery reaches the second, which
    must ask the database whether it is a duplicate.
    """
    quiet = {"FULFILL_WORKER_INTERVAL": 3600, "FULFILL_MAIL": "false"}
    first = service_factory(webhooks=False, **quiet)
    second = service_factory(webhooks=False, **quiet)
    session_id = first.paid_session()
    (payload,) = completed_events(first.shop, [session_id]).values()

    def signed() -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Stripe-Signature": sign(payload, WEBHOOK_SECRET, int(time.time())),
        }

    assert first.client.post("/webhooks/stripe", content=payload, headers=signed()).json() == {
        "received": True
    }
    wait_status(first, session_id, "fulfilled")

    async def while_a_backend_dies() -> tuple[httpx.Response, httpx.Response]:
        admin = await asyncpg.connect(database_url, timeout=10)
        try:
            async with admin.transaction():
                await admin.execute(
                    "LOCK TABLE fulfillments, webhook_events IN ACCESS EXCLUSIVE MODE"
                )
                async with httpx.AsyncClient(base_url=second.url, timeout=120) as http:
                    page = asyncio.create_task(
                        http.get(
                            "/checkout/complete",
                            params={"session_id": session_id},
                            headers={"Accept": "text/html"},
                        )
                    )
                    redelivery = asyncio.create_task(
                        http.post("/webhooks/stripe", content=payload, headers=signed())
                    )
                    assert await end_what_waits(admin, page, redelivery) >= 2
                    return await page, await redelivery
        finally:
            await admin.close()

    page, redelivery = asyncio.run(while_a_backend_dies())
    assert page.status_code == 503, page.text
    assert page.headers["retry-after"] == "10"
    assert "try again in a moment" in page.text
    assert "Try again" in page.text
    assert redelivery.status_code == 503, redelivery.text
    assert redelivery.json()["error"]["code"] == "unavailable"
    # The pool let go of the dead connections: the next requests are answered.
    assert second.landing(session_id).json()["status"] == "fulfilled"
    again = second.client.post("/webhooks/stripe", content=payload, headers=signed())
    assert again.json() == {"received": True, "duplicate": True}
    assert len(receiver.received) == 1
