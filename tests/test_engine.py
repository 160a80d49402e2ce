"""fulfill_checkout end to end: a real service, the emulator, a webhook-action receiver."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import HOOK_METADATA, ServiceFactory, ServiceServer
from tests.servers import Receiver


def wait_status(service: ServiceServer, session_id: str, status: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    record: Any = None
    while time.monotonic() < deadline:
        response = service.landing(session_id)
        record = response.json()
        if record.get("status") == status:
            return record
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
