"""Fault injection seen through stripe-python, and the request log."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import stripe

from tests.conftest import EmulatorServer
from tests.emulator_support import async_stripe, raw_api

SESSIONS = "/v1/checkout/sessions/*"

EXCEPTIONS: dict[str, type[stripe.StripeError]] = {
    "rate_limit": stripe.RateLimitError,
    "error": stripe.APIError,
    "drop": stripe.APIConnectionError,
}


def fault(server: EmulatorServer, kind: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = server.post("/_emulator/faults", {"kind": kind, **spec})
    return body


@pytest.mark.parametrize("kind", list(EXCEPTIONS))
def test_faults_raise_the_right_exception(emulator_server: EmulatorServer, kind: str) -> None:
    sid = emulator_server.session().id
    client = emulator_server.stripe()
    added = fault(emulator_server, kind, count=2, path=SESSIONS)
    assert added["id"].startswith("flt_")

    for _ in range(2):
        with pytest.raises(EXCEPTIONS[kind]) as caught:
            client.v1.checkout.sessions.retrieve(sid)
    # The fault was for two calls; the third goes through.
    assert client.v1.checkout.sessions.retrieve(sid).id == sid
    assert emulator_server.get("/_emulator/faults")["data"] == []
    if kind == "rate_limit":
        assert caught.value.http_status == 429
        assert caught.value.headers is not None
        assert caught.value.headers["retry-after"] == "1"
    elif kind == "error":
        assert caught.value.http_status == 500
    log = emulator_server.get(f"/_emulator/requests?path=/v1/checkout/sessions/{sid}")["requests"]
    assert [entry["fault"] == added["id"] for entry in log] == [True, True, False]
    assert [entry["status"] for entry in log] == [
        {"rate_limit": 429, "error": 500, "drop": 0}[kind]
    ] * 2 + [200]


@pytest.mark.parametrize("kind", list(EXCEPTIONS))
async def test_faults_raise_the_right_exception_async(
    emulator_server: EmulatorServer, kind: str
) -> None:
    sid = emulator_server.session().id
    fault(emulator_server, kind, count=1, path=SESSIONS)
    async with async_stripe(emulator_server) as client:
        with pytest.raises(EXCEPTIONS[kind]):
            await client.v1.checkout.sessions.retrieve_async(sid, {"expand": ["line_items"]})
        session = await client.v1.checkout.sessions.retrieve_async(sid, {"expand": ["line_items"]})
    assert session.id == sid


def test_a_fault_applies_only_to_its_path_and_method(emulator_server: EmulatorServer) -> None:
    sid = emulator_server.session().id
    client = emulator_server.stripe()
    fault(emulator_server, "error", path="/v1/checkout/sessions/*/line_items")
    fault(emulator_server, "rate_limit", path="/v1/events", method="post")

    assert client.v1.checkout.sessions.retrieve(sid).id == sid
    assert client.v1.events.list().data == []
    with pytest.raises(stripe.APIError):
        client.v1.checkout.sessions.line_items.list(sid)
    # No count: it stays until removed.
    with pytest.raises(stripe.APIError):
        client.v1.checkout.sessions.line_items.list(sid)
    assert len(emulator_server.get("/_emulator/faults")["data"]) == 2

    cleared = emulator_server.control.delete("/_emulator/faults")
    assert cleared.json() == {"data": []}
    assert len(client.v1.checkout.sessions.line_items.list(sid).data) == 1


def test_stripe_python_recovers_from_a_single_500_with_retries(
    emulator_server: EmulatorServer,
) -> None:
    sid = emulator_server.session().id
    fault(emulator_server, "error", count=1, path=SESSIONS)

    session = emulator_server.stripe(retries=2).v1.checkout.sessions.retrieve(sid)

    assert session.id == sid
    log = emulator_server.get(f"/_emulator/requests?path=/v1/checkout/sessions/{sid}")
    assert [r["status"] for r in log["requests"]] == [500, 200]


async def test_stripe_python_recovers_from_a_single_500_with_retries_async(
    emulator_server: EmulatorServer,
) -> None:
    sid = emulator_server.session().id
    fault(emulator_server, "error", count=1, status=503, path=SESSIONS)

    async with async_stripe(emulator_server, retries=1) as client:
        session = await client.v1.checkout.sessions.retrieve_async(sid)

    assert session.id == sid
    assert emulator_server.requests_to(f"/v1/checkout/sessions/{sid}") == 2


def test_latency_delays_the_matching_calls(emulator_server: EmulatorServer) -> None:
    sid = emulator_server.session().id
    client = emulator_server.stripe()
    fault(emulator_server, "latency", latency_ms=400, count=1, path=SESSIONS)

    started = time.monotonic()
    client.v1.checkout.sessions.retrieve(sid)
    slow = time.monotonic() - started

    assert slow >= 0.4
    # Used up by that one call, so no later call waits. (Timing the next call
    # against 0.4 s would fail whenever the machine is busy.)
    assert emulator_server.get("/_emulator/faults")["data"] == []
    client.v1.checkout.sessions.retrieve(sid)


async def test_latency_with_an_error_delays_then_fails(emulator_server: EmulatorServer) -> None:
    sid = emulator_server.session().id
    fault(emulator_server, "latency", latency_ms=200, count=1, path=SESSIONS)
    fault(emulator_server, "rate_limit", count=1, path=SESSIONS, retry_after=3)

    async with async_stripe(emulator_server) as client:
        started = time.monotonic()
        with pytest.raises(stripe.RateLimitError) as caught:
            await client.v1.checkout.sessions.retrieve_async(sid)
        took = time.monotonic() - started

    assert took >= 0.2
    assert caught.value.headers is not None
    assert caught.value.headers["retry-after"] == "3"


def test_a_share_of_calls_fails(emulator_server: EmulatorServer) -> None:
    emulator_server.emulator.faults.rng = random.Random(1)
    fault(emulator_server, "error", share=0.5, path="/v1/events")

    with raw_api(emulator_server) as http:
        statuses = [http.get("/v1/events").status_code for _ in range(60)]

    assert set(statuses) == {200, 500}
    assert 15 <= statuses.count(500) <= 45


def test_fault_specs_are_validated(emulator_server: EmulatorServer) -> None:
    for body, param in (
        ({"kind": "explode"}, "kind"),
        ({"kind": "error", "path": "/_emulator/*"}, "path"),
        ({"kind": "error", "count": 0}, "count"),
        ({"kind": "error", "share": 1.5}, "share"),
        ({"kind": "error", "status": 404}, "status"),
        ({"kind": "latency", "latency_ms": "slow"}, "latency_ms"),
    ):
        response = emulator_server.control.post("/_emulator/faults", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param
    assert emulator_server.get("/_emulator/faults")["data"] == []


# -- the request log -----------------------------------------------------------------


def test_request_log_counts_per_endpoint(emulator_server: EmulatorServer) -> None:
    sid = emulator_server.session().id  # creates a product, a price, a session
    other = emulator_server.session().id
    client = emulator_server.stripe()
    for _ in range(3):
        client.v1.checkout.sessions.retrieve(sid, {"expand": ["line_items"]})
    client.v1.checkout.sessions.retrieve(other)
    client.v1.checkout.sessions.line_items.list(sid)
    client.v1.events.list()
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.retrieve("cs_test_missing")

    log = emulator_server.get("/_emulator/requests")

    assert log["counts"] == {
        "POST /v1/products": 2,
        "POST /v1/prices": 2,
        "POST /v1/checkout/sessions": 2,
        "GET /v1/checkout/sessions/{id}": 5,
        "GET /v1/checkout/sessions/{id}/line_items": 1,
        "GET /v1/events": 1,
    }
    assert log["total"] == 13
    assert len(log["requests"]) == 13
    only = emulator_server.get(f"/_emulator/requests?path=/v1/checkout/sessions/{sid}")
    assert len(only["requests"]) == 3
    assert {(r["method"], r["endpoint"], r["status"]) for r in only["requests"]} == {
        ("GET", "GET /v1/checkout/sessions/{id}", 200)
    }
    assert emulator_server.requests_to("/v1/checkout/sessions/cs_test_missing") == 1
    # Control calls and the hosted page are not API calls.
    emulator_server.get("/_emulator/faults")
    assert emulator_server.get("/_emulator/requests")["total"] == 13


def test_request_log_since_and_clear(emulator_server: EmulatorServer) -> None:
    client = emulator_server.stripe()
    client.v1.events.list()
    last = emulator_server.get("/_emulator/requests")["requests"][-1]["seq"]
    client.v1.checkout.sessions.list()

    newer = emulator_server.get(f"/_emulator/requests?since={last}")["requests"]
    assert [r["endpoint"] for r in newer] == ["GET /v1/checkout/sessions"]

    assert emulator_server.control.delete("/_emulator/requests").json() == {"cleared": True}
    assert emulator_server.get("/_emulator/requests") == {"total": 0, "counts": {}, "requests": []}


def test_bad_query_numbers_are_400(emulator_server: EmulatorServer) -> None:
    for path in ("/_emulator/requests?since=yesterday", "/_emulator/webhooks/idle?timeout=-1"):
        response = emulator_server.control.get(path)
        assert response.status_code == 400, path
        assert response.json()["error"]["code"] == "parameter_invalid_number"


def test_unauthenticated_and_faulted_calls_are_logged(emulator_server: EmulatorServer) -> None:
    with pytest.raises(stripe.AuthenticationError):
        emulator_server.stripe(key="sk_live_wrong").v1.events.list()
    fault(emulator_server, "drop", count=1, path="/v1/events")
    with pytest.raises(stripe.APIConnectionError):
        emulator_server.stripe().v1.events.list()

    requests = emulator_server.get("/_emulator/requests?path=/v1/events")["requests"]
    assert [r["status"] for r in requests] == [401, 0]
    assert requests[1]["fault"] is not None


def test_reset_forgets_everything(emulator_server: EmulatorServer) -> None:
    sid = emulator_server.session().id
    emulator_server.post("/_emulator/webhook_endpoints", {"url": "http://127.0.0.1:9/hook"})
    fault(emulator_server, "latency", latency_ms=1)

    assert emulator_server.post("/_emulator/reset") == {"reset": True}

    assert emulator_server.get("/_emulator/faults")["data"] == []
    assert emulator_server.get("/_emulator/webhook_endpoints")["data"] == []
    with pytest.raises(stripe.InvalidRequestError):
        emulator_server.stripe().v1.checkout.sessions.retrieve(sid)
    assert emulator_server.get("/_emulator/requests")["total"] == 1
    # Still works after a reset.
    assert emulator_server.session().status == "open"
