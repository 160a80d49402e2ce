"""The emulator's /v1 API through the official stripe library.

Pagination, payment outcomes and their events, errors, and the shape of objects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import stripe

from fulfill.emulator import Emulator
from tests.conftest import EmulatorServer
from tests.emulator_support import (
    async_stripe,
    other_emulator,
    payload,
    poll,
    raw_api,
    register,
    sync_stripe,
    verify,
    wait_idle,
)
from tests.servers import Receiver

FIXTURES = Path(__file__).parent / "fixtures"
EXPAND = ["line_items", "line_items.data.price.product"]


def big_session(server: EmulatorServer, count: int = 25) -> tuple[str, list[str]]:
    """A session with ``count`` line items (one new product each); its ID and the item names."""
    names = [f"Item {n:02d}" for n in range(count)]
    session = server.stripe().v1.checkout.sessions.create(
        {
            "mode": "payment",
            "success_url": "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
            "line_items": [
                {
                    "price_data": {
                        "currency": "eur",
                        "unit_amount": 100 + n,
                        "product_data": {"name": name},
                    },
                    "quantity": n + 1,
                }
                for n, name in enumerate(names)
            ],
        }
    )
    return session.id, names


# -- line items and pagination ------------------------------------------------------


def test_expanded_line_items_carry_the_first_ten_and_has_more(
    emulator_server: EmulatorServer,
) -> None:
    sid, names = big_session(emulator_server)
    client = emulator_server.stripe()

    session = client.v1.checkout.sessions.retrieve(sid, {"expand": EXPAND})

    items = session.line_items
    assert items is not None
    assert len(items.data) == 10
    assert items.has_more is True
    assert [item.description for item in items.data] == names[:10]
    assert [item.quantity for item in items.data] == list(range(1, 11))
    product = items.data[0].price and items.data[0].price.product
    assert isinstance(product, stripe.Product)
    assert product.name == "Item 00"
    # Without the product expansion the product is an ID, as in Stripe.
    plain = client.v1.checkout.sessions.retrieve(sid, {"expand": ["line_items"]}).line_items
    assert plain is not None
    assert plain.data[0].price is not None
    assert isinstance(plain.data[0].price.product, str)
    assert plain.data[0].price.product == product.id
    # Without expand, no line_items at all.
    assert "line_items" not in client.v1.checkout.sessions.retrieve(sid).to_dict()


def test_expanded_line_items_page_on_through_their_url(emulator_server: EmulatorServer) -> None:
    """What fulfill does: expand, then follow ``has_more`` with the list's own URL."""
    sid, names = big_session(emulator_server)
    client = emulator_server.stripe()
    session = client.v1.checkout.sessions.retrieve(sid, {"expand": ["line_items"]})
    assert session.line_items is not None

    described = [item.description for item in session.line_items.auto_paging_iter()]

    assert described == names
    assert emulator_server.requests_to(f"/v1/checkout/sessions/{sid}/line_items") == 2


def test_line_items_auto_paging_gives_all_in_order(emulator_server: EmulatorServer) -> None:
    sid, names = big_session(emulator_server)
    client = emulator_server.stripe()

    pages = client.v1.checkout.sessions.line_items.list(sid, {"limit": 7})
    items = list(pages.auto_paging_iter())

    assert [item.description for item in items] == names
    assert [item.quantity for item in items] == list(range(1, 26))
    assert len({item.id for item in items}) == 25
    # 7 + 7 + 7 + 4: four requests, the last one with has_more false.
    assert emulator_server.requests_to(f"/v1/checkout/sessions/{sid}/line_items") == 4


async def test_line_items_auto_paging_async(emulator_server: EmulatorServer) -> None:
    sid, names = big_session(emulator_server)
    async with async_stripe(emulator_server) as client:
        session = await client.v1.checkout.sessions.retrieve_async(sid, {"expand": EXPAND})
        assert session.line_items is not None
        assert len(session.line_items.data) == 10
        assert session.line_items.has_more is True

        first = await client.v1.checkout.sessions.line_items.list_async(sid, {"limit": 10})
        described = [item.description async for item in first.auto_paging_iter()]

    assert described == names


def test_line_items_cursors(emulator_server: EmulatorServer) -> None:
    sid, _ = big_session(emulator_server)
    client = emulator_server.stripe()
    ids = [i.id for i in client.v1.checkout.sessions.line_items.list(sid, {"limit": 100}).data]
    assert len(ids) == 25

    after = client.v1.checkout.sessions.line_items.list(
        sid, {"starting_after": ids[9], "limit": 10}
    )
    assert [i.id for i in after.data] == ids[10:20]
    assert after.has_more is True

    last = client.v1.checkout.sessions.line_items.list(sid, {"starting_after": ids[19]})
    assert [i.id for i in last.data] == ids[20:]
    assert last.has_more is False

    before = client.v1.checkout.sessions.line_items.list(
        sid, {"ending_before": ids[20], "limit": 5}
    )
    assert [i.id for i in before.data] == ids[15:20]
    assert before.has_more is True

    first = client.v1.checkout.sessions.line_items.list(sid, {"ending_before": ids[3]})
    assert [i.id for i in first.data] == ids[:3]
    assert first.has_more is False

    # Paging backwards from the end gives every earlier item, nearest first.
    backwards = client.v1.checkout.sessions.line_items.list(
        sid, {"ending_before": ids[24], "limit": 6}
    )
    assert [i.id for i in backwards.auto_paging_iter()] == ids[23::-1]

    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.checkout.sessions.line_items.list(sid, {"starting_after": "li_nope"})
    assert unknown.value.http_status == 404
    assert unknown.value.code == "resource_missing"
    assert unknown.value.param == "starting_after"


def test_list_sessions_by_status_and_created_with_pagination(
    emulator_server: EmulatorServer,
) -> None:
    now = [1_780_000_000]
    emulator_server.emulator.state.clock = lambda: now[0]
    price = emulator_server.price()
    created: dict[str, int] = {}
    completed: list[str] = []
    for n in range(8):
        now[0] = 1_780_000_000 + 100 * n
        session = emulator_server.session([(price, 1)])
        created[session.id] = now[0]
        if n % 2 == 0:
            emulator_server.complete(session.id)
            completed.append(session.id)
    emulator_server.stripe().v1.checkout.sessions.expire(
        next(s for s in created if s not in completed)
    )
    client = emulator_server.stripe()

    # Newest first, as Stripe lists.
    everything = list(client.v1.checkout.sessions.list({"limit": 3}).auto_paging_iter())
    assert [s.id for s in everything] == list(reversed(created))

    query: Any = {
        "status": "complete",
        "created": {"gte": 1_780_000_100, "lte": 1_780_000_600},
        "limit": 2,
    }
    page = client.v1.checkout.sessions.list(query)
    assert len(page.data) == 2
    assert page.has_more is True
    found = [s.id for s in page.auto_paging_iter()]
    # complete: n = 0, 2, 4, 6; created within [100, 600]: n = 2, 4, 6.
    assert found == [completed[3], completed[2], completed[1]]
    assert all(s.status == "complete" for s in page.data)

    # open: n = 3, 5, 7 (n = 1 expired); created before 600: n = 3, 5.
    opened = client.v1.checkout.sessions.list({"status": "open", "created": {"lt": 1_780_000_600}})
    order = list(created)
    assert [s.id for s in opened.data] == [order[5], order[3]]
    expired = client.v1.checkout.sessions.list({"status": "expired"})
    assert len(expired.data) == 1
    assert expired.data[0].status == "expired"

    exact: Any = {"created": 1_780_000_300}
    assert [s.id for s in client.v1.checkout.sessions.list(exact).data] == [order[3]]


async def test_list_sessions_async(emulator_server: EmulatorServer) -> None:
    price = emulator_server.price()
    ids = [emulator_server.session([(price, 1)]).id for _ in range(5)]
    emulator_server.complete(ids[1])
    emulator_server.complete(ids[3])
    async with async_stripe(emulator_server) as client:
        first = await client.v1.checkout.sessions.list_async({"status": "open", "limit": 2})
        found = [s.id async for s in first.auto_paging_iter()]
        complete = await client.v1.checkout.sessions.list_async({"status": "complete"})

    assert sorted(found) == sorted([ids[0], ids[2], ids[4]])
    assert sorted(s.id for s in complete.data) == sorted([ids[1], ids[3]])


# -- payment outcomes -----------------------------------------------------------------

OUTCOMES: dict[str, tuple[list[str], str, str, list[tuple[str, str]]]] = {
    # scenario: (steps, final status, final payment_status, events oldest first with
    #            the payment_status each event's snapshot carries)
    "paid": (["paid"], "complete", "paid", [("checkout.session.completed", "paid")]),
    "delayed_succeeded": (
        ["delayed", "succeeded"],
        "complete",
        "paid",
        [
            ("checkout.session.completed", "unpaid"),
            ("checkout.session.async_payment_succeeded", "paid"),
        ],
    ),
    "delayed_failed": (
        ["delayed", "failed"],
        "complete",
        "unpaid",
        [
            ("checkout.session.completed", "unpaid"),
            ("checkout.session.async_payment_failed", "unpaid"),
        ],
    ),
    "free": (
        ["free"],
        "complete",
        "no_payment_required",
        [("checkout.session.completed", "no_payment_required")],
    ),
    "expire": (["expire"], "expired", "unpaid", [("checkout.session.expired", "unpaid")]),
}


def run_steps(server: EmulatorServer, sid: str, steps: list[str]) -> None:
    for step in steps:
        if step in ("paid", "delayed", "free"):
            server.complete(sid, step)
        elif step in ("succeeded", "failed"):
            server.post(f"/_emulator/sessions/{sid}/settle", {"result": step})
        elif step == "expire":
            server.stripe().v1.checkout.sessions.expire(sid)


@pytest.mark.parametrize("flavor", ["sync", "async"])
@pytest.mark.parametrize("scenario", list(OUTCOMES))
async def test_payment_outcome(
    emulator_server: EmulatorServer, receiver: Receiver, scenario: str, flavor: str
) -> None:
    steps, status, payment_status, expected_events = OUTCOMES[scenario]
    register(emulator_server, receiver)
    price = emulator_server.price(unit_amount=0 if scenario == "free" else 1900)
    sid = emulator_server.session([(price, 2)]).id

    if flavor == "async":
        async with async_stripe(emulator_server) as client:
            if steps == ["expire"]:
                expired = await client.v1.checkout.sessions.expire_async(sid)
                assert expired.status == "expired"
            else:
                run_steps(emulator_server, sid, steps)
            session = await client.v1.checkout.sessions.retrieve_async(sid)
            listed = await client.v1.events.list_async({"type": "checkout.session.*"})
            events = [e async for e in listed.auto_paging_iter()]
    else:
        run_steps(emulator_server, sid, steps)
        client = emulator_server.stripe()
        session = client.v1.checkout.sessions.retrieve(sid)
        events = list(
            client.v1.events.list({"type": "checkout.session.*", "limit": 1}).auto_paging_iter()
        )

    assert (session.status, session.payment_status) == (status, payment_status)
    assert session.url is None
    if scenario in ("paid", "delayed_succeeded", "delayed_failed"):
        assert session.payment_intent is not None
        assert str(session.payment_intent).startswith("pi_")
    else:
        assert session.payment_intent is None
    # Newest first; each event carries the session as it was when it happened.
    assert [(e.type, e.data.object["payment_status"]) for e in reversed(events)] == expected_events
    assert all(e.data.object["id"] == sid for e in events)
    # The same events, each delivered once to the registered endpoint.
    delivered = receiver.wait_for(len(expected_events))
    wait_idle(emulator_server)
    assert sorted(verify(r).id for r in delivered) == sorted(e.id for e in events)


def test_events_list_filters(emulator_server: EmulatorServer) -> None:
    price = emulator_server.price()
    paid, delayed = (emulator_server.session([(price, 1)]).id for _ in range(2))
    emulator_server.complete(paid)
    emulator_server.complete(delayed, "delayed")
    emulator_server.post(f"/_emulator/sessions/{delayed}/settle", {"result": "succeeded"})
    client = emulator_server.stripe()

    completed = client.v1.events.list({"type": "checkout.session.completed"}).data
    assert sorted(e.data.object["id"] for e in completed) == sorted([paid, delayed])
    succeeded = client.v1.events.list({"types": ["checkout.session.async_payment_succeeded"]})
    assert [e.data.object["id"] for e in succeeded.data] == [delayed]
    assert len(client.v1.events.list().data) == 3
    event = client.v1.events.retrieve(succeeded.data[0].id)
    assert event.type == "checkout.session.async_payment_succeeded"


def test_a_zero_amount_session_needs_no_payment_whatever_is_asked(
    emulator_server: EmulatorServer,
) -> None:
    sid = emulator_server.session([(emulator_server.price(unit_amount=0), 1)]).id
    emulator_server.complete(sid, "paid")
    session = emulator_server.stripe().v1.checkout.sessions.retrieve(sid)
    assert (session.status, session.payment_status) == ("complete", "no_payment_required")


def test_a_setup_session_saves_a_card_and_charges_nothing(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    client = emulator_server.stripe()
    session = client.v1.checkout.sessions.create(
        {"mode": "setup", "currency": "EUR", "success_url": "http://shop.test/saved"}
    )
    # As Stripe's: no amount, nothing to pay, a SetupIntent from the start.
    assert (session.status, session.payment_status) == ("open", "no_payment_required")
    assert (session.amount_total, session.amount_subtotal, session.currency) == (None, None, "eur")
    assert str(session.setup_intent).startswith("seti_")
    assert session.url is not None
    page = emulator_server.control.get(session.url)
    assert page.status_code == 200
    assert "Save card" in page.text
    paid = emulator_server.control.post(session.url, data={"outcome": "free"})
    assert paid.status_code == 303

    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["line_items"]})
    assert (done.status, done.payment_status, done.mode) == (
        "complete",
        "no_payment_required",
        "setup",
    )
    assert done.setup_intent == session.setup_intent
    assert done.payment_intent is None
    assert done.line_items is not None
    assert done.line_items.data == []
    (delivered,) = receiver.wait_for(1)
    event = payload(delivered)
    assert event["type"] == "checkout.session.completed"
    assert event["data"]["object"]["mode"] == "setup"
    assert event["data"]["object"]["amount_total"] is None


def test_setup_sessions_take_no_line_items_and_name_a_currency(
    emulator_server: EmulatorServer,
) -> None:
    client = emulator_server.stripe()
    base = {"mode": "setup", "success_url": "http://shop.test/saved"}
    price = emulator_server.price()
    for extra, param in (
        ({"currency": "eur", "line_items": [{"price": price, "quantity": 1}]}, "line_items"),
        ({}, "currency"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.checkout.sessions.create({**base, **extra})  # type: ignore[arg-type]
        assert caught.value.param == param
    card_only = client.v1.checkout.sessions.create({**base, "payment_method_types": ["card"]})  # type: ignore[arg-type]
    assert card_only.currency is None


def test_a_subscription_session_is_paid_through_its_first_invoice(
    emulator_server: EmulatorServer,
) -> None:
    client = emulator_server.stripe()
    monthly = emulator_server.price("Club", 900, recurring={"interval": "month"})
    assert client.v1.prices.retrieve(monthly).type == "recurring"
    session = emulator_server.session([(monthly, 1)], mode="subscription")
    assert (session.amount_total, session.payment_status) == (900, "unpaid")
    emulator_server.complete(session.id)
    done = client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert str(done.subscription).startswith("sub_")
    assert str(done.invoice).startswith("in_")
    assert str(done.customer).startswith("cus_")
    assert done.payment_intent is None  # the invoice's, not the session's


def test_each_mode_sells_only_its_kind_of_price(emulator_server: EmulatorServer) -> None:
    one_time = emulator_server.price()
    monthly = emulator_server.price("Club", 900, recurring={"interval": "month"})
    for mode, price in (("subscription", one_time), ("payment", monthly)):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            emulator_server.session([(price, 1)], mode=mode)
        assert caught.value.param == "line_items", mode
    with pytest.raises(stripe.InvalidRequestError) as caught:
        emulator_server.price("Weird", 100, recurring={"interval": "fortnight"})
    assert caught.value.param == "recurring[interval]"


def test_transitions_only_from_the_right_state(emulator_server: EmulatorServer) -> None:
    price = emulator_server.price()
    sid = emulator_server.session([(price, 1)]).id
    control = emulator_server.control

    free = control.post(f"/_emulator/sessions/{sid}/complete", json={"outcome": "free"})
    assert free.status_code == 400
    assert free.json()["error"]["param"] == "outcome"
    emulator_server.complete(sid)
    again = control.post(f"/_emulator/sessions/{sid}/complete", json={"outcome": "paid"})
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "checkout_session_not_open"
    settle = control.post(f"/_emulator/sessions/{sid}/settle", json={"result": "succeeded"})
    assert settle.status_code == 400
    assert settle.json()["error"]["code"] == "no_pending_payment"
    with pytest.raises(stripe.InvalidRequestError) as expire:
        emulator_server.stripe().v1.checkout.sessions.expire(sid)
    assert expire.value.http_status == 400
    assert emulator_server.stripe().v1.checkout.sessions.retrieve(sid).status == "complete"
    missing = control.post("/_emulator/sessions/cs_test_nope/complete", json={})
    assert missing.status_code == 404


def test_an_open_session_expires_at_expires_at(emulator_server: EmulatorServer) -> None:
    now = [1_780_000_000.0]
    emulator_server.emulator.state.clock = lambda: now[0]
    sid = emulator_server.session(expires_at=1_780_000_000 + 1800).id
    now[0] += 1799
    assert emulator_server.stripe().v1.checkout.sessions.retrieve(sid).status == "open"
    now[0] += 1

    # The emulator's expiry sweep runs every second (a busy machine may delay it).
    client = emulator_server.stripe()
    poll(
        lambda: True if client.v1.checkout.sessions.retrieve(sid).status == "expired" else None,
        timeout=30,
        interval=0.05,
    )
    assert [e.type for e in client.v1.events.list().data] == ["checkout.session.expired"]


# -- errors ---------------------------------------------------------------------------


def test_authentication(emulator_server: EmulatorServer) -> None:
    for key in ("sk_live_not_a_test_key", "pk_test_publishable", "nonsense"):
        with pytest.raises(stripe.AuthenticationError) as caught:
            emulator_server.stripe(key=key).v1.checkout.sessions.list()
        assert caught.value.http_status == 401
    # Any test-mode secret key works by default.
    assert emulator_server.stripe(key="sk_test_any_other").v1.checkout.sessions.list().data == []

    with raw_api(emulator_server, key=None) as http:
        no_key = http.get("/v1/checkout/sessions")
        basic = http.get("/v1/checkout/sessions", auth=("sk_test_basic", ""))
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    assert "API key" in no_key.json()["error"]["message"]
    assert basic.status_code == 200


async def test_authentication_with_one_api_key() -> None:
    key = "sk_test_the_only_key"
    with other_emulator(Emulator(api_key=key)) as url:
        with (
            sync_stripe(url, key="sk_test_another_key") as wrong,
            pytest.raises(stripe.AuthenticationError),
        ):
            wrong.v1.checkout.sessions.list()
        with sync_stripe(url, key=key) as right:
            assert right.v1.checkout.sessions.list().data == []
        async with async_stripe(url, key="sk_test_another_key") as wrong_async:
            with pytest.raises(stripe.AuthenticationError) as caught:
                await wrong_async.v1.checkout.sessions.list_async()
            assert caught.value.http_status == 401
            body: Any = caught.value.json_body
            assert body["error"]["code"] == "api_key_invalid"
            assert "the_only_key" not in str(caught.value)
        async with async_stripe(url, key=key) as right_async:
            assert (await right_async.v1.checkout.sessions.list_async()).data == []
        with raw_api(url, key=None) as http:
            assert http.get("/v1/events", auth=(key, "")).status_code == 200
            assert http.get("/v1/events", auth=("sk_test_x", "")).status_code == 401
            assert http.get("/v1/events").status_code == 401


async def test_missing_objects_are_404_resource_missing(emulator_server: EmulatorServer) -> None:
    unknown = "cs_test_" + "a" * 58
    client = emulator_server.stripe()
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.retrieve(unknown)
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert unknown in str(caught.value.user_message)

    async with async_stripe(emulator_server) as aclient:
        with pytest.raises(stripe.InvalidRequestError) as caught_async:
            await aclient.v1.checkout.sessions.line_items.list_async("cs_test_nope")
        assert caught_async.value.http_status == 404
        assert caught_async.value.code == "resource_missing"
        with pytest.raises(stripe.InvalidRequestError) as no_price:
            await aclient.v1.checkout.sessions.create_async(
                {
                    "mode": "payment",
                    "success_url": "http://shop.test/ok",
                    "line_items": [{"price": "price_missing", "quantity": 1}],
                }
            )
        assert no_price.value.http_status == 404
        assert no_price.value.param == "line_items[0][price]"

    for missing in (
        lambda: client.v1.products.retrieve("prod_nope"),
        lambda: client.v1.prices.retrieve("price_nope"),
        lambda: client.v1.events.retrieve("evt_nope"),
        lambda: client.v1.checkout.sessions.expire("cs_test_nope"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as each:
            missing()
        assert (each.value.http_status, each.value.code) == (404, "resource_missing")


DROP = object()

BAD_SESSIONS: list[tuple[dict[str, Any], str, str]] = [
    ({"colour": "red"}, "parameter_unknown", "colour"),
    (
        {"line_items": [{"price": "PRICE", "quantity": 1, "colour": "red"}]},
        "parameter_unknown",
        "line_items[0][colour]",
    ),
    (
        {"line_items": [{"price": "PRICE", "quantity": "many"}]},
        "parameter_invalid_integer",
        "line_items[0][quantity]",
    ),
    (
        {"line_items": [{"price": "PRICE", "quantity": 1}, {"price": "PRICE", "quantity": 0}]},
        "parameter_invalid_integer",
        "line_items[1][quantity]",
    ),
    ({"line_items": [{"price": "PRICE"}]}, "parameter_missing", "line_items[0][quantity]"),
    ({"success_url": DROP}, "parameter_missing", "success_url"),
    ({"mode": DROP}, "parameter_missing", "mode"),
    ({"mode": "barter"}, "parameter_invalid_string", "mode"),
    ({"success_url": "shop.test/ok"}, "parameter_invalid_string", "success_url"),
    ({"expires_at": "soon"}, "parameter_invalid_integer", "expires_at"),
    ({"expires_at": 1}, "parameter_invalid_integer", "expires_at"),
    ({"metadata": {"k": {"nested": "x"}}}, "parameter_invalid_string", "metadata[k]"),
    ({"expand": ["customer"]}, "parameter_invalid_string", "expand[0]"),
    (
        {
            "line_items": [
                {
                    "price_data": {"currency": "eur", "product_data": {"name": "X"}},
                    "quantity": 1,
                }
            ]
        },
        "parameter_missing",
        "line_items[0][price_data][unit_amount]",
    ),
]


def test_invalid_parameters_are_400_naming_the_parameter(
    emulator_server: EmulatorServer,
) -> None:
    """Each change to a valid request, and the error Stripe would answer it with."""
    price = emulator_server.price()
    client = emulator_server.stripe()
    for changes, code, param in BAD_SESSIONS:
        params: Any = {
            "mode": "payment",
            "success_url": "http://shop.test/ok",
            "line_items": [{"price": price, "quantity": 1}],
        }
        for key, value in changes.items():
            if value is DROP:
                del params[key]
            else:
                params[key] = json.loads(json.dumps(value).replace("PRICE", price))

        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.checkout.sessions.create(params)

        error = caught.value
        assert (error.http_status, error.code, error.param) == (400, code, param), changes
    assert emulator_server.emulator.state.sessions == {}


def test_invalid_list_parameters(emulator_server: EmulatorServer) -> None:
    client = emulator_server.stripe()
    bad: list[tuple[Any, str, str]] = [
        ({"limit": 1000}, "parameter_invalid_integer", "limit"),
        ({"limit": "ten"}, "parameter_invalid_integer", "limit"),
        ({"status": "paid"}, "parameter_invalid_string", "status"),
        ({"created": {"since": 1}}, "parameter_unknown", "created[since]"),
        ({"created": {"gte": "yesterday"}}, "parameter_invalid_integer", "created[gte]"),
        (
            {"starting_after": "cs_test_a", "ending_before": "cs_test_b"},
            "parameter_invalid_string",
            "ending_before",
        ),
    ]
    for params, code, param in bad:
        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.checkout.sessions.list(params)
        assert (caught.value.http_status, caught.value.code, caught.value.param) == (
            400,
            code,
            param,
        ), params


def test_raw_error_shape(emulator_server: EmulatorServer) -> None:
    price = emulator_server.price()
    with raw_api(emulator_server) as http:
        missing = http.get("/v1/checkout/sessions/cs_test_" + "b" * 58)
        unknown = http.post(
            "/v1/checkout/sessions",
            data={
                "mode": "payment",
                "success_url": "http://shop.test/ok",
                "line_items[0][price]": price,
                "line_items[0][quantity]": "1",
                "line_items[0][bogus]": "1",
            },
        )
        quantity = http.post(
            "/v1/checkout/sessions",
            data={
                "mode": "payment",
                "success_url": "http://shop.test/ok",
                "line_items[0][price]": price,
                "line_items[0][quantity]": "x",
            },
        )
        route = http.get("/v1/customers")
    with raw_api(emulator_server, key="sk_live_nope") as http:
        auth = http.get("/v1/checkout/sessions")

    expected = [
        (missing, 404, "invalid_request_error", "resource_missing", "session"),
        (unknown, 400, "invalid_request_error", "parameter_unknown", "line_items[0][bogus]"),
        (
            quantity,
            400,
            "invalid_request_error",
            "parameter_invalid_integer",
            "line_items[0][quantity]",
        ),
        (auth, 401, "invalid_request_error", "api_key_invalid", None),
        (route, 404, "invalid_request_error", None, None),
    ]
    for response, status, type_, code, param in expected:
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["error"]
        error = body["error"]
        assert set(error) >= {"type", "code", "message", "param"}
        assert (error["type"], error["code"], error["param"]) == (type_, code, param)
        assert isinstance(error["message"], str)
        assert error["message"]
        assert response.headers["request-id"].startswith("req_")


# -- shape ----------------------------------------------------------------------------


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def fixture_session_keys() -> set[str]:
    keys: set[str] = set()
    for path in sorted(FIXTURES.glob("event_checkout_session_completed_*.json")):
        keys |= set(fixture(path.name)["data"]["object"])
    return keys


def test_a_completed_session_has_every_key_stripe_sends(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver)
    sid = emulator_server.session(
        shipping_address_collection={"allowed_countries": ["BG", "DE"]},
        metadata={"order": "42"},
    ).id
    emulator_server.complete(sid)
    expected = fixture_session_keys()
    assert len(expected) > 50

    retrieved = emulator_server.stripe().v1.checkout.sessions.retrieve(sid).to_dict()
    assert expected - set(retrieved) == set()

    (delivered,) = receiver.wait_for(1)
    event = payload(delivered)
    assert set(fixture("event_checkout_session_completed_paid.json")) - set(event) == set()
    assert expected - set(event["data"]["object"]) == set()
    assert event["data"]["object"]["metadata"] == {"order": "42"}
    with raw_api(emulator_server) as http:
        raw = http.get(f"/v1/checkout/sessions/{sid}").json()
    assert expected - set(raw) == set()
    assert not [k for k in raw if k.startswith("_")]


def test_line_item_shape(emulator_server: EmulatorServer) -> None:
    sid = emulator_server.session().id
    expected = fixture("checkout_session_line_item.json")
    with raw_api(emulator_server) as http:
        listed = http.get(f"/v1/checkout/sessions/{sid}/line_items").json()
        expanded = http.get(
            f"/v1/checkout/sessions/{sid}", params={"expand[]": "line_items"}
        ).json()

    for item in (listed["data"][0], expanded["line_items"]["data"][0]):
        assert set(item) == set(expected)
        assert set(item["price"]) == set(expected["price"])
        assert item["object"] == "item"
    assert listed["url"] == f"/v1/checkout/sessions/{sid}/line_items"
    assert expanded["line_items"]["url"] == listed["url"]


def test_ids_look_like_stripes(emulator_server: EmulatorServer, receiver: Receiver) -> None:
    register(emulator_server, receiver)
    session = emulator_server.session()
    emulator_server.complete(session.id)
    client = emulator_server.stripe()
    retrieved = client.v1.checkout.sessions.retrieve(session.id, {"expand": EXPAND})
    assert retrieved.line_items is not None
    item = retrieved.line_items.data[0]
    assert item.price is not None
    product = item.price.product
    assert isinstance(product, stripe.Product)
    event = client.v1.events.list().data[0]

    assert re.fullmatch(r"cs_test_[A-Za-z0-9]{58}", session.id)
    assert re.fullmatch(r"li_[A-Za-z0-9]{14,}", item.id)
    assert re.fullmatch(r"price_[A-Za-z0-9]{14,}", item.price.id)
    assert re.fullmatch(r"prod_[A-Za-z0-9]{14,}", product.id)
    assert re.fullmatch(r"evt_[A-Za-z0-9]{14,}", event.id)
    assert re.fullmatch(r"pi_[A-Za-z0-9]{14,}", str(retrieved.payment_intent))
    assert session.url == f"{emulator_server.url}/c/pay/{session.id}"
    ids = {emulator_server.session().id for _ in range(20)}
    assert len(ids) == 20


SHIPPING = {
    "name": "Test Buyer",
    "address": {
        "line1": "1 Test Street",
        "city": "Nessebar",
        "postal_code": "8230",
        "country": "BG",
    },
}


def shipped_session(server: EmulatorServer) -> str:
    sid: str = server.session(shipping_address_collection={"allowed_countries": ["BG"]}).id
    server.complete(sid, shipping=SHIPPING)
    return sid


@pytest.mark.parametrize("version", ["2024-06-20", "2025-02-24.acacia"])
async def test_old_api_versions_carry_top_level_shipping_details(
    emulator_server: EmulatorServer, version: str
) -> None:
    sid = shipped_session(emulator_server)

    old = emulator_server.stripe(stripe_version=version).v1.checkout.sessions.retrieve(sid)
    async with async_stripe(emulator_server, stripe_version=version) as client:
        old_async = await client.v1.checkout.sessions.retrieve_async(sid)

    for session in (old.to_dict(), old_async.to_dict()):
        assert session["shipping_details"]["name"] == "Test Buyer"
        assert session["shipping_details"]["address"]["city"] == "Nessebar"
        assert session["shipping_details"]["address"]["line2"] is None
        assert "shipping_details" not in (session.get("collected_information") or {})


@pytest.mark.parametrize("version", [None, "2025-03-31.basil", "2026-08-26.dahlia"])
def test_current_api_versions_carry_collected_information(
    emulator_server: EmulatorServer, version: str | None
) -> None:
    sid = shipped_session(emulator_server)
    client = emulator_server.stripe(stripe_version=version) if version else emulator_server.stripe()

    session = client.v1.checkout.sessions.retrieve(sid).to_dict()

    assert "shipping_details" not in session
    details = session["collected_information"]["shipping_details"]
    assert details["name"] == "Test Buyer"
    assert details["address"] == {
        "line1": "1 Test Street",
        "line2": None,
        "city": "Nessebar",
        "postal_code": "8230",
        "state": None,
        "country": "BG",
    }


def test_webhook_events_follow_the_endpoint_api_version(
    emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    register(emulator_server, receiver, api_version="2024-06-20")
    sid = shipped_session(emulator_server)

    (delivered,) = receiver.wait_for(1)

    event = payload(delivered)
    assert event["api_version"] == "2024-06-20"
    assert event["data"]["object"]["id"] == sid
    assert event["data"]["object"]["shipping_details"]["address"]["city"] == "Nessebar"
    # The stored event is unchanged: the API still gives the current shape.
    stored = emulator_server.stripe().v1.events.retrieve(event["id"]).to_dict()
    assert "shipping_details" not in stored["data"]["object"]
    assert stored["data"]["object"]["collected_information"]["shipping_details"] is not None
