"""Webhook delivery: signatures, retries, duplicates, concurrency, order, hold/flush/off."""

from __future__ import annotations

import random
import time
from itertools import pairwise

import httpx
import pytest
import stripe

from fulfill.emulator.server import build
from tests.conftest import EmulatorServer
from tests.emulator_support import (
    WEBHOOK_SECRET,
    other_emulator,
    payload,
    poll,
    register,
    sync_stripe,
    verify,
    wait_idle,
)
from tests.servers import Receiver


def paid_session(server: EmulatorServer) -> str:
    sid: str = server.session().id
    server.complete(sid)
    return sid


def deliveries(server: EmulatorServer, event_id: str | None = None) -> list[dict[str, object]]:
    path = "/_emulator/deliveries" + (f"?event={event_id}" if event_id else "")
    attempts: list[dict[str, object]] = server.get(path)["attempts"]
    return attempts


def test_every_delivery_verifies_with_stripe_python(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    endpoint = register(emulator_server, receiver)
    assert endpoint["secret"] == WEBHOOK_SECRET
    assert endpoint["id"].startswith("we_")
    price = emulator_server.price()
    paid, delayed, failed, expired = (emulator_server.session([(price, 1)]).id for _ in range(4))
    emulator_server.complete(paid)
    emulator_server.complete(delayed, "delayed")
    emulator_server.post(f"/_emulator/sessions/{delayed}/settle", {"result": "succeeded"})
    emulator_server.complete(failed, "delayed")
    emulator_server.post(f"/_emulator/sessions/{failed}/settle", {"result": "failed"})
    emulator_server.stripe().v1.checkout.sessions.expire(expired)

    received = receiver.wait_for(6)
    wait_idle(emulator_server)

    events = [verify(r) for r in received]
    assert len(receiver.received) == 6
    assert sorted((e.type, e.data.object["id"]) for e in events) == sorted(
        [
            ("checkout.session.completed", paid),
            ("checkout.session.completed", delayed),
            ("checkout.session.async_payment_succeeded", delayed),
            ("checkout.session.completed", failed),
            ("checkout.session.async_payment_failed", failed),
            ("checkout.session.expired", expired),
        ]
    )
    for r in received:
        assert r.headers["content-type"].startswith("application/json")
        assert r.headers["user-agent"].startswith("Stripe/")
    # Each event delivered is the one the API lists.
    listed = {e.id for e in emulator_server.stripe().v1.events.list({"limit": 100}).data}
    assert {e.id for e in events} == listed
    assert all(e.pending_webhooks == 1 for e in events)


def test_a_wrong_secret_or_a_changed_body_does_not_verify(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    paid_session(emulator_server)
    (delivery,) = receiver.wait_for(1)
    header = delivery.headers["stripe-signature"]
    assert header.startswith("t=")
    assert abs(int(header.split(",")[0][2:]) - time.time()) < 60

    with pytest.raises(stripe.SignatureVerificationError):
        verify(delivery, "whsec_someone_else")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            delivery.body.decode().replace('"paid"', '"unpaid"'), header, WEBHOOK_SECRET
        )
    assert verify(delivery).type == "checkout.session.completed"


def test_each_endpoint_signs_with_its_own_secret_and_gets_its_events(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver, secret="whsec_first")
    register(
        emulator_server,
        receiver,
        secret="whsec_second",
        enabled_events=["checkout.session.expired"],
    )
    paid_session(emulator_server)
    emulator_server.stripe().v1.checkout.sessions.expire(emulator_server.session().id)

    received = receiver.wait_for(3)
    wait_idle(emulator_server)

    assert len(receiver.received) == 3
    first = [verify(r, "whsec_first").type for r in received if b'"expired"' not in r.body]
    assert first == ["checkout.session.completed"]
    expired = [r for r in received if payload(r)["type"] == "checkout.session.expired"]
    assert len(expired) == 2
    secrets_that_verify = set()
    for r in expired:
        for secret in ("whsec_first", "whsec_second"):
            try:
                verify(r, secret)
            except stripe.SignatureVerificationError:
                continue
            secrets_that_verify.add(secret)
    assert secrets_that_verify == {"whsec_first", "whsec_second"}


def test_a_failing_receiver_gets_retries(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    receiver.status = 500
    register(emulator_server, receiver)
    paid_session(emulator_server)

    # One attempt, then the fixture's retry schedule: 0.2, 0.4, 0.8 s.
    received = receiver.wait_for(4)
    wait_idle(emulator_server)

    assert len(receiver.received) == 4
    assert len({payload(r)["id"] for r in received}) == 1
    gaps = [b.at - a.at for a, b in pairwise(received)]
    for gap, delay in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert gap >= delay * 0.9
    log = deliveries(emulator_server)
    assert [(a["attempt"], a["kind"], a["status"]) for a in log] == [
        (1, "live", 500),
        (2, "retry", 500),
        (3, "retry", 500),
        (4, "retry", 500),
    ]
    assert all(a["type"] == "checkout.session.completed" for a in log)


def test_retries_stop_once_the_receiver_answers_2xx(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    receiver.status = 503
    register(emulator_server, receiver)
    sid = paid_session(emulator_server)
    receiver.wait_for(2)
    receiver.status = 200

    wait_idle(emulator_server)

    assert len(receiver.received) == 3
    event_id = payload(receiver.received[0])["id"]
    assert [a["status"] for a in deliveries(emulator_server, event_id)] == [503, 503, 200]
    assert payload(receiver.received[2])["data"]["object"]["id"] == sid


def test_an_unreachable_endpoint_is_logged_and_retried(emulator_server: EmulatorServer) -> None:
    emulator_server.post(
        "/_emulator/webhook_endpoints", {"url": "http://127.0.0.1:9/hook"}
    )  # the discard port: connection refused
    emulator_server.post("/_emulator/webhooks", {"retry_delays": [0.05]})
    paid_session(emulator_server)

    wait_idle(emulator_server)

    log = deliveries(emulator_server)
    assert [(a["attempt"], a["status"]) for a in log] == [(1, None), (2, None)]
    assert all(a["error"] for a in log)


def test_duplicates_on_demand(emulator_server: EmulatorServer, receiver: Receiver) -> None:
    register(emulator_server, receiver)
    paid_session(emulator_server)
    (first,) = receiver.wait_for(1)
    event_id = payload(first)["id"]

    answer = emulator_server.post(f"/_emulator/events/{event_id}/deliver", {"copies": 4})

    assert [a["status"] for a in answer["attempts"]] == [200] * 4
    assert all(a["kind"] == "redeliver" for a in answer["attempts"])
    received = receiver.wait_for(5)
    assert len(received) == 5
    assert {verify(r).id for r in received} == {event_id}
    assert {r.body for r in received} == {first.body}


def test_concurrent_duplicates_arrive_together(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    paid_session(emulator_server)
    (first,) = receiver.wait_for(1)
    event_id = payload(first)["id"]
    # Long enough that a busy machine cannot make one-after-another look like
    # all at once: sent in turn, the copies would arrive 3 s apart and take 15 s.
    receiver.delay = 3.0

    started = time.monotonic()
    emulator_server.post(f"/_emulator/events/{event_id}/deliver", {"copies": 5, "concurrent": True})
    took = time.monotonic() - started

    copies = receiver.received[1:]
    assert len(copies) == 5
    assert {verify(r).id for r in copies} == {event_id}
    # All five were in the receiver at once: the last came before the first was answered.
    arrivals = [r.at for r in copies]
    assert max(arrivals) - min(arrivals) < receiver.delay
    assert took < 2 * receiver.delay


def test_sequential_duplicates_arrive_one_after_another(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    paid_session(emulator_server)
    (first,) = receiver.wait_for(1)
    event_id = payload(first)["id"]
    receiver.delay = 0.1

    emulator_server.post(
        f"/_emulator/events/{event_id}/deliver", {"copies": 3, "concurrent": False}
    )

    arrivals = [r.at for r in receiver.received[1:]]
    assert len(arrivals) == 3
    assert all(b - a >= 0.09 for a, b in pairwise(arrivals))


def test_every_live_event_in_several_copies(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    settings = emulator_server.post("/_emulator/webhooks", {"copies": 3})
    assert settings["copies"] == 3
    paid_session(emulator_server)

    received = receiver.wait_for(3)
    wait_idle(emulator_server)

    assert len(receiver.received) == 3
    assert len({verify(r).id for r in received}) == 1


def test_redelivering_to_one_endpoint(emulator_server: EmulatorServer, receiver: Receiver) -> None:
    register(emulator_server, receiver, secret="whsec_first")
    second = register(emulator_server, receiver, secret="whsec_second")
    paid_session(emulator_server)
    first_two = receiver.wait_for(2)
    event_id = payload(first_two[0])["id"]

    answer = emulator_server.post(
        f"/_emulator/events/{event_id}/deliver", {"copies": 2, "endpoint": second["id"]}
    )

    assert [a["endpoint_id"] for a in answer["attempts"]] == [second["id"]] * 2
    assert len(receiver.received) == 4
    assert [verify(r, "whsec_second").id for r in receiver.received[2:]] == [event_id] * 2


def test_redelivering_an_unknown_event_or_to_an_unknown_endpoint_is_404(
    emulator_server: EmulatorServer,
) -> None:
    response = emulator_server.control.post("/_emulator/events/evt_nope/deliver", json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"
    paid_session(emulator_server)
    event_id = emulator_server.stripe().v1.events.list().data[0].id
    response = emulator_server.control.post(
        f"/_emulator/events/{event_id}/deliver", json={"endpoint": "we_nope"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "endpoint"


def test_hold_then_flush_in_reverse_order(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    assert emulator_server.post("/_emulator/webhooks", {"mode": "hold"})["mode"] == "hold"
    sid = emulator_server.session().id
    emulator_server.complete(sid, "delayed")
    emulator_server.post(f"/_emulator/sessions/{sid}/settle", {"result": "succeeded"})

    held = emulator_server.get("/_emulator/webhooks")["held"]
    assert len(held) == 2
    assert deliveries(emulator_server) == []
    assert receiver.received == []

    flushed = emulator_server.post("/_emulator/webhooks/flush", {"order": "reverse"})

    assert [a["type"] for a in flushed["attempts"]] == [
        "checkout.session.async_payment_succeeded",
        "checkout.session.completed",
    ]
    received = receiver.wait_for(2)
    assert [verify(r).type for r in received] == [
        "checkout.session.async_payment_succeeded",
        "checkout.session.completed",
    ]
    assert [payload(r)["id"] for r in received] == list(reversed(held))
    assert emulator_server.get("/_emulator/webhooks")["held"] == []
    # Still holding: a new event waits for the next flush.
    emulator_server.stripe().v1.checkout.sessions.expire(emulator_server.session().id)
    assert len(emulator_server.get("/_emulator/webhooks")["held"]) == 1
    emulator_server.post("/_emulator/webhooks", {"mode": "live"})
    emulator_server.post("/_emulator/webhooks/flush", {"order": "fifo"})
    assert payload(receiver.wait_for(3)[2])["type"] == "checkout.session.expired"


def test_a_held_event_that_fails_is_retried_after_the_flush(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    emulator_server.post("/_emulator/webhooks", {"mode": "hold", "retry_delays": [0.05, 0.05]})
    paid_session(emulator_server)
    receiver.status = 500

    flushed = emulator_server.post("/_emulator/webhooks/flush", {})
    wait_idle(emulator_server)

    assert [a["status"] for a in flushed["attempts"]] == [500]
    assert [(a["attempt"], a["kind"]) for a in deliveries(emulator_server)] == [
        (1, "flush"),
        (2, "retry"),
        (3, "retry"),
    ]


def test_shuffled_flush_with_a_seed_is_repeatable(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    emulator_server.post("/_emulator/webhooks", {"mode": "hold"})
    price = emulator_server.price()
    for _ in range(6):
        paid_session_id = emulator_server.session([(price, 1)]).id
        emulator_server.complete(paid_session_id)
    held = emulator_server.get("/_emulator/webhooks")["held"]

    flushed = emulator_server.post(
        "/_emulator/webhooks/flush", {"order": "shuffle", "seed": 7, "concurrent": True}
    )

    order = [a["event_id"] for a in flushed["attempts"]]
    assert sorted(order) == sorted(held)
    expected = list(held)
    random.Random(7).shuffle(expected)
    assert order == expected
    assert len(receiver.wait_for(6)) == 6


def test_mode_off_sends_nothing(emulator_server: EmulatorServer, receiver: Receiver) -> None:
    register(emulator_server, receiver)
    emulator_server.post("/_emulator/webhooks", {"mode": "off"})
    silent = paid_session(emulator_server)
    emulator_server.post("/_emulator/webhooks", {"mode": "live"})
    heard = paid_session(emulator_server)

    receiver.wait_for(1)
    wait_idle(emulator_server)

    # Deliveries keep their order, so had the first been sent it would have come first.
    assert [payload(r)["data"]["object"]["id"] for r in receiver.received] == [heard]
    assert emulator_server.get("/_emulator/webhooks")["held"] == []
    completed = emulator_server.stripe().v1.events.list({"type": "checkout.session.completed"})
    assert {e.data.object["id"] for e in completed.data} == {silent, heard}
    assert len(deliveries(emulator_server)) == 1


def test_webhook_settings_are_validated(emulator_server: EmulatorServer) -> None:
    control = emulator_server.control
    for body in (
        {"mode": "sometimes"},
        {"copies": 0},
        {"retry_delays": "fast"},
        {"retry_delays": [-1]},
    ):
        response = control.post("/_emulator/webhooks", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == next(iter(body))
    assert control.post("/_emulator/webhooks/flush", json={"order": "random"}).status_code == 400
    assert control.post("/_emulator/webhook_endpoints", json={"url": "ftp://x"}).status_code == 400
    bad_secret = control.post(
        "/_emulator/webhook_endpoints", json={"url": "http://x.test", "secret": "s3cret"}
    )
    assert bad_secret.status_code == 400
    assert control.post("/_emulator/webhooks", content=b"{not json").status_code == 400


def test_endpoints_registered_through_the_api(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    client = emulator_server.stripe()
    endpoint = client.v1.webhook_endpoints.create(
        {"url": receiver.url, "enabled_events": ["checkout.session.completed"]}
    )
    assert endpoint.secret is not None
    assert endpoint.secret.startswith("whsec_")
    assert [e.id for e in client.v1.webhook_endpoints.list().data] == [endpoint.id]
    listed = emulator_server.get("/_emulator/webhook_endpoints")["data"]
    assert [e["id"] for e in listed] == [endpoint.id]

    paid_session(emulator_server)
    (delivery,) = receiver.wait_for(1)
    assert verify(delivery, endpoint.secret).type == "checkout.session.completed"

    client.v1.webhook_endpoints.delete(endpoint.id)
    paid_session(emulator_server)
    wait_idle(emulator_server)
    assert len(receiver.received) == 1


def test_reset_stops_the_retries_of_forgotten_events(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    receiver.status = 500
    register(emulator_server, receiver)
    emulator_server.post("/_emulator/webhooks", {"retry_delays": [0.3, 0.3]})
    paid_session(emulator_server)
    receiver.wait_for(1)
    before = emulator_server.emulator.deliveries

    emulator_server.post("/_emulator/reset")

    poll(lambda: True if not before._tasks else None)
    # Had the retries gone on, they would have reached the receiver by now.
    assert len(receiver.received) == 1
    assert emulator_server.get("/_emulator/webhook_endpoints")["data"] == []


def test_endpoints_given_at_start_survive_a_reset(receiver: Receiver) -> None:
    emulator = build(webhooks=(f"{receiver.url}=whsec_from_the_command_line",))
    with other_emulator(emulator) as url, httpx.Client(base_url=url) as control:
        (endpoint,) = control.get("/_emulator/webhook_endpoints").json()["data"]
        assert control.post("/_emulator/reset").status_code == 200
        assert control.get("/_emulator/webhook_endpoints").json()["data"] == [endpoint]
        with sync_stripe(url) as client:
            session = client.v1.checkout.sessions.create(
                {
                    "mode": "payment",
                    "success_url": "http://shop.test/ok",
                    "line_items": [
                        {
                            "price_data": {
                                "currency": "eur",
                                "unit_amount": 500,
                                "product_data": {"name": "Sticker"},
                            },
                            "quantity": 1,
                        }
                    ],
                }
            )
        control.post(f"/_emulator/sessions/{session.id}/complete", json={})

        (delivery,) = receiver.wait_for(1)

    event = verify(delivery, "whsec_from_the_command_line")
    assert event.data.object["id"] == session.id
