"""The webhook action against real HTTP servers: what it sends, what it keeps, when it fails."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from fulfill.actions import ActionDeps, build_action
from fulfill.actions.base import ActionError
from fulfill.actions.webhook import WebhookAction, payload, sanitize_result, sign
from fulfill.catalog import CatalogEntry, ProductMatch
from tests.items import make_item
from tests.servers import Receiver, free_port, serve_in_thread

SECRET = "whsec_merchant_test"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@dataclass
class Answering:
    """A receiver whose answer each test chooses: status, body and content type."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    url: str = ""
    requests: list[bytes] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.requests.append(await request.body())
            return Response(self.body, status_code=self.status, media_type=self.content_type)

        async def moved(request: Request) -> Response:
            return RedirectResponse("/hook", status_code=307)

        async def big(request: Request) -> Response:
            # Valid JSON, but far more than any sensible result.
            return JSONResponse({"message": "kept?", "padding": "x" * 1_000_000})

        async def trickle(request: Request) -> Response:
            async def slowly() -> AsyncIterator[bytes]:
                for _ in range(600):  # a minute, a byte every 0.1 s
                    yield b" "
                    await asyncio.sleep(0.1)

            return StreamingResponse(slowly(), media_type="application/json")

        return Starlette(
            routes=[
                Route("/trickle", trickle, methods=["POST"]),
                Route("/hook", hook, methods=["POST"]),
                Route("/moved", moved, methods=["POST"]),
                Route("/big", big, methods=["POST"]),
            ]
        )

    def answer(self, data: Any, status: int = 200) -> None:
        self.status = status
        self.body = json.dumps(data).encode()


@pytest.fixture
def answering() -> Iterator[Answering]:
    server = Answering()
    with serve_in_thread(server.app()) as url:
        server.url = url
        yield server


def action(url: str, http: httpx.AsyncClient, timeout: float = 5.0, **extra: Any) -> WebhookAction:
    return WebhookAction({"url": url, "secret": SECRET, "timeout": timeout}, http, **extra)


# --- the request --------------------------------------------------------------


async def test_posts_the_item_signed_with_its_idempotency_key(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    shipping = {"name": "Jenny Rosen", "address": {"line1": "1 Main St", "country": "DE"}}
    item = make_item(shipping=shipping)
    before = int(time.time())

    result = await action(receiver.url, http).perform(item)

    (request,) = receiver.wait_for(1)
    assert request.headers["idempotency-key"] == f"{item.session_id}:{item.line_item_id}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "session_id": "cs_test_a1B2c3",
        "line_item_id": "li_1Pgc73B7WZ01zgkWx8kcmZPK",
        "price_id": "price_external",
        "product_id": "prod_external",
        "quantity": 2,
        "description": "Consulting hour",
        "customer": {"email": "jenny@example.com", "name": "Jenny Rosen"},
        "shipping": shipping,
        "metadata": {"order": "A-17"},
        "livemode": False,
    }
    # Verify the signature as a receiver would, independently of ``sign``.
    parts = dict(part.split("=", 1) for part in request.headers["fulfill-signature"].split(","))
    assert set(parts) == {"t", "v1"}
    assert before <= int(parts["t"]) <= int(time.time())
    expected = hmac.new(
        SECRET.encode(), parts["t"].encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    # The receiver's answer is kept without its unknown field "received".
    assert result == {"message": "Delivered by the test receiver"}


async def test_the_signature_uses_the_clock_and_sign(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    await action(receiver.url, http, clock=lambda: 1_790_000_000.7).perform(make_item())
    (request,) = receiver.wait_for(1)
    assert request.headers["fulfill-signature"] == sign(request.body, SECRET, 1_790_000_000)


def test_sign_is_stripe_style_hmac_sha256() -> None:
    body = b'{"session_id":"cs_test_1"}'
    header = sign(body, "secret", 1_700_000_000)
    digest = hmac.new(b"secret", b'1700000000.{"session_id":"cs_test_1"}', hashlib.sha256)
    assert header == f"t=1700000000,v1={digest.hexdigest()}"
    assert sign(body, "other", 1_700_000_000) != header
    assert sign(body + b" ", "secret", 1_700_000_000) != header


def test_payload_of_an_item_without_shipping() -> None:
    body = payload(make_item(shipping=None, livemode=True, quantity=5))
    assert body["shipping"] is None
    assert body["livemode"] is True
    assert body["quantity"] == 5


# --- the answer ---------------------------------------------------------------


async def test_a_2xx_json_answer_is_kept_sanitised(
    answering: Answering, http: httpx.AsyncClient
) -> None:
    answering.answer(
        {
            "message": "Your seat is booked.",
            "links": [
                {"label": "Join the workshop", "url": "https://merchant.example/join/42"},
                {"label": "Evil", "url": "javascript:alert(document.cookie)"},
                {"label": "Data", "url": "data:text/html,<script>alert(1)</script>"},
                {"label": "Padded", "url": " javascript:alert(1)"},
                {"label": "Relative", "url": "/join/42"},
                {"label": "x" * 500, "url": "http://merchant.example/long"},
                {"url": "https://merchant.example/unlabelled"},
                "not a link",
            ],
            "extra": {"kept": False},
        },
        status=201,
    )
    result = await action(f"{answering.url}/hook", http).perform(make_item())
    assert result == {
        "message": "Your seat is booked.",
        "links": [
            {"label": "Join the workshop", "url": "https://merchant.example/join/42"},
            {"label": "x" * 200, "url": "http://merchant.example/long"},
            {
                "label": "https://merchant.example/unlabelled",
                "url": "https://merchant.example/unlabelled",
            },
        ],
    }


async def test_a_2xx_answer_that_is_not_json_means_done_with_no_result(
    answering: Answering, http: httpx.AsyncClient
) -> None:
    answering.status, answering.body, answering.content_type = 200, b"OK", "text/plain"
    assert await action(f"{answering.url}/hook", http).perform(make_item()) == {}
    answering.status, answering.body = 204, b""
    assert await action(f"{answering.url}/hook", http).perform(make_item()) == {}
    assert len(answering.requests) == 2


async def test_a_2xx_answer_nested_too_deep_means_done_with_no_result(
    answering: Answering, http: httpx.AsyncClient
) -> None:
    answering.status, answering.body = 200, b"[" * 200_000
    assert await action(f"{answering.url}/hook", http).perform(make_item()) == {}


async def test_an_oversized_answer_is_not_read_whole_nor_kept(
    answering: Answering, http: httpx.AsyncClient
) -> None:
    assert await action(f"{answering.url}/big", http).perform(make_item()) == {}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (None, {}),
        (["message"], {}),
        ("done", {}),
        ({"message": 42, "links": "https://x.example"}, {}),
        ({"message": "   "}, {}),
        ({"message": "m" * 2500}, {"message": "m" * 2000}),
        (
            {"links": [{"label": "", "url": "https://x.example/"}]},
            {"links": [{"label": "https://x.example/", "url": "https://x.example/"}]},
        ),
        (
            {"links": [{"label": "A", "url": "HTTPS://X.EXAMPLE/a"}]},
            {"links": [{"label": "A", "url": "HTTPS://X.EXAMPLE/a"}]},
        ),
        ({"links": [{"label": "A", "url": "java\tscript:alert(1)"}]}, {}),
        ({"links": [{"label": "A", "url": "https://x.example/\nSet-Cookie: a=b"}]}, {}),
        ({"links": [{"label": "A", "url": "//x.example/"}]}, {}),
        ({"links": []}, {}),
    ],
)
def test_sanitize_result(answer: Any, expected: dict[str, Any]) -> None:
    assert sanitize_result(answer) == expected


def test_sanitize_result_keeps_at_most_twenty_links() -> None:
    links = [{"label": f"L{i}", "url": f"https://x.example/{i}"} for i in range(30)]
    kept = sanitize_result({"links": links})["links"]
    assert kept == links[:20]


# --- failures -----------------------------------------------------------------


async def test_a_500_is_a_failure_naming_the_status_and_body(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    receiver.failures = 1
    hook = action(receiver.url, http)
    with pytest.raises(ActionError) as info:
        await hook.perform(make_item())
    assert info.value.message == f'webhook {receiver.url} answered 500: \'{{"error":"try again"}}\''
    assert info.value.code == "action_failed"
    # The next attempt (the engine's retry) gets through.
    assert await hook.perform(make_item()) == {"message": "Delivered by the test receiver"}
    assert len(receiver.received) == 2


async def test_the_error_body_is_cut_at_200_characters(
    answering: Answering, http: httpx.AsyncClient
) -> None:
    body = "É" * 1000  # two bytes each in UTF-8: the cut is in characters
    answering.status, answering.body, answering.content_type = 422, body.encode(), "text/plain"
    with pytest.raises(ActionError) as info:
        await action(f"{answering.url}/hook", http).perform(make_item())
    assert info.value.message == f"webhook {answering.url}/hook answered 422: '{'É' * 200}'"


@pytest.mark.parametrize("status", [300, 404, 409, 429, 503])
async def test_any_other_status_is_a_failure(
    answering: Answering, http: httpx.AsyncClient, status: int
) -> None:
    answering.answer({"message": "ignored"}, status=status)
    with pytest.raises(ActionError, match=f"answered {status}"):
        await action(f"{answering.url}/hook", http).perform(make_item())


async def test_a_redirect_is_not_followed(answering: Answering, http: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(follow_redirects=True) as following:
        with pytest.raises(ActionError, match="answered 307"):
            await action(f"{answering.url}/moved", following).perform(make_item())
    assert answering.requests == []


async def test_no_answer_within_the_timeout_is_a_failure(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    receiver.delay = 60
    started = time.monotonic()
    with pytest.raises(ActionError) as info:
        await action(receiver.url, http, timeout=0.3).perform(make_item())
    assert info.value.message == f"webhook {receiver.url} timed out after 0.3 s"
    # Gave up at the timeout, not at the answer (a margin for a loaded machine).
    assert time.monotonic() - started < 10
    receiver.wait_for(1)


async def test_the_timeout_bounds_the_whole_exchange_not_each_read(
    answering: Answering, http: httpx.AsyncClient
) -> None:
    # Each byte comes well within the timeout, the whole answer (a minute) does not.
    started = time.monotonic()
    with pytest.raises(ActionError, match=r"timed out after 0\.5 s$"):
        await action(f"{answering.url}/trickle", http, timeout=0.5).perform(make_item())
    assert time.monotonic() - started < 10


async def test_the_default_timeout_is_named_in_whole_seconds(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    receiver.delay = 1.5
    hook = WebhookAction({"url": receiver.url, "secret": SECRET, "timeout": 1}, http)
    with pytest.raises(ActionError, match=r"timed out after 1 s$"):
        await hook.perform(make_item())


async def test_a_refused_connection_is_a_failure(http: httpx.AsyncClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(ActionError, match=rf"^webhook {url} failed: ConnectError: "):
        await action(url, http).perform(make_item())


# --- built from the catalog -------------------------------------------------


async def test_build_action_makes_a_webhook_from_its_entry(
    receiver: Receiver, http: httpx.AsyncClient
) -> None:
    options = {"url": receiver.url, "secret": SECRET, "timeout": 10}
    entry = CatalogEntry(5, "Hook", ProductMatch(price="price_h"), "webhook", options)
    built = build_action(entry, ActionDeps(http=http))
    assert built.name == "webhook"
    assert await built.perform(make_item()) == {"message": "Delivered by the test receiver"}
    assert len(receiver.wait_for(1)) == 1
