"""Hostile input at every way in: refused with the right status, nothing changed, no API call.

Each case asserts the exact answer, that every table of the database is as it
was (``Unchanged``), and, where the input names a session, that the Stripe
emulator's request log did not grow: a forged or malformed request must cost
neither a write nor a call of the account's API capacity (SPEC §10.4, §10.6).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfill.actions.download import DownloadClaim, make_token, signing_key
from fulfill.cli import main
from fulfill.records import valid_session_id
from fulfill.store.schema import metadata
from fulfill.webhooks import WebhookError, parse_event
from tests.conftest import (
    HOOK_SECRET,
    TEST_KEY,
    WEBHOOK_SECRET,
    EmulatorServer,
    ServiceFactory,
    ServiceServer,
    hook_catalog,
    table_rows,
)
from tests.servers import serve_in_thread
from tests.test_engine import wait_status

TABLES = [*sorted(table.name for table in metadata.sorted_tables), "alembic_version"]
OLD_SECRET = "whsec_rolled_out_but_still_honoured"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Refusals are decided before the database: SQLite is enough (conftest's adds PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'fulfill.db'}"


@dataclass
class Unchanged:
    """Every table and the emulator's API request count, to compare after hostile requests."""

    database_url: str
    shop: EmulatorServer
    tables: dict[str, list[tuple[Any, ...]]]
    api_calls: int

    @classmethod
    def capture(cls, service: ServiceServer) -> Unchanged:
        return cls.of(service.settings.database_url, service.shop)

    @classmethod
    def of(cls, database_url: str, shop: EmulatorServer) -> Unchanged:
        return cls(database_url, shop, _tables(database_url), _api_calls(shop))

    def check(self, *, api: bool = True) -> None:
        assert _tables(self.database_url) == self.tables, "a refused request changed the database"
        if api:
            assert _api_calls(self.shop) == self.api_calls, "a refused request cost an API call"


def _tables(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {name: table_rows(database_url, name) for name in TABLES}


def _api_calls(shop: EmulatorServer) -> int:
    return int(shop.get("/_emulator/requests")["total"])


def sign(payload: bytes, secret: str, timestamp: int, scheme: str = "v1") -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},{scheme}={digest.hexdigest()}"


def event_body(
    event_id: str,
    event_type: str = "customer.created",
    obj: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    """A Stripe event; by default of a type the endpoint records and ignores (no API call)."""
    body = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "livemode": False,
        "created": int(time.time()),
        "data": {"object": obj if obj is not None else {"object": "customer", "id": "cus_1"}},
        **extra,
    }
    return json.dumps(body).encode()


def completed(session_id: str, event_id: str = "evt_forged1", **extra: Any) -> bytes:
    return event_body(
        event_id,
        "checkout.session.completed",
        {"object": "checkout.session", "id": session_id},
        **extra,
    )


def post_webhook(
    service: ServiceServer, body: bytes | Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return service.client.post(
        "/webhooks/stripe",
        content=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


# IDs that must never reach the API. Each is refused by the pattern itself.
MALFORMED_IDS = [
    pytest.param("cs_test_../../v1/customers", id="traversal"),
    pytest.param("cs_test_abc/def", id="slash"),
    pytest.param("cs_test_abc?expand[]=customer", id="query"),
    pytest.param("cs_test_abc&session_id=cs_test_other", id="ampersand"),
    pytest.param("cs_test_abc#x", id="fragment"),
    pytest.param("cs_test_abc\n", id="trailing-newline"),
    pytest.param("cs_test_abc\r\nX-Injected: 1", id="crlf"),
    pytest.param("cs_test_abc\x00", id="nul"),
    pytest.param("cs_test_\u0430bc", id="cyrillic-a"),
    pytest.param("cs_test_\uff21\uff22\uff23", id="fullwidth"),
    pytest.param("cs_test_abc\u200b", id="zero-width-space"),
    pytest.param("cs_test_" + "a" * 10_000, id="10kb"),
    pytest.param("CS_TEST_abc", id="upper-prefix"),
    pytest.param(" cs_test_abc", id="leading-space"),
    pytest.param("cs_test_", id="empty-suffix"),
    pytest.param("", id="empty"),
]


# -- the pure checks ----------------------------------------------------------------


@pytest.mark.parametrize("session_id", MALFORMED_IDS)
def test_malformed_session_ids_are_not_valid(session_id: str) -> None:
    assert not valid_session_id(session_id)


def test_well_formed_session_ids_are_valid() -> None:
    assert valid_session_id("cs_test_a1B2c3")
    assert valid_session_id("cs_live_" + "Z" * 250)
    assert not valid_session_id("cs_live_" + "Z" * 251)


def test_an_event_id_with_a_trailing_newline_is_refused() -> None:
    body = b'{"object": "event", "id": "evt_1\\n", "type": "x", "livemode": false}'
    with pytest.raises(WebhookError, match="no valid id"):
        parse_event(body)


def test_deeply_nested_json_is_a_bad_event_not_a_crash() -> None:
    # Past the signature check only with a valid secret, but then it was a
    # RecursionError: a 500 that Stripe would retry for three days.
    with pytest.raises(WebhookError, match="nested too deeply"):
        parse_event(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(WebhookError, match="nested too deeply"):
        parse_event(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


# -- signatures on the real endpoint -----------------------------------------------------


def test_forged_signatures_are_400_and_change_nothing(service_factory: ServiceFactory) -> None:
    service = service_factory(
        STRIPE_WEBHOOK_SECRET=f"{OLD_SECRET},{WEBHOOK_SECRET}", webhooks=False
    )
    session_id = service.paid_session()
    payload = completed(session_id)
    now = int(time.time())
    good = sign(payload, WEBHOOK_SECRET, now)
    digest = good.split("v1=")[1]
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    outside = service.settings.webhook_tolerance + 60

    def signed_off_by(shift: int) -> Callable[[], dict[str, str]]:
        # Signed as it is sent, and a minute outside: one signed earlier could
        # drift back inside while a loaded machine sends the cases before it.
        return lambda: {"Stripe-Signature": sign(payload, WEBHOOK_SECRET, int(time.time()) + shift)}

    cases: dict[str, tuple[bytes, dict[str, str] | Callable[[], dict[str, str]]]] = {
        "missing header": (payload, {}),
        "empty header": (payload, {"Stripe-Signature": ""}),
        "no v1": (payload, {"Stripe-Signature": f"t={now}"}),
        "only v0": (payload, {"Stripe-Signature": sign(payload, WEBHOOK_SECRET, now, "v0")}),
        "v1 under another name": (payload, {"Stripe-Signature": f"t={now},v2={digest}"}),
        "no timestamp": (payload, {"Stripe-Signature": f"v1={digest}"}),
        "two timestamps": (payload, {"Stripe-Signature": f"t={now},t={now},v1={digest}"}),
        "upper-case hex": (payload, {"Stripe-Signature": f"t={now},v1={digest.upper()}"}),
        "wrong secret": (payload, {"Stripe-Signature": sign(payload, "whsec_not_ours", now)}),
        "the secret's name without whsec_": (
            payload,
            {"Stripe-Signature": sign(payload, WEBHOOK_SECRET.removeprefix("whsec_"), now)},
        ),
        "body changed by one bit": (bytes(flipped), {"Stripe-Signature": good}),
        "body with a byte more": (payload + b" ", {"Stripe-Signature": good}),
        "body a byte short": (payload[:-1], {"Stripe-Signature": good}),
        "signed for another timestamp": (
            payload,
            {"Stripe-Signature": f"t={now + 1},v1={digest}"},
        ),
        "outside the tolerance, past": (payload, signed_off_by(-outside)),
        "outside the tolerance, future": (payload, signed_off_by(outside)),
        "far future": (payload, {"Stripe-Signature": sign(payload, WEBHOOK_SECRET, 2**40)}),
        "timestamp zero": (payload, {"Stripe-Signature": sign(payload, WEBHOOK_SECRET, 0)}),
        "negative timestamp": (
            payload,
            {"Stripe-Signature": f"t=-{now},v1={digest}"},
        ),
        "10 KB header": (
            payload,
            {"Stripe-Signature": good + ",v1=" + "0" * 10_000},
        ),
        "10 KB of v1 entries around a valid one": (
            payload,
            {"Stripe-Signature": ",".join([good] + [f"v1={'0' * 64}"] * 150)},
        ),
    }
    before = Unchanged.capture(service)
    for name, (body, headers) in cases.items():
        answer = post_webhook(service, body, headers() if callable(headers) else headers)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["error"]["code"] == "invalid_signature", name
    # Non-ASCII bytes in the header (httpx sends bytes as they are).
    for raw in (good.encode() + b",v1=\xc3\xa9", b"t=\xd9\xa1\xd9\xa2,v1=" + digest.encode()):
        answer = service.client.post(
            "/webhooks/stripe",
            content=payload,
            headers=[(b"content-type", b"application/json"), (b"stripe-signature", raw)],
        )
        assert answer.status_code == 400, raw
    before.check()


def test_valid_signatures_by_any_configured_secret_and_among_others(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(
        STRIPE_WEBHOOK_SECRET=f"{OLD_SECRET},{WEBHOOK_SECRET}", webhooks=False
    )
    now = int(time.time())
    accepted: list[str] = []

    def accept(event_id: str, header: str, body: bytes | None = None) -> None:
        payload = body or event_body(event_id)
        answer = post_webhook(service, payload, {"Stripe-Signature": header})
        assert answer.status_code == 200, (event_id, answer.text)
        assert answer.json() == {"received": True}
        accepted.append(event_id)

    for index, secret in enumerate((OLD_SECRET, WEBHOOK_SECRET)):
        accept(f"evt_secret{index}", sign(event_body(f"evt_secret{index}"), secret, now))
    several = event_body("evt_several")
    valid = sign(several, WEBHOOK_SECRET, now).split(",")[1]
    wrong = sign(several, "whsec_not_ours", now).split(",")[1]
    header = f"t={now},v1={'0' * 64},{wrong},{valid},v0={'f' * 64}"
    accept("evt_several", header, several)
    # Inside the tolerance, both ways, signed as it is sent: a minute's margin
    # for a loaded machine between signing and checking.
    inside = service.settings.webhook_tolerance - 60
    for name, shift in (("evt_past", -inside), ("evt_future", inside)):
        accept(name, sign(event_body(name), WEBHOOK_SECRET, int(time.time()) + shift))
    recorded = table_rows(service.settings.database_url, "webhook_events")
    assert sorted(row[0] for row in recorded) == sorted(accepted)
    assert {row[5] for row in recorded} == {"ignored"}
    assert service.shop.get("/_emulator/requests")["total"] == 0


def test_a_valid_delivery_replayed_after_the_tolerance_is_refused(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(webhooks=False)
    session_id = service.paid_session()
    payload = completed(session_id)
    tolerance = service.settings.webhook_tolerance
    # Signed ten seconds inside the tolerance: accepted now (sent within ten
    # seconds, however loaded the machine), stale once they have passed.
    signed_at = int(time.time()) - tolerance + 10
    header = sign(payload, WEBHOOK_SECRET, signed_at)
    first = post_webhook(service, payload, {"Stripe-Signature": header})
    assert first.status_code == 200, first.text
    # The clock only moves on: past this moment the signature is stale for sure.
    time.sleep(max(0.0, signed_at + tolerance + 1 - time.time()))
    before = Unchanged.capture(service)
    replay = post_webhook(service, payload, {"Stripe-Signature": header})
    assert replay.status_code == 400
    assert replay.json()["error"]["code"] == "invalid_signature"
    # A captured delivery that never reached us is refused the same way.
    other = completed(session_id, "evt_captured")
    captured = sign(other, WEBHOOK_SECRET, int(time.time()) - tolerance - 60)
    assert post_webhook(service, other, {"Stripe-Signature": captured}).status_code == 400
    before.check()


# -- bodies -------------------------------------------------------------------------------

MIB = 1024 * 1024


def test_bad_bodies_are_refused_and_change_nothing(service_factory: ServiceFactory) -> None:
    service = service_factory(webhooks=False)
    session_id = service.paid_session()
    live_id = "cs_live_" + session_id.removeprefix("cs_test_")
    charge = {"object": "charge", "id": "ch_1"}
    padding = b" " * (MIB - 2)
    cases: dict[str, tuple[bytes, int, str]] = {
        "empty": (b"", 400, "invalid_webhook"),
        "whitespace": (b"   ", 400, "invalid_webhook"),
        "invalid JSON": (b'{"id": "evt_1",', 400, "invalid_webhook"),
        "not UTF-8": (b'{"id": "\xff\xfe"}', 400, "invalid_webhook"),
        "exactly 1 MiB, not JSON": (b"{" + padding + b"x", 400, "invalid_webhook"),
        "JSON null": (b"null", 400, "invalid_webhook"),
        "JSON list": (b"[]", 400, "invalid_webhook"),
        "JSON string": (b'"checkout.session.completed"', 400, "invalid_webhook"),
        "an object that is not an event": (b'{"object": "charge", "id": "ch_1"}', 400, ""),
        "an event without an id": (
            json.dumps({"object": "event", "type": "x", "livemode": False}).encode(),
            400,
            "invalid_webhook",
        ),
        "an event id with a newline": (event_body("evt_1\n"), 400, "invalid_webhook"),
        "an event id that is a path": (event_body("evt_../../x"), 400, "invalid_webhook"),
        "livemode a string": (event_body("evt_mode", livemode="false"), 400, "invalid_webhook"),
        "a live event for a test key": (
            completed(live_id, "evt_live1", livemode=True),
            400,
            "livemode_mismatch",
        ),
        "a live event naming a test session": (
            completed(session_id, "evt_live2", livemode=True),
            400,
            "livemode_mismatch",
        ),
        "completed, but data.object is a charge": (
            event_body("evt_charge", "checkout.session.completed", charge),
            400,
            "invalid_webhook",
        ),
        "completed, with data.object missing": (
            json.dumps(
                {
                    "id": "evt_nodata",
                    "object": "event",
                    "type": "checkout.session.completed",
                    "livemode": False,
                }
            ).encode(),
            400,
            "invalid_webhook",
        ),
        "expired, with a session ID that is a path": (
            event_body(
                "evt_path",
                "checkout.session.expired",
                {"object": "checkout.session", "id": "cs_test_../../v1/customers"},
            ),
            400,
            "invalid_webhook",
        ),
        "payment failed, with a session ID ending in a newline": (
            event_body(
                "evt_newline",
                "checkout.session.async_payment_failed",
                {"object": "checkout.session", "id": session_id + "\n"},
            ),
            400,
            "invalid_webhook",
        ),
        "nested ten thousand deep": (b"[" * 10_000 + b"]" * 10_000, 400, "invalid_webhook"),
    }
    before = Unchanged.capture(service)
    now = int(time.time())
    for name, (body, status, code) in cases.items():
        answer = post_webhook(service, body, {"Stripe-Signature": sign(body, WEBHOOK_SECRET, now)})
        assert answer.status_code == status, (name, answer.text)
        assert set(answer.json()["error"]) == {"code", "message"}, name
        if code:
            assert answer.json()["error"]["code"] == code, name
    before.check()


def test_a_body_over_1_mib_is_413_however_it_is_sent(service_factory: ServiceFactory) -> None:
    service = service_factory(webhooks=False)
    before = Unchanged.capture(service)
    body = b"{" + b" " * MIB  # 1 MiB + 1
    assert len(body) == MIB + 1
    header = {"Stripe-Signature": sign(body, WEBHOOK_SECRET, int(time.time()))}
    declared = post_webhook(service, body, header)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Any:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    # Chunked, with no Content-Length to refuse it by: counted as it arrives.
    streamed = post_webhook(service, chunks(), header)
    assert streamed.status_code == 413
    before.check()


# -- session IDs: landing page, admin API, command line ------------------------------------

ADMIN_TOKEN = "admin-token-for-security-tests-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIVE_ID = "cs_live_a1B2c3D4e5F6g7H8i9J0"


def test_the_landing_page_refuses_malformed_ids_before_any_api_call(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(webhooks=False)
    before = Unchanged.capture(service)
    for param in MALFORMED_IDS:
        (session_id,) = param.values
        url = f"/checkout/complete?session_id={quote(str(session_id), safe='')}"
        as_json = service.client.get(url, headers={"Accept": "application/json"})
        assert as_json.status_code == 400, param.id
        assert as_json.json()["error"]["code"] == "invalid_session_id", param.id
        page = service.client.get(url, headers={"Accept": "text/html"})
        assert page.status_code == 400, param.id
        assert "This link is not valid" in page.text
        assert page.headers["cache-control"] == "no-store"
    before.check()


def test_the_landing_page_refuses_raw_injection_and_live_ids_before_any_api_call(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(webhooks=False)
    before = Unchanged.capture(service)
    for raw in (
        "session_id=cs_test_abc%2Fdef",
        "session_id=cs_test_abc%2F..%2F..%2Fv1%2Fcustomers",
        "session_id=cs_test_abc%3Fexpand%5B%5D%3Dcustomer",
        "session_id=cs_test_abc%0A",
        "session_id=cs_test_abc%00",
        "session_id=cs_test_%D0%B0bc",  # a Cyrillic a
        "session_id=",
        "session_id",
        "",
        "session_id[]=cs_test_abc",
    ):
        answer = service.client.get(
            f"/checkout/complete?{raw}", headers={"Accept": "application/json"}
        )
        assert answer.status_code == 400, raw
        assert answer.json()["error"]["code"] == "invalid_session_id", raw
    live = service.landing(LIVE_ID)
    assert live.status_code == 400
    assert live.json()["error"]["code"] == "livemode_mismatch"
    before.check()


def test_the_admin_api_refuses_malformed_ids_before_any_api_call(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=ADMIN_TOKEN, webhooks=False)
    before = Unchanged.capture(service)
    # A "/" (even encoded: the path is decoded before routing) or a newline
    # leaves the route; anything else reaches the handler's check.
    leaves_the_route = {"traversal", "slash", "trailing-newline", "crlf", "empty"}
    for param in MALFORMED_IDS:
        (session_id,) = param.values
        path = f"/api/fulfillments/{quote(str(session_id), safe='')}"
        expected = (404, "") if param.id in leaves_the_route else (400, "invalid_session_id")
        for method, url in (("GET", path), ("POST", f"{path}/retry")):
            answer = service.client.request(method, url, headers=BEARER)
            assert answer.status_code == expected[0], (param.id, method, answer.text)
            if expected[1]:
                assert answer.json()["error"]["code"] == expected[1], (param.id, method)
    for raw in (
        "/api/fulfillments/cs_test_../../v1/customers",
        "/api/fulfillments/cs_test_abc%2F..%2F..%2Fv1%2Fcustomers/retry",
        "/api/fulfillments/..%2F..%2Fv1%2Fcustomers",
    ):
        assert service.client.get(raw, headers=BEARER).status_code == 404, raw
        assert service.client.post(raw, headers=BEARER).status_code == 404, raw
    # A live session with a test key: there is no such record, and nothing asks Stripe.
    for method, url in (
        ("GET", f"/api/fulfillments/{LIVE_ID}"),
        ("POST", f"/api/fulfillments/{LIVE_ID}/retry"),
    ):
        answer = service.client.request(method, url, headers=BEARER)
        assert answer.status_code == 404, (method, answer.text)
        assert answer.json()["error"]["code"] == "not_found"
    before.check()


def cli_env(tmp_path: Path, shop: EmulatorServer, database_url: str) -> dict[str, str]:
    catalog = tmp_path / "cli-catalog.toml"
    catalog.write_text(hook_catalog("http://127.0.0.1:9/hook"))
    return {
        "STRIPE_SECRET_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": shop.url,
        "FULFILL_DATABASE_URL": database_url,
        "FULFILL_CATALOG": str(catalog),
    }


def test_the_cli_refuses_malformed_ids_before_any_api_call(
    tmp_path: Path, emulator_server: EmulatorServer, database_url: str
) -> None:
    env = cli_env(tmp_path, emulator_server, database_url)
    assert CliRunner().invoke(main, ["migrate"], env=env).exit_code == 0
    before = Unchanged.of(database_url, emulator_server)
    # "" is left out: click reads an empty argument as a missing one (a usage error).
    for session_id in [p.values[0] for p in MALFORMED_IDS if p.values[0]] + [LIVE_ID]:
        run = CliRunner().invoke(main, ["run", str(session_id)], env=env)
        assert run.exit_code == 2, run.output
        assert "Traceback" not in run.output
        if session_id == LIVE_ID:
            assert "cannot be fulfilled with a test mode key" in run.output
        else:
            assert "not a Checkout Session ID" in run.output
        for command in ("show", "retry"):
            result = CliRunner().invoke(main, [command, str(session_id)], env=env)
            assert result.exit_code == 2, (command, result.output)
            assert "Traceback" not in result.output
    before.check()


# -- redirects ------------------------------------------------------------------------------

FORGED_HOST = {
    "Host": "evil.example",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Prefix": "//evil.example",
    "Forwarded": "host=evil.example;proto=https",
    "X-Original-URL": "https://evil.example/",
    "Referer": "https://evil.example/",
    "Origin": "https://evil.example",
}
EVIL_FIELDS = {
    "success_url": "https://evil.example/steal?session_id={CHECKOUT_SESSION_ID}",
    "cancel_url": "https://evil.example/",
    "return_url": "https://evil.example/",
    "url": "https://evil.example/",
    "redirect": "https://evil.example/",
    "redirect_to": "//evil.example",
    "next": "//evil.example/%2F..",
    "location": "https://evil.example/",
}


def test_slash_variants_are_not_redirected_to_the_host_header(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=ADMIN_TOKEN, webhooks=False)
    before = Unchanged.capture(service)
    for method, path in (
        ("POST", "/checkout/sessions/"),
        ("POST", "/webhooks/stripe/"),
        ("GET", "/shop/"),
        ("GET", "/checkout/complete/"),
        ("GET", "/api/fulfillments/"),
    ):
        answer = service.client.request(
            method,
            path,
            headers={**FORGED_HOST, **BEARER},
            data={"price": "price_x"} if method == "POST" else None,
            follow_redirects=False,
        )
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers, path
    home = service.client.get("/", headers=FORGED_HOST, follow_redirects=False)
    assert (home.status_code, home.headers["location"]) == (303, "/shop")
    before.check()


def shop_with(
    service_factory: ServiceFactory, shop: EmulatorServer, hook_url: str, **overrides: Any
) -> tuple[ServiceServer, str]:
    """A service whose shop sells one price (its product named and described with markup)."""
    client = shop.stripe()
    product = client.v1.products.create(
        {"name": XSS, "description": XSS, "metadata": {"fulfill": "hook", "xss": XSS}}
    )
    price = client.v1.prices.create(
        {"currency": "eur", "unit_amount": 1900, "product": product.id, "metadata": {"x": XSS}}
    )
    catalog = f"""
[[product]]
name = "{XSS_TOML}"
match = {{ price = "{price.id}" }}
action = "webhook"
url = "{hook_url}"
secret = "{HOOK_SECRET}"
"""
    return service_factory(catalog, **overrides), price.id


def created_sessions(service: ServiceServer) -> list[dict[str, Any]]:
    return list(service.shop.emulator.state.sessions.values())


def test_the_checkout_redirect_is_only_ever_the_url_stripe_returned(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, evil_receiver: str
) -> None:
    service, price = shop_with(service_factory, emulator_server, evil_receiver)
    public = service.settings.public_url
    form = service.client.post(
        "/checkout/sessions",
        data={"price": price, **EVIL_FIELDS},
        headers=FORGED_HOST,
        follow_redirects=False,
    )
    as_json = service.client.post(
        "/checkout/sessions",
        json={"price": price, "quantity": 1, **EVIL_FIELDS},
        headers=FORGED_HOST,
        follow_redirects=False,
    )
    sessions = created_sessions(service)
    assert len(sessions) == 2
    for answer, session in zip((form, as_json), sessions, strict=True):
        assert answer.status_code == 303
        assert answer.headers["location"] == session["url"]
        assert session["url"] == f"{emulator_server.url}/c/pay/{session['id']}"
        assert session["success_url"] == (
            f"{public}/checkout/complete?session_id={{CHECKOUT_SESSION_ID}}"
        )
        assert session["cancel_url"] == f"{public}/shop?cancelled=1"
        assert "evil" not in json.dumps(session)
    assert as_json.json() == {"id": sessions[1]["id"], "url": sessions[1]["url"]}


def test_refused_orders_redirect_nowhere_and_cost_no_session(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, evil_receiver: str
) -> None:
    service, price = shop_with(service_factory, emulator_server, evil_receiver)
    assert service.client.get("/shop").status_code == 200  # the offers, read once
    before = Unchanged.capture(service)
    for fields in (
        {"price": "price_not_sold_here", "success_url": "https://evil.example/"},
        {"price": XSS},
        {"price": price, "quantity": "0", "next": "https://evil.example/"},
        {"success_url": "https://evil.example/"},
    ):
        answer = service.client.post(
            "/checkout/sessions", data=fields, headers=FORGED_HOST, follow_redirects=False
        )
        assert answer.status_code == 400, fields
        assert "location" not in answer.headers
        assert "evil.example" not in answer.text
        assert XSS not in answer.text
    before.check()


# -- a flood of checkouts: each would spend the account's Stripe rate limit -----------------


def checkout(
    service: ServiceServer, price: str, headers: list[tuple[str, str]], *, as_json: bool
) -> httpx.Response:
    if as_json:
        return service.client.post(
            "/checkout/sessions", json={"price": price}, headers=headers, follow_redirects=False
        )
    return service.client.post(
        "/checkout/sessions",
        data={"price": price, "success_url": "https://evil.example/"},
        headers=headers,
        follow_redirects=False,
    )


def assert_throttled(answer: httpx.Response, *, as_json: bool) -> None:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text
    if as_json:
        assert answer.json()["error"]["code"] == "too_many_checkouts"
    else:
        assert "<h1" in answer.text
        assert "http-equiv" not in answer.text


def test_a_flood_of_checkouts_with_invented_addresses_is_refused_before_stripe(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, evil_receiver: str
) -> None:
    """No trusted proxy (the default): X-Forwarded-For is the visitor's own words, ignored."""
    service, price = shop_with(
        service_factory,
        emulator_server,
        evil_receiver,
        FULFILL_CHECKOUTS_PER_CLIENT=3,
        FULFILL_CHECKOUTS_PER_SECOND=1000,
    )
    assert service.client.get("/shop").status_code == 200  # the offers, read once
    forged = [[("X-Forwarded-For", f"198.51.100.{n}"), *FORGED_HOST.items()] for n in range(40)]
    for n in range(3):
        assert checkout(service, price, forged[n], as_json=bool(n % 2)).status_code == 303
    before = Unchanged.capture(service)
    for n in range(3, 40):
        assert_throttled(
            checkout(service, price, forged[n], as_json=bool(n % 2)), as_json=bool(n % 2)
        )
    before.check()
    assert len(created_sessions(service)) == 3


def test_behind_a_trusted_proxy_prepended_addresses_do_not_escape_the_checkout_limit(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, evil_receiver: str
) -> None:
    """The proxy (127.0.0.1) appends the visitor's real address after whatever it sent."""
    service, price = shop_with(
        service_factory,
        emulator_server,
        evil_receiver,
        FULFILL_TRUSTED_PROXIES="127.0.0.1",
        FULFILL_CHECKOUTS_PER_CLIENT=2,
        FULFILL_CHECKOUTS_PER_SECOND=1000,
    )
    assert service.client.get("/shop").status_code == 200
    real = "203.0.113.66"
    for _ in range(2):
        assert (
            checkout(service, price, [("X-Forwarded-For", real)], as_json=True).status_code == 303
        )
    before = Unchanged.capture(service)
    for n in range(20):
        spoofed = (
            # In one header, as nginx's $proxy_add_x_forwarded_for writes it...
            [("X-Forwarded-For", f"198.51.100.{n}, 127.0.0.1, {real}")]
            if n % 2
            # ...or the visitor's header and the proxy's as two lines.
            else [("X-Forwarded-For", f"198.51.100.{n}"), ("X-Forwarded-For", real)]
        )
        assert_throttled(
            checkout(service, price, spoofed, as_json=bool(n % 3)), as_json=bool(n % 3)
        )
    before.check()
    # Another visitor behind the same proxy is still served.
    other = [("X-Forwarded-For", "203.0.113.77")]
    assert checkout(service, price, other, as_json=True).status_code == 303
    assert len(created_sessions(service)) == 3


# -- markup in everything a page shows -------------------------------------------------------

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
NO_SLASH = XSS.replace("/", "")  # one path segment
XSS_TOML = XSS.replace('"', '\\"')
JS_URLS = (
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "//evil.example/x",
)


@pytest.fixture
def evil_receiver() -> Iterator[str]:
    """A merchant system whose answer is all markup and script links."""

    async def hook(request: Request) -> Response:
        await request.body()
        links = [{"label": XSS, "url": url} for url in JS_URLS]
        links.append({"label": XSS, "url": 'https://ok.example/x"onmouseover="alert(1)'})
        return JSONResponse({"message": XSS, "links": links})

    with serve_in_thread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        yield f"{url}/hook"


def assert_inert(html: str) -> None:
    """Nothing from the attacker is markup or a script link on the page."""
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    lowered = html.lower()
    for scheme in ("javascript:", "vbscript:", "data:text/html", "java\tscript:"):
        assert scheme not in lowered, scheme
    assert 'href="//evil' not in html
    assert '"onmouseover' not in html


def test_markup_from_stripe_the_catalog_and_receivers_is_inert_on_every_page(
    service_factory: ServiceFactory, emulator_server: EmulatorServer, evil_receiver: str
) -> None:
    service, price = shop_with(service_factory, emulator_server, evil_receiver)
    shop_page = service.client.get("/shop")
    assert shop_page.status_code == 200
    assert_inert(shop_page.text)
    assert shop_page.text.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") >= 2

    session = emulator_server.session(
        [(price, 1)],
        metadata={"note": XSS},
        client_reference_id="ref_1",
        shipping_address_collection={"allowed_countries": ["DE"]},
    )
    address = {"line1": XSS, "line2": XSS, "city": XSS, "postal_code": XSS, "country": "DE"}
    emulator_server.complete(
        session.id,
        email=f"{XSS}@example.com",
        name=XSS,
        shipping={"name": XSS, "address": address},
    )
    record = wait_status(service, session.id, "fulfilled")
    (item,) = record["items"]
    # Only the one http(s) link survives into the record, as the receiver wrote it.
    assert [link["url"] for link in item["result"]["links"]] == [
        'https://ok.example/x"onmouseover="alert(1)'
    ]
    page = service.landing(session.id, as_json=False)
    assert page.status_code == 200
    assert_inert(page.text)
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    # The item's name, the receiver's message and link label, the email, the address.
    assert page.text.count(escaped) >= 7
    assert 'href="https://ok.example/x&#34;onmouseover=&#34;alert(1)"' in page.text
    as_json = service.landing(session.id)
    assert as_json.headers["content-type"] == "application/json"

    # Problem pages and download error pages never echo what was asked.
    for url, status in (
        (f"/checkout/complete?session_id={quote(XSS)}", 400),
        (f"/checkout/complete?session_id=cs_test_{quote(XSS)}", 400),
        (f"/downloads/{quote(NO_SLASH, safe='')}", 403),
        (f"/downloads/{quote(NO_SLASH, safe='')}.{quote(NO_SLASH, safe='')}", 403),
    ):
        problem = service.client.get(url, headers={"Accept": "text/html"})
        assert problem.status_code == status, url
        assert problem.headers["content-type"].startswith("text/html")
        assert_inert(problem.text)
    # With a "/" it is no download path at all: the router's plain 404.
    unrouted = service.client.get(f"/downloads/{quote(XSS, safe='')}")
    assert unrouted.status_code == 404
    assert_inert(unrouted.text)
    order = service.client.post("/checkout/sessions", data={"price": XSS})
    assert order.status_code == 400
    assert_inert(order.text)


# -- the admin API's token ----------------------------------------------------------------

ADMIN_CALLS = (
    ("GET", "/api/fulfillments", None),
    ("GET", "/api/fulfillments/cs_test_a1B2c3", None),
    ("POST", "/api/fulfillments/cs_test_a1B2c3/retry", None),
    ("POST", "/api/reconcile", {"since": "72h"}),
    ("GET", "/api/openapi.json", None),
)


def test_the_admin_api_without_the_token_is_refused_and_changes_nothing(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=ADMIN_TOKEN, webhooks=False)
    before = Unchanged.capture(service)
    wrong: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Bearer {'x' * 10_000}"},
        {"X-Admin-Token": ADMIN_TOKEN},
        {"Cookie": f"token={ADMIN_TOKEN}"},
    ]
    for headers in wrong:
        for method, path, body in ADMIN_CALLS:
            answer = service.client.request(method, path, headers=headers, json=body)
            assert answer.status_code == 401, (headers, path, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
    in_query = service.client.get("/api/fulfillments", params={"token": ADMIN_TOKEN})
    assert in_query.status_code == 401
    non_ascii = service.client.get(
        "/api/fulfillments", headers=[(b"authorization", b"Bearer t\xc3\xb6ken")]
    )
    assert non_ascii.status_code == 401
    before.check()


def test_the_admin_api_is_absent_without_a_configured_token(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(webhooks=False)
    before = Unchanged.capture(service)
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer anything"}):
        for method, path, body in ADMIN_CALLS:
            answer = service.client.request(method, path, headers=headers, json=body)
            assert answer.status_code == 404, (headers, path, answer.text)
    before.check()


# -- download links -------------------------------------------------------------------------


def test_tampered_expired_and_foreign_download_links_are_refused(
    service_factory: ServiceFactory, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "book.pdf").write_bytes(b"%PDF-1.4 the book")
    catalog = """
[[product]]
name = "Book"
match = { metadata = { fulfill = "book" } }
action = "download"
file = "files/book.pdf"
link_ttl = "7d"
"""
    service = service_factory(catalog)
    price = service.shop.price("Book", product_metadata={"fulfill": "book"})
    session_id = service.paid_session([(price, 1)])
    record = wait_status(service, session_id, "fulfilled")
    url = record["items"][0]["result"]["links"][0]["url"]
    token = url.rsplit("/downloads/", 1)[1]
    assert service.client.get(f"/downloads/{token}").content == b"%PDF-1.4 the book"
    payload, signature = token.split(".")
    line_item = record["items"][0]["line_item_id"]
    key = signing_key(TEST_KEY)  # the service's: FULFILL_SIGNING_KEY is not set
    other = "cs_test_" + "b" * 58  # another customer's order
    claim = DownloadClaim(session_id, line_item, "book.pdf", int(time.time()) + 3600)
    before = Unchanged.capture(service)

    def refused(path_token: str, status: int) -> None:
        answer = service.client.get(f"/downloads/{path_token}")
        assert answer.status_code == status, (path_token[:40], answer.status_code)
        assert answer.headers["cache-control"] == "no-store"
        assert b"%PDF" not in answer.content

    flipped = payload[:5] + ("A" if payload[5] != "A" else "B") + payload[6:]
    refused(f"{flipped}.{signature}", 403)
    refused(f"{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}", 403)
    refused(f"{payload}.", 403)
    refused(f"{payload}.{signature}.{signature}", 403)
    refused(payload, 403)
    # Genuine but expired: 410; re-dated without the key: 403.
    expired = DownloadClaim(session_id, line_item, "book.pdf", int(time.time()) - 1)
    refused(make_token(key, expired), 410)
    later = make_token(key, DownloadClaim(session_id, line_item, "book.pdf", 2**40))
    refused(later.split(".")[0] + "." + signature, 403)
    # Another session's, or another item's, with this link's signature: 403.
    for foreign in (
        DownloadClaim(other, line_item, "book.pdf", claim.expires),
        DownloadClaim(session_id, "li_someone_elses", "book.pdf", claim.expires),
        DownloadClaim(session_id, line_item, "../../catalog.toml", claim.expires),
    ):
        refused(make_token(key, foreign).split(".")[0] + "." + signature, 403)
        refused(make_token(signing_key("not this service's key, 32+ chars"), foreign), 403)
        # Signed with the service's own key, but never granted: 404.
        refused(make_token(key, foreign), 404)
    before.check()


# -- what merchant code returns -------------------------------------------------------------


def odd_result(item: Any) -> dict[str, Any]:
    """A ``python`` action whose result is not the shape the page expects."""
    return {
        "message": {"not": "text"},
        "links": 5 if item.quantity == 1 else {"url": "javascript:alert(1)"},
    }


def test_a_python_action_result_of_any_shape_cannot_break_the_landing_page(
    service_factory: ServiceFactory,
) -> None:
    catalog = f"""
[[product]]
name = "Merchant code"
match = {{ metadata = {{ fulfill = "odd" }} }}
action = "python"
callable = "{__name__}:odd_result"
"""
    service = service_factory(catalog)
    price = service.shop.price("Odd", product_metadata={"fulfill": "odd"})
    for quantity in (1, 2):
        session_id = service.paid_session([(price, quantity)])
        wait_status(service, session_id, "fulfilled")
        page = service.landing(session_id, as_json=False)
        assert page.status_code == 200, page.text[:200]
        assert "your order is ready" in page.text
        assert_inert(page.text)
