"""The landing page: a clear page for every state, private headers, escaped content."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fulfill.engine import Engine
from fulfill.landing import LandingPage, unavailable_message
from fulfill.records import FulfillmentRecord
from tests.conftest import HOOK_METADATA, ServiceFactory
from tests.servers import Receiver, serve_in_thread
from tests.test_engine import wait_status


def test_fulfilled_page_shows_items_results_and_private_headers(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory()
    price = service.shop.price("<img src=x onerror=alert(1)>", 2999, product_metadata=HOOK_METADATA)
    session_id = service.paid_session([(price, 2)])
    wait_status(service, session_id, "fulfilled")
    page = service.landing(session_id, as_json=False)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<img src=x" not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "59.98 EUR" in page.text
    assert "Delivered by the test receiver" in page.text


def test_unknown_session_is_404_and_malformed_is_400_before_any_api_call(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory()
    unknown = service.landing("cs_test_" + "a" * 58, as_json=False)
    assert unknown.status_code == 404
    assert "could not find this order" in unknown.text
    before = service.shop.get("/_emulator/requests")["total"]
    for bad in (
        "",
        "cs_test_../../v1/customers",
        "cs_test_abc%2Fdef",
        "cs_test_ab?x=1",
        "cs_test_\u0430bc",
        "cs_test_" + "a" * 10_000,
        "cs_live_abc",
    ):
        page = service.landing(bad, as_json=False)
        assert page.status_code == 400, bad
        assert "Traceback" not in page.text
    assert service.shop.get("/_emulator/requests")["total"] == before
    assert service.landing("").json()["error"]["code"] == "invalid_session_id"


@pytest.mark.parametrize(
    ("action", "status", "words"),
    [
        ("open", "open", "not complete"),
        ("expire", "expired", "has expired"),
    ],
)
def test_open_and_expired_sessions(
    service_factory: ServiceFactory, action: str, status: str, words: str
) -> None:
    service = service_factory()
    session = service.shop.session([(service.shop.price(product_metadata=HOOK_METADATA), 1)])
    if action == "expire":
        service.shop.stripe().v1.checkout.sessions.expire(session.id)
        assert service.shop.get("/_emulator/webhooks/idle")["idle"]
    record = service.landing(session.id).json()
    assert record["status"] == status
    assert words in service.landing(session.id, as_json=False).text


class _BrokenEngine:
    """An engine whose fulfillment fails on the database while a read still answers."""

    def __init__(self, record: FulfillmentRecord | None) -> None:
        self.record = record
        self.store = self

    async def fulfill_checkout(self, session_id: str, **_: Any) -> FulfillmentRecord:
        raise OperationalError("UPDATE fulfillments …", {}, Exception("database is locked"))

    async def get(self, session_id: str) -> FulfillmentRecord | None:
        return self.record


SESSION = "cs_test_a1" + "b" * 56


@pytest.mark.parametrize(
    ("status", "words"),
    [
        *[(s, "We have received your payment") for s in ("pending", "fulfilling", "failed")],
        ("fulfilled", "We have received your payment"),
        ("awaiting_payment", "Your order page could not be loaded just now"),
        ("payment_failed", "Your order page could not be loaded just now"),
        (None, "Your order page could not be loaded just now"),
    ],
)
def test_the_503_page_speaks_of_the_payment_only_when_a_record_shows_it_paid(
    status: str | None, words: str
) -> None:
    record = None if status is None else FulfillmentRecord(session_id=SESSION, status=status)
    page_of = LandingPage(cast(Engine, _BrokenEngine(record)), wait=0)

    async def landing(request: Request) -> Response:
        return await page_of(request)

    app = Starlette(routes=[Route("/checkout/complete", landing)])
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        page = client.get("/checkout/complete", params={"session_id": SESSION})
        answer = client.get(
            "/checkout/complete",
            params={"session_id": SESSION},
            headers={"Accept": "application/json"},
        )
    assert page.status_code == 503
    assert page.headers["retry-after"] == "10"
    card = page.text[page.text.index("<main") : page.text.index("</main>")]
    assert words in card
    if words != "We have received your payment":
        assert "payment" not in card.lower()
    assert 'http-equiv="refresh"' not in page.text
    assert f'href="?session_id={SESSION}"' in card
    assert answer.status_code == 503
    assert answer.json()["error"] == {
        "code": "temporarily_unavailable",
        "message": unavailable_message(record),
    }
