"""The hosted checkout page at a session's ``url``, over plain HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from fulfill.emulator import Emulator
from tests.conftest import EmulatorServer
from tests.emulator_support import other_emulator, poll, register, sync_stripe, verify
from tests.servers import Receiver

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    """A plain HTTP client that does not follow redirects (so tests see them)."""
    with httpx.Client(follow_redirects=False) as client:
        yield client


def test_the_page_shows_the_items_escaped(
    emulator_server: EmulatorServer, browser: httpx.Client
) -> None:
    book = emulator_server.price("The Python Handbook", unit_amount=1900)
    evil = emulator_server.price(XSS, unit_amount=250)
    session = emulator_server.session([(book, 2), (evil, 1)], customer_email='"><b>x</b>@x.test')
    assert session.url is not None

    page = browser.get(session.url)

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "The Python Handbook" in page.text
    assert "\N{MULTIPLICATION SIGN} 2" in page.text
    assert "38.00 EUR" in page.text  # 2 x 19.00
    assert "40.50 EUR" in page.text  # the total
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<img" not in page.text
    assert "<b>x</b>" not in page.text
    assert f'action="/c/pay/{session.id}"' in page.text


def test_paying_completes_and_redirects_to_the_success_url(
    emulator_server: EmulatorServer, receiver: Receiver, browser: httpx.Client
) -> None:
    register(emulator_server, receiver)
    session = emulator_server.session(
        success_url="http://shop.test/thanks/{CHECKOUT_SESSION_ID}?again={CHECKOUT_SESSION_ID}"
    )
    assert session.url is not None

    answer = browser.post(
        session.url, data={"outcome": "paid", "email": "ada@example.com", "name": "Ada Lovelace"}
    )

    assert answer.status_code == 303
    assert answer.headers["location"] == (
        f"http://shop.test/thanks/{session.id}?again={session.id}"
    )
    paid = emulator_server.stripe().v1.checkout.sessions.retrieve(session.id)
    assert (paid.status, paid.payment_status) == ("complete", "paid")
    assert paid.customer_details is not None
    assert (paid.customer_details.email, paid.customer_details.name) == (
        "ada@example.com",
        "Ada Lovelace",
    )
    (delivery,) = receiver.wait_for(1)
    assert verify(delivery).type == "checkout.session.completed"


def test_a_completed_session_page_links_to_the_success_url(
    emulator_server: EmulatorServer, browser: httpx.Client
) -> None:
    session = emulator_server.session()
    assert session.url is not None
    browser.post(session.url, data={"outcome": "paid"})

    page = browser.get(session.url)
    again = browser.post(session.url, data={"outcome": "paid"})

    assert page.status_code == 200
    assert "complete" in page.text
    assert f'href="http://shop.test/done?session_id={session.id}"' in page.text
    # Paying twice (a double click, the back button) pays once and goes on to the shop.
    assert again.status_code == 303
    assert again.headers["location"] == f"http://shop.test/done?session_id={session.id}"
    events = emulator_server.stripe().v1.events.list().data
    assert [e.type for e in events] == ["checkout.session.completed"]


def test_a_delayed_payment_completes_unpaid(
    emulator_server: EmulatorServer, browser: httpx.Client
) -> None:
    session = emulator_server.session()
    assert session.url is not None

    answer = browser.post(session.url, data={"outcome": "delayed", "settle": "succeeded"})

    assert answer.status_code == 303
    client = emulator_server.stripe()
    delayed = client.v1.checkout.sessions.retrieve(session.id)
    assert (delayed.status, delayed.payment_status) == ("complete", "unpaid")
    # Without auto_settle it stays unpaid until a test settles it.
    emulator_server.post(f"/_emulator/sessions/{session.id}/settle", {"result": "succeeded"})
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"


@pytest.mark.parametrize(
    ("choice", "payment_status", "event"),
    [
        ("succeeded", "paid", "checkout.session.async_payment_succeeded"),
        ("failed", "unpaid", "checkout.session.async_payment_failed"),
    ],
)
def test_a_delayed_payment_settles_by_itself_as_chosen_on_the_page(
    browser: httpx.Client, choice: str, payment_status: str, event: str
) -> None:
    with other_emulator(Emulator(auto_settle=0.1)) as url, sync_stripe(url) as client:
        product = client.v1.products.create({"name": "Course"})
        price = client.v1.prices.create(
            {"currency": "eur", "unit_amount": 900, "product": product.id}
        )
        session = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "success_url": "http://shop.test/ok",
                "line_items": [{"price": price.id, "quantity": 1}],
            }
        )
        assert session.url is not None
        browser.post(session.url, data={"outcome": "delayed", "settle": choice})

        settled = poll(
            lambda: (
                [e.type for e in client.v1.events.list().data]
                if len(client.v1.events.list().data) == 2
                else None
            )
        )
        final = client.v1.checkout.sessions.retrieve(session.id)

    assert settled == [event, "checkout.session.completed"]
    assert (final.status, final.payment_status) == ("complete", payment_status)


def test_a_free_order(emulator_server: EmulatorServer, browser: httpx.Client) -> None:
    session = emulator_server.session([(emulator_server.price(unit_amount=0), 1)])
    assert session.url is not None

    page = browser.get(session.url)
    assert "Complete order" in page.text
    assert 'name="outcome" value="free"' in page.text
    answer = browser.post(session.url, data={"outcome": "free"})

    assert answer.status_code == 303
    free = emulator_server.stripe().v1.checkout.sessions.retrieve(session.id)
    assert (free.status, free.payment_status) == ("complete", "no_payment_required")


def test_the_shipping_address_entered_is_collected(
    emulator_server: EmulatorServer, browser: httpx.Client
) -> None:
    session = emulator_server.session(
        shipping_address_collection={"allowed_countries": ["BG", "DE"]}
    )
    assert session.url is not None
    page = browser.get(session.url)
    assert re.search(r"<option>BG</option>\s*<option>DE</option>", page.text)

    browser.post(
        session.url,
        data={
            "outcome": "paid",
            "name": "Test Buyer",
            "line1": "1 Test Street",
            "city": "Nessebar",
            "postal_code": "8230",
            "country": "BG",
        },
    )

    paid = emulator_server.stripe().v1.checkout.sessions.retrieve(session.id).to_dict()
    details = paid["collected_information"]["shipping_details"]
    assert details["name"] == "Test Buyer"
    assert details["address"] == {
        "line1": "1 Test Street",
        "line2": None,
        "city": "Nessebar",
        "postal_code": "8230",
        "state": None,
        "country": "BG",
    }


def test_an_expired_session_page(emulator_server: EmulatorServer, browser: httpx.Client) -> None:
    session = emulator_server.session()
    assert session.url is not None
    emulator_server.stripe().v1.checkout.sessions.expire(session.id)

    page = browser.get(session.url)
    paying = browser.post(session.url, data={"outcome": "paid"})

    assert page.status_code == 410
    assert page.headers["content-type"].startswith("text/html")
    assert "expired" in page.text
    assert "<form" not in page.text
    assert paying.status_code == 410
    assert paying.headers["content-type"].startswith("text/html")
    expired = emulator_server.stripe().v1.checkout.sessions.retrieve(session.id)
    assert (expired.status, expired.payment_status) == ("expired", "unpaid")


def test_an_unknown_session_page(emulator_server: EmulatorServer, browser: httpx.Client) -> None:
    url = f"{emulator_server.url}/c/pay/cs_test_{'z' * 58}"

    page = browser.get(url)
    paying = browser.post(url, data={"outcome": "paid"})

    assert page.status_code == 404
    assert "not found" in page.text
    assert paying.status_code == 404
    assert paying.headers["content-type"].startswith("text/html")


def test_cancel_goes_back_to_the_shop(
    emulator_server: EmulatorServer, browser: httpx.Client
) -> None:
    session = emulator_server.session(cancel_url="http://shop.test/cart")
    assert session.url is not None
    page = browser.get(session.url)
    assert f'href="/c/pay/{session.id}/cancel"' in page.text

    answer = browser.get(f"{session.url}/cancel")

    assert answer.status_code == 303
    assert answer.headers["location"] == "http://shop.test/cart"
    still = emulator_server.stripe().v1.checkout.sessions.retrieve(session.id)
    assert still.status == "open"


def test_a_bad_outcome_is_refused(emulator_server: EmulatorServer, browser: httpx.Client) -> None:
    session = emulator_server.session()
    assert session.url is not None

    answer = browser.post(session.url, data={"outcome": "stolen"})

    assert answer.status_code == 400
    assert emulator_server.stripe().v1.checkout.sessions.retrieve(session.id).status == "open"
