"""fulfill_checkout end to end: a real service, the emulator, a webhook-action receiver."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from fulfill.config import load_settings
from fulfill.service import Service
from fulfill.store.schema import fulfillments
from tests.conftest import (
    HOOK_METADATA,
    TEST_KEY,
    EmulatorServer,
    ServiceFactory,
    ServiceServer,
    hook_catalog,
    table_rows,
)
from tests.servers import Receiver


def wait_status(service: ServiceServer, session_id: str, status: str, timeout: float = 15) -> Any:
    """Visit the landing page (as the customer, which fulfills) until it shows ``status``;
    then the whole stored record, internals included (the page's JSON has none)."""
    deadline = time.monotonic() + timeout
    record: Any = None
    while time.monotonic() < deadline:
        response = service.landing(session_id)
        record = response.json()
        if record.get("status") == status:
            return service.record(session_id)
        time.sleep(0.05)
    raise AssertionError(f"{session_id} did not reach {status}: {record}")


def keys(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["idempotency-key"] for r in receiver.received)


def retrieves(service: ServiceServer, session_id: str) -> int:
    return service.shop.requests_to(f"/v1/checkout/sessions/{session_id}")


def test_paid_session_is_fulfilled_once_by_webhook(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    session_id = service.paid_session()
    assert service.shop.get("/_emulator/webhooks/idle")["idle"]
    record = wait_status(service, session_id, "fulfilled")
    assert record["triggers"][0].startswith("webhook:evt_")
    assert record["payment_status"] == "paid"
    assert [i["status"] for i in record["items"]] == ["done"]
    assert record["items"][0]["action"] == "webhook"
    assert any(t.startswith("webhook:evt_") for t in record["triggers"])
    assert list(keys(receiver).values()) == [1]
    assert retrieves(service, session_id) == 1


def test_duplicate_and_concurrent_triggers_fulfill_each_item_once(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    # Slow receiver: the duplicates arrive while the first fulfillment runs.
    receiver.delay = 0.3
    service = service_factory(webhooks=False)
    price_a = service.shop.price("A", product_metadata=HOOK_METADATA)
    price_b = service.shop.price("B", product_metadata=HOOK_METADATA)
    session = service.shop.session([(price_a, 1), (price_b, 2)])
    service.shop.post(
        "/_emulator/webhook_endpoints",
        {"url": f"{service.url}/webhooks/stripe", "secret": service.settings.webhook_secrets[0]},
    )
    service.shop.post("/_emulator/webhooks", {"mode": "hold"})
    service.shop.complete(session.id)
    event_id = service.shop.get("/_emulator/webhooks")["held"][0]

    def webhook(_: int) -> int:
        answer = service.shop.control.post(
            f"/_emulator/events/{event_id}/deliver", json={"copies": 1}, timeout=60
        )
        return int(answer.json()["attempts"][0]["status"])

    def visit(_: int) -> httpx.Response:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            return client.get("/checkout/complete", params={"session_id": session.id})

    with ThreadPoolExecutor(max_workers=40) as pool:
        hooks = pool.map(webhook, range(20))
        visits = list(pool.map(visit, range(20)))
    assert set(hooks) == {200}
    for page in visits:
        assert page.status_code == 200
        assert "your order is ready" in page.text
        assert page.headers["cache-control"] == "no-store"
    assert sorted(keys(receiver).values()) == [1, 1]
    assert retrieves(service, session.id) == 1


def test_delayed_payment_waits_then_fulfills(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    price = service.shop.price(product_metadata=HOOK_METADATA)
    session = service.shop.session([(price, 1)])
    service.shop.complete(session.id, "delayed")
    assert service.shop.get("/_emulator/webhooks/idle")["idle"]
    record = wait_status(service, session.id, "awaiting_payment")
    assert record["payment_status"] == "unpaid"
    page = service.landing(session.id, as_json=False)
    assert "Your payment is processing" in page.text
    assert 'data-testid="checking"' in page.text, "the page keeps checking"
    assert 'http-equiv="refresh"' not in page.text
    assert receiver.received == []
    service.shop.post(f"/_emulator/sessions/{session.id}/settle", {"result": "succeeded"})
    record = wait_status(service, session.id, "fulfilled")
    assert len(receiver.received) == 1


def test_failed_delayed_payment_fulfills_nothing(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    price = service.shop.price(product_metadata=HOOK_METADATA)
    session = service.shop.session([(price, 1)])
    service.shop.complete(session.id, "delayed")
    service.shop.post(f"/_emulator/sessions/{session.id}/settle", {"result": "failed"})
    assert service.shop.get("/_emulator/webhooks/idle")["idle"]
    record = wait_status(service, session.id, "payment_failed")
    assert [i["status"] for i in record["items"]] == ["pending"]
    assert "did not go through" in service.landing(session.id, as_json=False).text
    assert receiver.received == []


def test_out_of_order_failure_before_completion_stays_payment_failed(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    service.shop.post("/_emulator/webhooks", {"mode": "hold"})
    price = service.shop.price(product_metadata=HOOK_METADATA)
    session = service.shop.session([(price, 1)])
    service.shop.complete(session.id, "delayed")
    service.shop.post(f"/_emulator/sessions/{session.id}/settle", {"result": "failed"})
    attempts = service.shop.post("/_emulator/webhooks/flush", {"order": "reverse"})["attempts"]
    assert [a["type"] for a in attempts] == [
        "checkout.session.async_payment_failed",
        "checkout.session.completed",
    ]
    assert wait_status(service, session.id, "payment_failed")["status"] == "payment_failed"
    assert receiver.received == []


def test_twenty_five_line_items_are_all_fulfilled(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    prices = [
        (service.shop.price(f"Item {n}", product_metadata=HOOK_METADATA), n % 3 + 1)
        for n in range(25)
    ]
    session_id = service.paid_session(prices)
    record = wait_status(service, session_id, "fulfilled")
    assert len(record["items"]) == 25
    assert {i["status"] for i in record["items"]} == {"done"}
    assert len(keys(receiver)) == 25
    assert set(keys(receiver).values()) == {1}
    # one retrieve (10 items expanded) and one more page for the other 15
    assert retrieves(service, session_id) == 1
    assert service.shop.requests_to(f"/v1/checkout/sessions/{session_id}/line_items") == 1


def test_an_action_failing_twice_is_retried_with_backoff(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    receiver.failures = 2
    service = service_factory()
    session_id = service.paid_session()
    record = wait_status(service, session_id, "fulfilled")
    assert record["attempts"] == 3
    assert record["last_error"] is None
    assert list(keys(receiver).values()) == [3]  # the same idempotency key each time
    times = [r.at for r in receiver.received]
    # backoff: at least 0.2 s after the first failure, 0.4 s after the second (lower
    # bounds only: a loaded machine may start a retry late, never early)
    assert times[1] - times[0] >= 0.19
    assert times[2] - times[1] >= 0.39


def test_a_failure_is_recorded_with_the_error_and_next_attempt(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    receiver.failures = 1000
    service = service_factory(FULFILL_RETRY_BASE=30)
    session_id = service.paid_session()
    record = wait_status(service, session_id, "failed")
    assert "500" in record["last_error"]
    assert record["next_attempt_at"] is not None
    assert record["items"][0]["status"] == "failed"
    assert "we are on it" in service.landing(session_id, as_json=False).text
    # a landing visit during the backoff does not retry (nor call the API)
    before = len(receiver.received)
    service.landing(session_id)
    assert len(receiver.received) == before


def test_unmatched_item_fails_the_session_naming_price_and_product(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    price = service.shop.price("Not in the catalog")
    session_id = service.paid_session([(price, 1)])
    record = wait_status(service, session_id, "failed")
    assert price in record["last_error"]
    assert "prod_" in record["last_error"]
    assert receiver.received == []


def test_slow_action_beyond_inline_budget_is_acknowledged_then_finished(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    # The action outlasts the budget by seconds (and stays well within the
    # catalog's 10 s timeout), so that the acknowledgement cannot be mistaken
    # for the action's end on a busy machine.
    receiver.delay = 5.0
    service = service_factory(FULFILL_INLINE_BUDGET=0.3, webhooks=False)
    service.shop.post(
        "/_emulator/webhook_endpoints",
        {"url": f"{service.url}/webhooks/stripe", "secret": service.settings.webhook_secrets[0]},
    )
    service.shop.post("/_emulator/webhooks", {"mode": "hold"})
    session_id = service.paid_session()
    attempt = service.shop.post("/_emulator/webhooks/flush", {})["attempts"][0]
    assert attempt["status"] == 200
    assert attempt["duration_ms"] < 1000 * receiver.delay, "answered before the action ended"
    wait_status(service, session_id, "fulfilled", timeout=60)
    assert len(receiver.received) == 1


def test_fulfilled_session_costs_no_api_call(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    session_id = service.paid_session()
    wait_status(service, session_id, "fulfilled")
    before = service.shop.get("/_emulator/requests")["total"]
    for _ in range(5):
        assert service.landing(session_id).json()["status"] == "fulfilled"
    assert service.shop.get("/_emulator/requests")["total"] == before


def test_an_instance_stalled_past_its_lease_between_items_stops_before_the_next(
    emulator_server: EmulatorServer, receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    """A paused process comes back after another worker took its session over.

    It must not perform the next item (the new owner does): before an item,
    a lease not confirmed for half its length is renewed, conditionally on
    still owning it, and the item is skipped when that fails.
    """
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url))
    settings = load_settings(
        env_file=None,
        STRIPE_SECRET_KEY=TEST_KEY,
        STRIPE_API_BASE=emulator_server.url,
        FULFILL_DATABASE_URL=database_url,
        FULFILL_CATALOG=str(catalog),
        FULFILL_LEASE_SECONDS=60,
        FULFILL_MAIL="false",
    )
    first = emulator_server.price("First", product_metadata=HOOK_METADATA)
    second = emulator_server.price("Second", product_metadata=HOOK_METADATA)
    session = emulator_server.session([(first, 1), (second, 1)])
    emulator_server.complete(session.id, "paid")

    async def scenario() -> dict[str, Any]:
        service = await Service.start(settings)
        try:
            engine = service.engine
            now = [1000.0]
            engine.lease.monotonic = lambda: now[0]
            recorded = service.store.item_done

            async def then_stall(*args: Any, **options: Any) -> bool:
                done = await recorded(*args, **options)
                # The process is paused for two leases; meanwhile another
                # instance found the lease expired and took the session over.
                now[0] += 120
                async with service.store.engine.begin() as connection:
                    await connection.execute(
                        update(fulfillments)
                        .where(fulfillments.c.session_id == session.id)
                        .values(lease_owner="another-instance")
                    )
                return done

            service.store.item_done = then_stall  # type: ignore[method-assign]
            record = await engine.fulfill_checkout(session.id, wait=10)
            return record.as_json()
        finally:
            await service.close()

    record = asyncio.run(scenario())
    # Only the first item was performed here; the second is the new owner's.
    assert [r.headers["idempotency-key"] for r in receiver.received] == [
        f"{session.id}:{record['items'][0]['line_item_id']}"
    ]
    assert [i["status"] for i in record["items"]] == ["done", "pending"]
    assert record["status"] == "fulfilling"


def test_visits_of_a_fulfilled_order_are_answered_from_memory(
    emulator_server: EmulatorServer, receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    """Fulfilled is final: a customer refreshing the page costs no database read."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url))
    settings = load_settings(
        env_file=None,
        STRIPE_SECRET_KEY=TEST_KEY,
        STRIPE_API_BASE=emulator_server.url,
        FULFILL_DATABASE_URL=database_url,
        FULFILL_CATALOG=str(catalog),
        FULFILL_MAIL="false",
    )
    session = emulator_server.session([(emulator_server.price(product_metadata=HOOK_METADATA), 1)])
    emulator_server.complete(session.id, "paid")

    async def scenario() -> tuple[int, list[str]]:
        service = await Service.start(settings)
        try:
            engine = service.engine
            first = await engine.fulfill_checkout(session.id, trigger="webhook:evt_1", wait=10)
            assert first.status == "fulfilled"
            reads = 0
            read = service.store.get

            async def counted(session_id: str) -> Any:
                nonlocal reads
                reads += 1
                return await read(session_id)

            service.store.get = counted  # type: ignore[method-assign]
            for _ in range(20):
                record = await engine.fulfill_checkout(session.id, trigger="landing")
                assert record.status == "fulfilled"
            return reads, list(record.triggers)
        finally:
            await service.close()

    reads, triggers = asyncio.run(scenario())
    # The first visit reads the record and notes the landing trigger; the rest: nothing.
    assert reads <= 1
    assert triggers == ["webhook:evt_1", "landing"]
    assert retrieves_of(emulator_server, session.id) == 1


def retrieves_of(shop: EmulatorServer, session_id: str) -> int:
    return shop.requests_to(f"/v1/checkout/sessions/{session_id}")


# -- Checkout modes -------------------------------------------------------------------


def setup_session(shop: EmulatorServer) -> str:
    """A ``mode=setup`` session (saving a card: no items, no charge), completed."""
    session = shop.stripe().v1.checkout.sessions.create(
        {"mode": "setup", "currency": "eur", "success_url": "http://shop.test/saved"}
    )
    shop.complete(session.id)
    return str(session.id)


@pytest.mark.parametrize("trigger", ["webhook", "landing"])
def test_a_setup_session_is_not_applicable_performs_nothing_and_is_not_emailed(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str, trigger: str
) -> None:
    service = service_factory(webhooks=trigger == "webhook")
    session_id = setup_session(service.shop)
    if trigger == "webhook":
        assert service.shop.get("/_emulator/webhooks/idle")["idle"]
        (row,) = [r for r in table_rows(database_url, "fulfillments") if r[0] == session_id]
        assert row[1] == "not_applicable"
    assert service.landing(session_id).json()["status"] == "not_applicable"
    record = service.record(session_id)
    assert record["status"] == "not_applicable"
    assert record["mode"] == "setup"
    assert record["payment_status"] == "no_payment_required"
    assert record["items"] == []
    assert record["triggers"][0].startswith(trigger)
    page = service.landing(session_id, as_json=False)
    assert page.status_code == 200
    assert "Your payment details are saved" in page.text
    assert "nothing was charged" in page.text
    assert "your order is ready" not in page.text
    assert "A confirmation goes to" not in page.text
    assert 'http-equiv="refresh"' not in page.text
    # Nothing performed, nothing queued to send, nothing written to the outbox.
    assert table_rows(database_url, "fulfillment_items") == []
    assert table_rows(database_url, "emails") == []
    assert receiver.received == []
    outbox = service.settings.mail_outbox
    assert not outbox.exists() or list(outbox.iterdir()) == []


def test_a_subscription_session_is_fulfilled_like_a_payment(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> None:
    service = service_factory()
    monthly = service.shop.price(
        "Club membership", 900, product_metadata=HOOK_METADATA, recurring={"interval": "month"}
    )
    session = service.shop.session([(monthly, 1)], mode="subscription")
    service.shop.complete(session.id)
    record = wait_status(service, session.id, "fulfilled")
    assert record["mode"] == "subscription"
    assert [i["status"] for i in record["items"]] == ["done"]
    assert list(keys(receiver)) == [f"{session.id}:{record['items'][0]['line_item_id']}"]
    assert "your order is ready" in service.landing(session.id, as_json=False).text
    # Its email is queued with the status it reports.
    assert [row for row in table_rows(database_url, "emails") if session.id in row]
