"""GET /metrics: what an operator alerts on counts what really happened."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    HOOK_METADATA,
    TEST_KEY,
    WEBHOOK_SECRET,
    EmulatorServer,
    ServiceFactory,
    ServiceServer,
    hook_catalog,
)
from tests.processes import start_instance
from tests.servers import Receiver
from tests.test_engine import wait_status

TOKEN = "metrics-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    answer = httpx.get(f"{url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """A labelled sample's value; a label set never counted is 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    """An unlabelled counter's value; it must be there."""
    return samples[(name, frozenset())]


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def signed(payload: bytes, secret: str = WEBHOOK_SECRET) -> str:
    timestamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def completed_event(shop: EmulatorServer, session_id: str) -> str:
    """The ID of the session's checkout.session.completed event."""
    events = shop.stripe().v1.events.list({"type": "checkout.session.completed"})
    (event_id,) = [e.id for e in events.data if e.data.object["id"] == session_id]
    return str(event_id)


def wait_api(service: ServiceServer, session_id: str, status: str) -> dict[str, Any]:
    """Wait through the admin API: a landing visit would itself retry a due failure."""
    for _ in range(300):
        answer = service.client.get(f"/api/fulfillments/{session_id}", headers=AUTH)
        if answer.status_code == 200 and answer.json()["status"] == status:
            record: dict[str, Any] = answer.json()
            return record
        time.sleep(0.05)
    raise AssertionError(f"{session_id} did not reach {status}")


def idle(service: ServiceServer) -> None:
    answer = service.shop.control.get("/_emulator/webhooks/idle", params={"timeout": 10})
    assert answer.json() == {"idle": True}


def test_metrics_count_webhooks_fulfillments_failures_and_stripe_calls(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory(FULFILL_MAX_ATTEMPTS=1)
    shop = service.shop
    completed = "checkout.session.completed"

    # Accepted, then delivered twice more: duplicates.
    fulfilled = service.paid_session()
    wait_status(service, fulfilled, "fulfilled")
    event_id = completed_event(shop, fulfilled)
    shop.post(f"/_emulator/events/{event_id}/deliver", {"copies": 2, "concurrent": False})
    # Refused: unsigned, and signed with another secret.
    forged = json.dumps({"id": "evt_forged", "object": "event"}).encode()
    assert service.send(forged, None).status_code == 400
    assert service.send(forged, signed(forged, "whsec_someone_else")).status_code == 400
    # Signed but not an event: invalid. Signed, of a type we do not handle: ignored.
    assert service.send(b"[]", signed(b"[]")).status_code == 400
    other = json.dumps(
        {
            "id": "evt_OtherType0001",
            "object": "event",
            "type": "payment_intent.succeeded",
            "livemode": False,
            "data": {"object": {"object": "payment_intent", "id": "pi_1"}},
        }
    ).encode()
    assert service.send(other, signed(other)).status_code == 200
    # A failure (the receiver answers 500) and a delayed payment.
    receiver.failures = 1000
    failed = service.paid_session()
    wait_status(service, failed, "failed")
    delayed = shop.session([(shop.price(product_metadata=HOOK_METADATA), 1)])
    shop.complete(delayed.id, "delayed")
    wait_status(service, delayed.id, "awaiting_payment")
    # A session Stripe does not know: one retrieve, answered 404.
    assert service.landing("cs_test_NoSuchSession0").status_code == 404
    idle(service)

    metrics = scrape(service.url)
    events = "fulfill_webhook_events_total"
    assert labelled(metrics, events) == {
        frozenset({("type", completed), ("outcome", "accepted")}): 3,
        frozenset({("type", completed), ("outcome", "duplicate")}): 2,
        frozenset({("type", "unknown"), ("outcome", "refused")}): 2,
        frozenset({("type", "unknown"), ("outcome", "invalid")}): 1,
        frozenset({("type", "payment_intent.succeeded"), ("outcome", "ignored")}): 1,
    }
    assert labelled(metrics, "fulfill_fulfillments_total") == {
        frozenset({("outcome", "fulfilled")}): 1,
        frozenset({("outcome", "failed")}): 1,
        frozenset({("outcome", "awaiting_payment")}): 1,
    }
    durations = "fulfill_action_duration_seconds_count"
    assert value(metrics, durations, action="webhook", result="done") == 1
    assert value(metrics, durations, action="webhook", result="failed") == 1
    assert total(metrics, "fulfill_retries_total") == 0

    # Stripe API calls by endpoint and status: exactly what the emulator saw.
    log = shop.get("/_emulator/requests")["requests"]
    # (The test itself POSTs products, prices and sessions, and lists events.)
    seen = Counter(
        (r["endpoint"], str(r["status"]))
        for r in log
        if r["method"] == "GET" and r["endpoint"] != "GET /v1/events"
    )
    calls = {
        (dict(labels)["endpoint"], dict(labels)["status"]): v
        for labels, v in labelled(metrics, "fulfill_stripe_api_calls_total").items()
    }
    assert calls == {key: float(n) for key, n in seen.items()}
    retrieve = "GET /v1/checkout/sessions/{id}"
    assert calls[(retrieve, "200")] >= 3
    assert calls[(retrieve, "404")] == 1


def test_a_failure_retried_by_the_worker_is_counted_once_each(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    receiver.failures = 1
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    session_id = service.paid_session()
    assert wait_api(service, session_id, "fulfilled")["attempts"] == 2
    metrics = scrape(service.url)
    assert value(metrics, "fulfill_fulfillments_total", outcome="failed") == 1
    assert value(metrics, "fulfill_fulfillments_total", outcome="fulfilled") == 1
    assert total(metrics, "fulfill_retries_total") == 1
    durations = "fulfill_action_duration_seconds_count"
    assert value(metrics, durations, action="webhook", result="failed") == 1
    assert value(metrics, durations, action="webhook", result="done") == 1
    assert total(metrics, "fulfill_lease_takeovers_total") == 0


@pytest.mark.slow
def test_serve_with_two_workers_reports_the_whole_host_on_every_scrape(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = emulator_server
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(hook_catalog(receiver.url))
    instance = start_instance(
        {
            "STRIPE_SECRET_KEY": TEST_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": shop.url,
            "FULFILL_DATABASE_URL": f"sqlite:///{tmp_path / 'fulfill.db'}",
            "FULFILL_CATALOG": str(catalog),
            "FULFILL_RECONCILE_INTERVAL": "0",
        },
        tmp_path / "serve.log",
        workers=2,
    )
    try:
        shop.post(
            "/_emulator/webhook_endpoints",
            {"url": f"{instance.url}/webhooks/stripe", "secret": WEBHOOK_SECRET},
        )
        shop.post("/_emulator/webhooks", {"mode": "hold"})
        price = shop.price(product_metadata=HOOK_METADATA)
        sessions = [shop.session([(price, 1)]).id for _ in range(12)]
        for session_id in sessions:
            shop.complete(session_id)
        # All at once, so that both workers take some.
        shop.post("/_emulator/webhooks/flush", {"concurrent": True})
        receiver.wait_for(12)

        def scrape_fresh(_: int) -> Samples:
            return scrape(instance.url)

        with ThreadPoolExecutor(max_workers=8) as pool:
            scrapes = list(pool.map(scrape_fresh, range(16)))
    finally:
        instance.stop()
    for metrics in scrapes:
        accepted = value(
            metrics,
            "fulfill_webhook_events_total",
            type="checkout.session.completed",
            outcome="accepted",
        )
        assert accepted == 12
        assert value(metrics, "fulfill_fulfillments_total", outcome="fulfilled") == 12
