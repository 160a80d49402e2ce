"""The webhook endpoint refuses everything SPEC §7 refuses, and changes nothing when it does."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from fulfill.webhooks import (
    SignatureError,
    WebhookError,
    leading_event_id,
    parse_event,
    verify,
)
from tests.conftest import WEBHOOK_SECRET, ServiceFactory, ServiceServer, table_rows

SECRETS = ("whsec_old", "whsec_new")
NOW = 1_800_000_000


def signature(payload: bytes, secret: str, timestamp: int, scheme: str = "v1") -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},{scheme}={digest.hexdigest()}"


# -- verify: a pure function ------------------------------------------------------------


@pytest.mark.parametrize("secret", SECRETS)
def test_any_configured_secret_signs(secret: str) -> None:
    verify(b"{}", signature(b"{}", secret, NOW), SECRETS, NOW, 300)


def test_the_official_library_agrees_with_verify() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event"}).encode()
    header = signature(payload, "whsec_new", int(time.time()))
    verify(payload, header, SECRETS, time.time(), 300)
    event = stripe.Webhook.construct_event(payload, header, "whsec_new")
    assert event.id == "evt_1"


def test_one_valid_among_several_v1() -> None:
    good = signature(b"{}", "whsec_new", NOW).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},{good},v0={'1' * 64}"
    verify(b"{}", header, SECRETS, NOW, 300)


@pytest.mark.parametrize(
    ("header", "now"),
    [
        pytest.param(None, NOW, id="missing"),
        pytest.param("", NOW, id="empty"),
        pytest.param(f"t={NOW}", NOW, id="no-v1"),
        pytest.param(signature(b"{}", "whsec_new", NOW, "v0"), NOW, id="only-v0"),
        pytest.param(signature(b"{}", "whsec_other", NOW), NOW, id="wrong-secret"),
        pytest.param(signature(b"{ }", "whsec_new", NOW), NOW, id="body-changed"),
        pytest.param(signature(b"{}", "whsec_new", NOW - 301), NOW, id="stale"),
        pytest.param(signature(b"{}", "whsec_new", NOW + 301), NOW, id="future"),
        pytest.param("t=" + "9" * 10_000 + ",v1=00", NOW, id="10kb"),
        pytest.param(signature(b"{}", "whsec_new", NOW) + ",v1=é", NOW, id="non-ascii"),
        pytest.param("v1=abc,t=x", NOW, id="bad-timestamp"),
        pytest.param(f"t={NOW},t={NOW},v1=00", NOW, id="two-timestamps"),
    ],
)
def test_refused_signatures(header: str | None, now: int) -> None:
    with pytest.raises(SignatureError):
        verify(b"{}", header, SECRETS, now, 300)


def test_tolerance_edges_are_inside() -> None:
    verify(b"{}", signature(b"{}", "whsec_new", NOW - 300), SECRETS, NOW, 300)
    verify(b"{}", signature(b"{}", "whsec_new", NOW + 300), SECRETS, NOW, 300)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"object": "charge"}',
        b'{"object": "event", "id": "evt_1", "type": "x"}',
        b'{"object": "event", "id": "../x", "type": "x", "livemode": false}',
        json.dumps(
            {
                "object": "event",
                "id": "evt_1",
                "type": "checkout.session.completed",
                "livemode": False,
                "data": {"object": {"object": "charge", "id": "ch_1"}},
            }
        ).encode(),
        json.dumps(
            {
                "object": "event",
                "id": "evt_1",
                "type": "checkout.session.completed",
                "livemode": False,
                "data": {"object": {"object": "checkout.session", "id": "cs_test_../../v1"}},
            }
        ).encode(),
    ],
)
def test_non_events_are_refused(body: bytes) -> None:
    with pytest.raises(WebhookError):
        parse_event(body)


# -- the endpoint -------------------------------------------------------------------------


def event(session_id: str, event_type: str = "checkout.session.completed", **extra: Any) -> bytes:
    body = {
        "id": "evt_" + session_id[-20:],
        "object": "event",
        "type": event_type,
        "livemode": False,
        "created": int(time.time()),
        "data": {"object": {"id": session_id, "object": "checkout.session"}},
        **extra,
    }
    return json.dumps(body).encode()


def snapshot(service: ServiceServer) -> dict[str, list[Any]]:
    return {
        table: table_rows(service.settings.database_url, table)
        for table in ("fulfillments", "fulfillment_items", "fulfillment_triggers", "webhook_events")
    }


def test_forged_and_malformed_deliveries_change_nothing(service_factory: ServiceFactory) -> None:
    service = service_factory(webhooks=False)
    session_id = service.paid_session()
    payload = event(session_id)
    tolerance = service.settings.webhook_tolerance

    def signed(body: bytes, secret: str = WEBHOOK_SECRET, shift: int = 0) -> Callable[[], str]:
        # Signed as it is sent, ``shift`` seconds off: a loaded machine may
        # take seconds between two sends, and a signature made earlier would
        # drift back inside the tolerance.
        return lambda: signature(body, secret, int(time.time()) + shift)

    # Outside the tolerance by a minute, either way: no delay brings it back in.
    outside = tolerance + 60
    before = snapshot(service)
    api_before = service.shop.get("/_emulator/requests")["total"]
    cases: list[tuple[bytes, Callable[[], str | None], int]] = [
        (payload, lambda: None, 400),
        (payload, signed(payload, "whsec_wrong"), 400),
        (payload, signed(payload, shift=-outside), 400),
        (payload, signed(payload, shift=outside), 400),
        (payload + b" ", signed(payload), 400),
        (b"", signed(b""), 400),
        (b"{bad", signed(b"{bad"), 400),
        (b"x" * (1024 * 1024 + 1), signed(b"x"), 413),
    ]
    live = event(session_id.replace("cs_test_", "cs_live_"), livemode=True)
    cases.append((live, signed(live), 400))
    for body, header, status in cases:
        answer = service.send(body, header())
        assert answer.status_code == status, (header(), answer.text)
        assert set(answer.json()["error"]) == {"code", "message"}
    assert snapshot(service) == before
    assert service.shop.get("/_emulator/requests")["total"] == api_before


def test_valid_event_is_recorded_once_and_redelivery_is_acknowledged(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(webhooks=False)
    session_id = service.paid_session()
    payload = event(session_id)
    header = signature(payload, WEBHOOK_SECRET, int(time.time()))
    first = service.send(payload, header)
    assert first.status_code == 200
    assert first.json() == {"received": True}
    again = service.send(payload, header)
    assert again.json() == {"received": True, "duplicate": True}
    rows = snapshot(service)["webhook_events"]
    assert len(rows) == 1
    assert rows[0][5] == "processed"


def test_other_event_types_are_acknowledged_and_ignored(service_factory: ServiceFactory) -> None:
    service = service_factory(webhooks=False)
    payload = json.dumps(
        {
            "id": "evt_charge1",
            "object": "event",
            "type": "charge.succeeded",
            "livemode": False,
            "data": {"object": {"object": "charge", "id": "ch_1"}},
        }
    ).encode()
    answer = service.send(payload, signature(payload, WEBHOOK_SECRET, int(time.time())))
    assert answer.status_code == 200
    assert snapshot(service)["fulfillments"] == []
    assert snapshot(service)["webhook_events"][0][5] == "ignored"


def test_rolled_secrets_both_sign(service_factory: ServiceFactory) -> None:
    service = service_factory(
        STRIPE_WEBHOOK_SECRET=f"whsec_previous0,{WEBHOOK_SECRET}", webhooks=False
    )
    for index, secret in enumerate(("whsec_previous0", WEBHOOK_SECRET)):
        payload = json.dumps(
            {
                "id": f"evt_roll{index}",
                "object": "event",
                "type": "customer.created",
                "livemode": False,
                "data": {"object": {}},
            }
        ).encode()
        answer = service.send(payload, signature(payload, secret, int(time.time())))
        assert answer.status_code == 200


class CountingInbox:
    """Records an event the first time it is offered; counts the offers."""

    calls = 0

    async def record_event(self, *args: Any) -> bool:
        self.calls += 1
        return self.calls == 1


def endpoint_with_counting_inbox() -> tuple[Any, CountingInbox]:
    """A webhook endpoint over a ``CountingInbox``, nothing processed inline."""
    from fulfill.metrics import Metrics
    from fulfill.webhooks import WebhookEndpoint

    class Engine:
        metrics = Metrics()

    inbox = CountingInbox()
    endpoint = WebhookEndpoint(
        Engine(),  # type: ignore[arg-type]
        inbox,  # type: ignore[arg-type]
        [WEBHOOK_SECRET],
        tolerance=300,
        inline_budget=0,
        livemode=False,
    )
    return endpoint, inbox


def test_duplicates_are_answered_from_memory_once_the_event_is_recorded() -> None:
    """Redelivery storms cost no database round trip after the first recording."""
    import asyncio

    endpoint, inbox = endpoint_with_counting_inbox()
    # A type the service records and ignores: nothing is processed.
    parsed = parse_event(event("cs_test_memory1", "payment_intent.created"))

    async def deliver(times: int) -> list[dict[str, Any]]:
        return [json.loads(bytes((await endpoint._accept(parsed)).body)) for _ in range(times)]

    answers = asyncio.run(deliver(10))
    assert answers[0] == {"received": True}
    assert answers[1:] == [{"received": True, "duplicate": True}] * 9
    assert inbox.calls == 1


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b'{"id": "evt_1A2b_3", "object": "event"}', "evt_1A2b_3"),
        (b'\n { \r\n  "id"\t:  "evt_x", "id": "evt_y"}', "evt_x"),
        (b'{"object": "event", "id": "evt_1"}', None),  # not first: parsed whole
        (b'{"data": {"id": "evt_1"}, "id": "evt_2"}', None),
        (b'{"id": "ch_1"}', None),
        (b'{"id": "evt_\\u0031"}', None),
        (b'{"id": "evt_1\\"}', None),
        (b'\xef\xbb\xbf{"id": "evt_1"}', None),
        (b'{"id": ["evt_1"]}', None),
        (b"", None),
    ],
)
def test_the_leading_event_id_is_read_only_from_the_first_key(
    body: bytes, found: str | None
) -> None:
    assert leading_event_id(body) == found


def test_a_known_redelivery_is_answered_after_its_signature_and_nothing_else() -> None:
    """A recorded event's redelivery skips the parse, never the signature check."""
    import asyncio

    from starlette.requests import Request

    endpoint, inbox = endpoint_with_counting_inbox()
    payload = event("cs_test_fastpath1", "payment_intent.created")
    event_id = json.loads(payload)["id"]

    async def deliver(body: bytes, header: str | None) -> tuple[int, Any]:
        headers = [(b"content-type", b"application/json")]
        if header is not None:
            headers.append((b"stripe-signature", header.encode()))
        scope = {"type": "http", "method": "POST", "path": "/webhooks/stripe", "headers": headers}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        answer = await endpoint(Request(scope, receive))
        return answer.status_code, json.loads(bytes(answer.body))

    def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
        return signature(body, secret, int(time.time()))

    def counted(outcome: str) -> float:
        value = endpoint.metrics.registry.get_sample_value(
            "fulfill_webhook_events_total", {"type": "payment_intent.created", "outcome": outcome}
        )
        return value or 0.0

    async def scenario() -> None:
        assert await deliver(payload, signed(payload)) == (200, {"received": True})
        duplicate = (200, {"received": True, "duplicate": True})
        assert await deliver(payload, signed(payload)) == duplicate
        assert counted("duplicate") == 1
        # The same bytes without a valid signature are refused, known ID or not.
        for header in (None, signed(payload, "whsec_wrong"), signed(payload + b" ")):
            status, body = await deliver(payload, header)
            assert status == 400
            assert body["error"]["code"] == "invalid_signature"
        assert counted("duplicate") == 1
        # Keys in another order: parsed whole, and still a duplicate.
        reordered = json.dumps(dict(reversed(list(json.loads(payload).items())))).encode()
        assert leading_event_id(reordered) is None
        assert await deliver(reordered, signed(reordered)) == duplicate
        # An unknown ID at the start gets the whole parse and its checks.
        broken = b'{"id": "evt_new1", "object": "event"}'
        status, body = await deliver(broken, signed(broken))
        assert (status, body["error"]["code"]) == (400, "invalid_webhook")
        assert counted("duplicate") == 2
        assert inbox.calls == 1
        assert event_id in endpoint._recorded

    asyncio.run(scenario())


async def test_a_handler_retries_while_stripe_fails_and_closing_ends_its_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retries after RETRY_PAUSES (or a longer Retry-After); close() does not wait them out."""
    import asyncio

    from fulfill import events, webhooks
    from fulfill.metrics import Metrics
    from fulfill.stripe_api import StripeUnavailable

    calls: list[float] = []

    async def unavailable(*args: Any, **kwargs: Any) -> bool:
        calls.append(time.monotonic())
        raise StripeUnavailable(
            "Stripe is unavailable", retry_after=0.6 if len(calls) == 1 else None
        )

    monkeypatch.setattr(webhooks, "process_event", unavailable)

    class Engine:
        metrics = Metrics()

    endpoint = webhooks.WebhookEndpoint(
        Engine(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        [WEBHOOK_SECRET],
        tolerance=300,
        inline_budget=0,
        livemode=False,
    )
    event = events.Event("evt_closing1", "checkout.session.completed", False, "cs_test_closing1")
    task = asyncio.get_running_loop().create_task(endpoint._process(event))
    endpoint.tasks.add(task)
    # Tries at 0 s, after 0.6 s (Retry-After, longer than 0.5 s), 1 s later, then pauses 2 s.
    await asyncio.sleep(2.4)
    started = time.monotonic()
    await endpoint.close(timeout=5.0)
    assert time.monotonic() - started < 0.5, "a pause of 2 s was not waited out"
    assert task.done()
    assert not task.cancelled()
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.6
