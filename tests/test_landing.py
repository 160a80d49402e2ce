"""The landing page: a clear page for every state, private headers, escaped content."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from fulfill import landing
from fulfill.engine import Engine
from fulfill.landing import (
    KeptPages,
    LandingPage,
    page_body,
    public_json,
    session_id_of,
    unavailable_message,
)
from fulfill.pages import wants_json
from fulfill.records import FulfillmentRecord, ItemRecord, iso
from tests.conftest import HOOK_METADATA, ServiceFactory, hook_catalog
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


def test_the_landing_json_is_the_customers_view_without_internals(
    service_factory: ServiceFactory,
) -> None:
    """A failed order's JSON says what the page says: no error, no receiver, no events."""

    async def hook(request: Request) -> Response:
        return PlainTextResponse(f"boom: database down behind {request.url}", status_code=500)

    with serve_in_thread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base:
        receiver_url = f"{base}/hook"
        service = service_factory(hook_catalog(receiver_url), FULFILL_MAX_ATTEMPTS=1)
        price = service.shop.price("Field handbook", 1900, product_metadata=HOOK_METADATA)
        session_id = service.paid_session(
            [(price, 1)],
            metadata={"crm_note": "vip-internal-7731"},
            client_reference_id="crm-ref-5521",
        )
        wait_status(service, session_id, "failed")
        # The landing page's polling may have failed it first: let the webhook land too.
        idle = service.shop.control.get(
            "/_emulator/webhooks/idle", params={"timeout": 60}, timeout=70
        )
        assert idle.json() == {"idle": True}
        record = service.record(session_id)
        # The internals are there for operators (the store, the admin API, fulfill show) …
        assert receiver_url in record["last_error"]
        assert any(t.startswith("webhook:evt_") for t in record["triggers"])
        answer = service.landing(session_id)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    public = answer.json()
    # … but the customer's JSON has none of them.
    text = answer.text
    for secret in (
        receiver_url,
        base,
        "boom",
        "answered 500",
        "evt_",
        "triggers",
        "last_error",
        "attempts",
        "vip-internal-7731",
        "crm-ref-5521",
        "crm_note",
        "line_item_id",
        "lease",
        "next_attempt",
        '"error"',
        "metadata",
    ):
        assert secret not in text, secret
    assert public["status"] == "failed"
    assert public["state"] == "Paid · delivery delayed"
    assert public["title"] == "Your payment went through — we are on it"
    assert public["reference"] == session_id[-12:]
    assert (public["amount_total"], public["currency"]) == (1900, "eur")
    (item,) = public["items"]
    assert item == {
        "description": "Field handbook",
        "quantity": 1,
        "amount_total": 1900,
        "currency": "eur",
        "state": "Retrying",
        "delivered": False,
    }
    assert set(public) == {
        "status",
        "state",
        "title",
        "message",
        "reference",
        "customer",
        "items",
        "amount_total",
        "currency",
        "shipping",
    }


def test_public_json_shows_what_each_item_delivers_as_the_page_does() -> None:
    record = FulfillmentRecord(
        session_id=SESSION,
        status="fulfilled",
        customer={"email": "jenny@example.com", "name": "Jenny Rosen"},
        shipping={
            "name": "Jenny Rosen",
            "address": {
                "line1": "1 Main St",
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
                "secret": "x",
            },
        },
        amount_total=5000,
        currency="eur",
        metadata={"internal": "no"},
        items=[
            ItemRecord(
                line_item_id="li_1",
                position=0,
                price_id="price_1",
                product_id="prod_1",
                description="E-book",
                quantity=1,
                amount_total=1000,
                currency="eur",
                action="download",
                status="done",
                error=None,
                result={
                    "links": [
                        {"label": "ebook.pdf", "url": "https://shop.test/downloads/t"},
                        {"label": "bad", "url": "javascript:alert(1)"},
                    ],
                    "expires_at": "2030-01-01T00:00:00Z",
                    "message": "Your download link works until 1 January.",
                    "internal": {"grant": 7},
                },
            ),
            ItemRecord(
                line_item_id="li_2",
                position=1,
                price_id=None,
                product_id=None,
                description="Licence",
                quantity=2,
                amount_total=2000,
                currency="eur",
                action="license",
                status="done",
                result={"keys": ["AAAA-BBBB", 3], "message": "Your 2 licence keys:"},
            ),
            ItemRecord(
                line_item_id="li_3",
                position=2,
                price_id=None,
                product_id=None,
                description="Poster",
                quantity=1,
                amount_total=2000,
                currency="eur",
                action="shipment",
                status="done",
                result={
                    "shipment": {"id": 4, "status": "pending", "address": {}},
                    "message": "We will ship Poster to Jenny Rosen.",
                },
            ),
        ],
    )
    public = public_json(record)
    assert public["customer"] == {"name": "Jenny Rosen", "email": "jenny@example.com"}
    assert public["shipping"]["address"]["city"] == "Berlin"
    assert "secret" not in public["shipping"]["address"]
    download, licence, poster = public["items"]
    assert download["links"] == [{"label": "ebook.pdf", "url": "https://shop.test/downloads/t"}]
    assert download["expires_at"] == "2030-01-01T00:00:00Z"
    assert download["state"] == "Delivered"
    assert "internal" not in download
    assert licence["licence_keys"] == ["AAAA-BBBB"]
    assert poster["shipment"] == {"status": "pending", "state": "Preparing your shipment"}
    assert poster["state"] == "Confirmed"
    assert "li_" not in repr(public)
    assert "internal" not in repr(public)


# -- pages of fulfilled orders, kept rendered ----------------------------------------------

START = 1_900_000_000.0


def fulfilled(link_expires: float) -> FulfillmentRecord:
    """A fulfilled order of one download whose link expires at ``link_expires``."""
    return FulfillmentRecord(
        session_id=SESSION,
        status="fulfilled",
        customer={"email": "jenny@example.com"},
        amount_total=1000,
        currency="eur",
        triggers=["webhook:evt_1", "landing"],
        items=[
            ItemRecord(
                line_item_id="li_1",
                position=0,
                price_id="price_1",
                product_id="prod_1",
                description="E-book",
                quantity=1,
                amount_total=1000,
                currency="eur",
                action="download",
                status="done",
                result={
                    "links": [{"label": "ebook.pdf", "url": "https://shop.test/downloads/t"}],
                    "expires_at": iso(datetime.fromtimestamp(link_expires, UTC)),
                    "message": "Your download link works until 17 March 2030, 17:46 UTC.",
                },
            )
        ],
    )


def test_a_kept_page_is_served_only_while_rendering_would_give_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered: list[tuple[FulfillmentRecord, bool]] = []

    def render(record: FulfillmentRecord, as_json: bool) -> bytes:
        rendered.append((record, as_json))
        return page_body(record, as_json)

    monkeypatch.setattr(landing, "page_body", render)
    now = START
    expires = START + 100  # before the second minute's end: the link's expiry comes first
    record = fulfilled(expires)
    pages = KeptPages(seconds=60, clock=lambda: now)

    def served(as_json: bool = False) -> bytes:
        body = pages.body(record, as_json)
        assert body == page_body(record, as_json), "a kept page differs from a fresh one"
        return body

    assert b"ebook.pdf" in served()
    assert served(as_json=True).startswith(b'{"status":"fulfilled"')
    assert len(rendered) == 2
    for _ in range(3):
        served()
        served(as_json=True)
    assert len(rendered) == 2
    # At most `seconds` after it was rendered.
    now = START + 59.9
    served()
    assert len(rendered) == 2
    now = START + 60
    served()
    assert rendered[-1] == (record, False)
    assert len(rendered) == 3
    # Never past a moment the record names: the download link's expiry.
    now = expires - 0.001
    served()
    assert len(rendered) == 3
    now = expires
    served()
    assert len(rendered) == 4
    now = expires + 1
    served()
    assert len(rendered) == 4
    # Another record of the session (the engine read it again): rendered for it.
    record = fulfilled(expires)
    served()
    assert len(rendered) == 5
    assert rendered[-1][0] is record
    # An order that may still change is rendered on every visit.
    record = FulfillmentRecord(session_id=SESSION, status="fulfilling")
    served()
    served()
    assert len(rendered) == 7


def test_kept_pages_are_bounded_by_size() -> None:
    pages = KeptPages(max_bytes=3 * len(page_body(fulfilled(START), False)), clock=lambda: START)
    records = [fulfilled(START + 3600) for _ in range(5)]
    for n, record in enumerate(records):
        record.session_id = f"cs_test_kept{n}" + "b" * 50
        pages.body(record, False)
    assert len(pages._pages) == 3
    assert pages._pages.currsize <= pages._pages.maxsize


def without_date(answer: httpx.Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in answer.headers.items() if name != "date"]


class _KeepingEngine:
    """Returns one record object for every visit, as the engine does for a fulfilled order."""

    def __init__(self, record: FulfillmentRecord) -> None:
        self.record = record
        self.calls = 0

    async def fulfill_checkout(self, session_id: str, **_: Any) -> FulfillmentRecord:
        assert session_id == self.record.session_id
        self.calls += 1
        return self.record


def test_a_kept_page_is_answered_with_the_same_headers_and_body() -> None:
    record = fulfilled(START + 3600)
    engine = _KeepingEngine(record)
    page_of = LandingPage(cast(Engine, engine), wait=0)

    async def landing_route(request: Request) -> Response:
        return await page_of(request)

    app = Starlette(routes=[Route("/checkout/complete", landing_route)])
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for accept in ("text/html", "application/json"):
            answers = [
                client.get(
                    "/checkout/complete", params={"session_id": SESSION}, headers={"Accept": accept}
                )
                for _ in range(3)
            ]
            kept = 1 if accept == "text/html" else 2
            assert len(page_of.pages._pages) == kept
            # The landing visit is recorded: reloads do not ask the engine.
            assert engine.calls == kept
            for answer in answers:
                assert answer.status_code == 200
                assert answer.content == answers[0].content
                assert without_date(answer) == without_date(answers[0])
                assert answer.headers["cache-control"] == "no-store"
                assert answer.headers["referrer-policy"] == "no-referrer"
            if accept == "text/html":
                assert answers[0].headers["content-type"] == "text/html; charset=utf-8"
                assert "ebook.pdf" in answers[0].text
            else:
                assert answers[0].headers["content-type"] == "application/json"
                assert answers[0].json() == public_json(record)


@pytest.mark.parametrize(
    "query",
    [
        "session_id=" + SESSION,
        "session_id=",
        "",
        "session_id=cs_test_a%2Fb",
        "session_id=cs+test",
        "session_id=a&session_id=b",
        "x=1&session_id=cs_test_1",
        "session_id=cs_test_1&x=1",
        "session_id=cs_test_1;x=1",
        "session_id=cs_test_\u0430bc",
        "Session_ID=cs_test_1",
        "session_id",
    ],
)
def test_the_session_id_is_read_as_starlette_reads_it(query: str) -> None:
    request = Request({"type": "http", "query_string": query.encode(), "headers": []})
    assert session_id_of(request) == request.query_params.get("session_id", "")


async def test_a_reload_asks_the_engine_unless_it_would_only_hand_back_the_kept_record() -> None:
    now = START
    pages = KeptPages(seconds=60, clock=lambda: now)
    record = fulfilled(START + 3600)
    engine = _KeepingEngine(record)
    page_of = LandingPage(cast(Engine, engine), wait=0, pages=pages)

    async def visit() -> bytes:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/checkout/complete",
            "query_string": f"session_id={SESSION}".encode(),
            "headers": [(b"accept", b"text/html")],
            "client": ("203.0.113.7", 4321),
        }
        answer = await page_of(Request(scope))
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        return bytes(answer.body)

    # Fulfilled, but its landing visit not recorded (the engine records it on
    # the first visit): the engine is asked each time; the page is rendered once.
    record.triggers.remove("landing")
    pages_before = await visit()
    assert await visit() == pages_before
    assert engine.calls == 2
    # Recorded (as the engine does on that first visit): the kept page is the
    # answer, until the minute is over.
    record.triggers.append("landing")
    for _ in range(3):
        assert await visit() == pages_before
    assert engine.calls == 2
    now = START + 60
    assert await visit() == pages_before
    assert engine.calls == 3
    assert await visit() == pages_before
    assert engine.calls == 3
    # The download link's expiry: the engine, and a new rendering, again.
    now = START + 3600
    assert await visit() == page_body(record, as_json=False)
    assert engine.calls == 4


@pytest.mark.parametrize(
    ("accept", "content_type", "json"),
    [
        ("text/html", "", False),
        ("text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8", "", False),
        ("application/json", "", True),
        ("application/json, text/plain", "", True),
        ("", "application/json", True),
        ("*/*", "Application/JSON; charset=utf-8", True),
        ("text/html", "application/json", False),
        ("*/*", "", False),
        ("", "", False),
    ],
)
def test_json_is_for_clients_that_ask_for_it_and_never_for_a_browser(
    accept: str, content_type: str, json: bool
) -> None:
    headers = [(b"accept", accept.encode()), (b"content-type", content_type.encode())]
    assert wants_json(Request({"type": "http", "headers": headers})) is json
