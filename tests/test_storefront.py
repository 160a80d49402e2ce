"""The storefront and ``POST /checkout/sessions``: only catalog prices, only Stripe's URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import (
    HOOK_METADATA,
    HOOK_SECRET,
    EmulatorServer,
    ServiceFactory,
    ServiceServer,
)
from tests.servers import Receiver

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Nothing here is about the database: SQLite alone (conftest's runs PostgreSQL too)."""
    return f"sqlite:///{tmp_path / 'fulfill.db'}"


def shop_catalog(receiver_url: str, *, price: str, lookup_key: str, extra: str = "") -> str:
    """Two hook-fulfilled products for sale (by price and by lookup key) and one that is not."""
    return f"""
[[product]]
name = "E-book"
match = {{ price = "{price}" }}
action = "webhook"
url = "{receiver_url}"
secret = "{HOOK_SECRET}"

[[product]]
name = "Course"
match = {{ lookup_key = "{lookup_key}" }}
action = "webhook"
url = "{receiver_url}"
secret = "{HOOK_SECRET}"

[[product]]
name = "Only by metadata: not listed"
match = {{ metadata = {{ fulfill = "hook" }} }}
action = "webhook"
url = "{receiver_url}"
secret = "{HOOK_SECRET}"

[[product]]
name = "A price that does not exist"
match = {{ price = "price_gone" }}
action = "webhook"
url = "{receiver_url}"
secret = "{HOOK_SECRET}"
{extra}
"""


class Shop:
    def __init__(self, service: ServiceServer, ebook: str, course: str) -> None:
        self.service = service
        self.ebook = ebook
        self.course = course

    def buy(self, fields: list[tuple[str, str]] | dict[str, str], **kwargs: Any) -> httpx.Response:
        """POST a form, as the storefront's buttons do (fields may repeat)."""
        pairs = list(fields.items()) if isinstance(fields, dict) else fields
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kwargs.pop("headers", {})}
        return self.service.client.post(
            "/checkout/sessions", content=urlencode(pairs), headers=headers, **kwargs
        )

    def sessions_created(self) -> int:
        return self.service.shop.requests_to("/v1/checkout/sessions")


@pytest.fixture
def shop(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver
) -> Shop:
    ebook = emulator_server.price(XSS, 1900)
    course = emulator_server.price("Course (1 year)", 9900, lookup_key="course_year")
    emulator_server.price("Tagged", 500, product_metadata=HOOK_METADATA)
    service = service_factory(
        shop_catalog(receiver.url, price=ebook, lookup_key="course_year"),
    )
    return Shop(service, ebook, course)


def test_shop_lists_catalog_prices_with_amounts_escaped(shop: Shop) -> None:
    page = shop.service.client.get("/shop")
    assert page.status_code == 200
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "19.00 EUR" in page.text
    assert "Course (1 year)" in page.text
    assert "99.00 EUR" in page.text
    assert f'value="{shop.ebook}"' in page.text
    assert f'value="{shop.course}"' in page.text
    assert "Tagged" not in page.text  # matched by metadata only: not a priced offer
    assert page.text.count('data-testid="product"') == 2
    assert shop.service.client.get("/", follow_redirects=False).headers["location"] == "/shop"


def test_offers_are_read_once_then_cached(shop: Shop) -> None:
    for _ in range(3):
        assert shop.service.client.get("/shop").status_code == 200
    assert shop.service.shop.requests_to(f"/v1/prices/{shop.ebook}") == 1
    listed = shop.service.shop.get("/_emulator/requests?path=/v1/prices")["requests"]
    assert [r["method"] for r in listed].count("GET") == 1


def test_form_creates_session_and_redirects_to_stripe(shop: Shop) -> None:
    answer = shop.buy(
        [("price", shop.ebook), ("quantity", "2"), ("price", shop.course), ("quantity", "1")]
    )
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"{shop.service.shop.url}/c/pay/cs_test_")
    session_id = location.rsplit("/", 1)[1]
    session = shop.service.shop.emulator.state.sessions[session_id]
    public = shop.service.settings.public_url
    assert session["success_url"] == (
        f"{public}/checkout/complete?session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert session["cancel_url"] == f"{public}/shop?cancelled=1"
    assert session["shipping_address_collection"] is None
    assert session["mode"] == "payment"
    items = shop.service.shop.emulator.state.line_items[session_id]
    assert [(i["price"]["id"], i["quantity"]) for i in items] == [
        (shop.ebook, 2),
        (shop.course, 1),
    ]
    assert session["amount_total"] == 2 * 1900 + 9900


def test_json_order_answers_303_with_the_session(shop: Shop) -> None:
    answer = shop.service.client.post(
        "/checkout/sessions", json={"line_items": [{"price": shop.course, "quantity": 3}]}
    )
    assert answer.status_code == 303
    body = answer.json()
    assert body["id"].startswith("cs_test_")
    assert answer.headers["location"] == body["url"]
    assert body["url"] == f"{shop.service.shop.url}/c/pay/{body['id']}"
    listed = shop.service.client.post(
        "/checkout/sessions", json={"price": [shop.ebook, shop.course], "quantity": [1, 2]}
    )
    assert listed.status_code == 303


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "at least one product"),
        ([("price", "price_unknown")], "not for sale"),
        ([("price", "price_gone")], "not for sale"),
        ([("price", "{ebook}"), ("quantity", "0")], "between 1 and 99"),
        ([("price", "{ebook}"), ("quantity", "100")], "between 1 and 99"),
        ([("price", "{ebook}"), ("quantity", "two")], "whole number"),
        ([("price", "{ebook}"), ("price", "{course}"), ("quantity", "1")], "one quantity"),
        ([("price", "{ebook}")] * 101, "at most 100"),
    ],
)
def test_refused_orders_create_nothing(shop: Shop, data: list[tuple[str, str]], words: str) -> None:
    fields = [(k, v.format(ebook=shop.ebook, course=shop.course)) for k, v in data]
    page = shop.buy(fields or {"nothing": "here"})
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert words in page.text
    assert "Traceback" not in page.text
    as_json = shop.service.client.post(
        "/checkout/sessions",
        json={"price": [v for k, v in fields if k == "price"]}
        | ({"quantity": [v for k, v in fields if k == "quantity"]} if fields else {}),
    )
    assert as_json.status_code == 400
    assert as_json.json()["error"]["code"] == "invalid_order"
    assert shop.sessions_created() == 0


def test_other_bodies_are_refused(shop: Shop) -> None:
    plain = shop.service.client.post(
        "/checkout/sessions", content=b"price=x", headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    broken = shop.service.client.post(
        "/checkout/sessions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_order"
    huge = shop.buy({"price": shop.ebook, "pad": "x" * 100_000})
    assert huge.status_code == 400
    assert shop.sessions_created() == 0


def test_nothing_in_the_request_decides_where_it_goes(shop: Shop) -> None:
    answer = shop.buy(
        {
            "price": shop.ebook,
            "success_url": "https://evil.example/steal?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://evil.example/",
            "redirect": "https://evil.example/",
            "next": "//evil.example",
        },
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"{shop.service.shop.url}/c/pay/")
    session = shop.service.shop.emulator.state.sessions[location.rsplit("/", 1)[1]]
    assert "evil" not in session["success_url"]
    assert "evil" not in session["cancel_url"]


def test_stripe_down_is_a_503_page_not_a_trace(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    ebook = emulator_server.price("E-book", 1900)
    service = service_factory(shop_catalog(receiver.url, price=ebook, lookup_key="none"))
    emulator_server.post("/_emulator/faults", {"kind": "error", "status": 500, "count": 1000})
    page = service.client.get("/shop")
    assert page.status_code == 503
    assert "try again" in page.text
    assert "Traceback" not in page.text
    answer = service.client.post("/checkout/sessions", json={"price": ebook})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "stripe_unavailable"


def test_cancelled_checkout_returns_to_the_shop_with_a_notice(shop: Shop) -> None:
    page = shop.service.client.get("/shop?cancelled=1")
    assert "nothing was charged" in page.text


def test_shipment_items_collect_an_address(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    ebook = emulator_server.price("E-book", 1900)
    shirt = emulator_server.price("T-shirt", 2500)
    service = service_factory(
        shop_catalog(
            receiver.url,
            price=ebook,
            lookup_key="none",
            extra=f'[[product]]\nname = "T-shirt"\nmatch = {{ price = "{shirt}" }}\n'
            'action = "shipment"\n',
        ),
        FULFILL_SHIPPING_COUNTRIES="DE,FR",
    )
    only_ebook = service.client.post("/checkout/sessions", json={"price": ebook})
    with_shirt = service.client.post("/checkout/sessions", json={"price": [ebook, shirt]})
    state = emulator_server.emulator.state
    assert state.sessions[only_ebook.json()["id"]]["shipping_address_collection"] is None
    assert state.sessions[with_shirt.json()["id"]]["shipping_address_collection"] == {
        "allowed_countries": ["DE", "FR"]
    }


# -- limits: each checkout is a call on the account's Stripe rate limit ----------------------


def limited_shop(
    service_factory: ServiceFactory,
    emulator_server: EmulatorServer,
    receiver: Receiver,
    **limits: Any,
) -> Shop:
    """A shop behind a trusted proxy on 127.0.0.1: X-Forwarded-For tells the customers apart."""
    ebook = emulator_server.price("E-book", 1900)
    service = service_factory(
        shop_catalog(receiver.url, price=ebook, lookup_key="course_year"),
        FULFILL_TRUSTED_PROXIES="127.0.0.1",
        **limits,
    )
    shop = Shop(service, ebook, "")
    assert service.client.get("/shop").status_code == 200  # the offers, read once
    return shop


def customer(address: str, **headers: str) -> dict[str, Any]:
    return {"headers": {"X-Forwarded-For": address, **headers}}


def assert_refused_page(answer: httpx.Response, retry_after: int) -> None:
    """The 429 a form post gets: a page that says what to do, and does nothing by itself."""
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == str(retry_after)
    assert answer.headers["content-type"].startswith("text/html")
    assert "location" not in answer.headers
    assert '<h1 id="problem-h">Too many requests</h1>' in answer.text
    assert "Please wait a moment and try again" in answer.text
    assert "nothing was charged" in answer.text
    assert "http-equiv" not in answer.text  # no reload behind the customer's back


def test_over_the_per_client_limit_a_checkout_is_429_and_costs_no_session(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    shop = limited_shop(
        service_factory,
        emulator_server,
        receiver,
        FULFILL_CHECKOUTS_PER_CLIENT=2,
        FULFILL_CHECKOUTS_PER_SECOND=1000,
    )
    a = customer("203.0.113.10")
    assert [shop.buy({"price": shop.ebook}, **a).status_code for _ in range(2)] == [303, 303]
    assert shop.sessions_created() == 2

    assert_refused_page(shop.buy({"price": shop.ebook}, **a), retry_after=30)
    as_json = shop.service.client.post(
        "/checkout/sessions", json={"price": shop.ebook}, **customer("203.0.113.10")
    )
    assert as_json.status_code == 429
    assert as_json.headers["retry-after"] == "30"
    assert as_json.json() == {
        "error": {
            "code": "too_many_checkouts",
            "message": "You have started several checkouts in a short time. Please wait a "
            "moment and try again; nothing was charged.",
        }
    }
    assert shop.sessions_created() == 2  # nothing was sent to Stripe for either

    # Another customer is served; an order refused as invalid spends no allowance.
    b = customer("203.0.113.20")
    assert shop.buy({"price": "price_not_sold_here"}, **b).status_code == 400
    assert [shop.buy({"price": shop.ebook}, **b).status_code for _ in range(2)] == [303, 303]
    assert shop.sessions_created() == 4


def test_over_the_total_limit_every_client_is_refused(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, receiver: Receiver
) -> None:
    # One checkout per 20 seconds for the whole shop: the second, moments later, is over.
    shop = limited_shop(
        service_factory,
        emulator_server,
        receiver,
        FULFILL_CHECKOUTS_PER_CLIENT=1000,
        FULFILL_CHECKOUTS_PER_SECOND=0.05,
    )
    assert shop.buy({"price": shop.ebook}, **customer("203.0.113.10")).status_code == 303
    for address in ("203.0.113.10", "203.0.113.20", "198.51.100.7"):
        refused = shop.buy({"price": shop.ebook}, **customer(address))
        assert_refused_page(refused, retry_after=20)
        assert "a lot of orders just now" in refused.text
    assert shop.buy({"price": shop.ebook}).status_code == 429  # the proxy's own address too
    assert shop.sessions_created() == 1
