"""The admin API under /api (SPEC §4): records, pagination, retry, reconcile, the token."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from fulfill.engine import utcnow
from fulfill.records import STATUSES
from tests.conftest import HOOK_METADATA, ServiceFactory, ServiceServer
from tests.servers import Receiver
from tests.synthetic import write_records
from tests.test_engine import wait_status

TOKEN = "admin-token-for-tests-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECORD_FIELDS = {
    "session_id",
    "status",
    "payment_status",
    "livemode",
    "mode",
    "customer",
    "shipping",
    "amount_total",
    "currency",
    "client_reference_id",
    "attempts",
    "last_error",
    "created_at",
    "updated_at",
    "fulfilled_at",
    "triggers",
    "items",
}


def api(service: ServiceServer, method: str, path: str, **options: Any) -> httpx.Response:
    """A request to the admin API with the token."""
    return service.client.request(method, f"/api{path}", headers=AUTH, **options)


def until(check: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout} s")


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert "Traceback" not in response.text
    return str(body["error"]["code"])


def walk(service: ServiceServer, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every record, page by page, following next_cursor."""
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = api(service, "GET", "/fulfillments", params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["data"]) <= limit
        records += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return records


# -- records in every status -----------------------------------------------------------


def test_records_in_every_status_are_listed_filtered_and_shown(
    service_factory: ServiceFactory, receiver: Receiver, database_url: str
) -> None:
    # One attempt only: the failed record stays failed while we look at it.
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN, FULFILL_MAX_ATTEMPTS=1)
    shop = service.shop
    sessions: dict[str, str] = {}

    sessions["fulfilled"] = service.paid_session()
    # An item no catalog entry matches fails the session.
    sessions["failed"] = service.paid_session([(shop.price("Not in the catalog"), 1)])
    hook_price = shop.price(product_metadata=HOOK_METADATA)
    delayed = shop.session([(hook_price, 1)])
    shop.complete(delayed.id, "delayed")
    sessions["awaiting_payment"] = delayed.id
    refused = shop.session([(hook_price, 1)])
    shop.complete(refused.id, "delayed")
    shop.post(f"/_emulator/sessions/{refused.id}/settle", {"result": "failed"})
    sessions["payment_failed"] = refused.id
    abandoned = shop.session([(hook_price, 1)])
    shop.stripe().v1.checkout.sessions.expire(abandoned.id)
    sessions["expired"] = abandoned.id
    card = shop.stripe().v1.checkout.sessions.create(
        {"mode": "setup", "currency": "eur", "success_url": "http://shop.test/saved"}
    )
    shop.complete(card.id)
    sessions["not_applicable"] = card.id
    # Recorded and not yet claimed, and claimed under a live lease: written as
    # the engine writes them, since neither lasts long enough to catch otherwise.
    pending, fulfilling = write_records(database_url, ["pending", "fulfilling"], start=utcnow())
    sessions["pending"], sessions["fulfilling"] = pending, fulfilling
    assert set(sessions) == set(STATUSES)

    for status in ("fulfilled", "failed", "awaiting_payment", "payment_failed", "not_applicable"):
        wait_status(service, sessions[status], status)
    until(
        lambda: api(service, "GET", f"/fulfillments/{abandoned.id}").status_code == 200,
        what="the expired record",
    )

    listing = api(service, "GET", "/fulfillments")
    assert listing.status_code == 200
    assert listing.json()["next_cursor"] is None
    by_id = {r["session_id"]: r for r in listing.json()["data"]}
    assert {sid: by_id[sid]["status"] for sid in sessions.values()} == {
        sid: status for status, sid in sessions.items()
    }
    created = [r["created_at"] for r in listing.json()["data"]]
    assert created == sorted(created, reverse=True)  # newest first

    for status, sid in sessions.items():
        only = api(service, "GET", "/fulfillments", params={"status": status}).json()["data"]
        assert [r["session_id"] for r in only] == [sid], status
        record = api(service, "GET", f"/fulfillments/{sid}").json()
        assert set(record) >= RECORD_FIELDS
        assert record["status"] == status

    failed = api(service, "GET", f"/fulfillments/{sessions['failed']}").json()
    assert "No catalog entry matches" in failed["last_error"]
    assert failed["items"][0]["status"] == "failed"
    fulfilled = api(service, "GET", f"/fulfillments/{sessions['fulfilled']}").json()
    assert fulfilled["items"][0]["status"] == "done"
    assert fulfilled["fulfilled_at"] is not None
    # The same shape as the landing page's JSON (SPEC §5).
    assert fulfilled == service.record(sessions["fulfilled"])
    assert api(service, "GET", f"/fulfillments/{sessions['pending']}").json()["items"][0][
        "status"
    ] == ("pending")


# -- the token --------------------------------------------------------------------------

REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/fulfillments", {}),
    ("GET", "/api/fulfillments?status=failed&limit=5", {}),
    ("GET", "/api/fulfillments/cs_test_a1B2c3", {}),
    ("GET", "/api/fulfillments/not-a-session", {}),
    ("POST", "/api/fulfillments/cs_test_a1B2c3/retry", {}),
    ("POST", "/api/reconcile", {"json": {"since": "1h"}}),
    # Malformed: still 401 (or 404 when off), never a 400 that tells it apart.
    ("POST", "/api/reconcile", {"content": b"{", "headers": {"Content-Type": "application/json"}}),
    ("GET", "/api/openapi.json", {}),
    ("GET", "/api/no-such-path", {}),
]


def test_without_the_token_every_request_is_refused(service_factory: ServiceFactory) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    wrong: list[dict[str, str] | dict[bytes, bytes]] = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"X-Admin-Token": TOKEN},
        # Not ASCII: compared as bytes, simply wrong (no 500 from a str compare).
        {b"Authorization": f"Bearer {TOKEN[:-1]}é".encode()},
        {b"Authorization": b"Bearer \xff\xfe" + TOKEN.encode()},
    ]
    for method, path, options in REQUESTS:
        for headers in wrong:
            extra = options.get("headers", {})
            answer = service.client.request(
                method,
                path,
                **{k: v for k, v in options.items() if k != "headers"},
                headers={**extra, **headers},
            )
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert error_code(answer) == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
    # No sweep started, nothing asked of Stripe.
    assert service.shop.get("/_emulator/requests")["total"] == 0
    # The scheme is case-insensitive (RFC 7235).
    ok = service.client.get("/api/fulfillments", headers={"Authorization": f"bearer {TOKEN}"})
    assert ok.status_code == 200


def test_the_api_is_off_without_a_configured_token(service_factory: ServiceFactory) -> None:
    service = service_factory()
    for method, path, options in REQUESTS:
        for headers in ({}, AUTH, {"Authorization": "Bearer"}):
            extra = options.get("headers", {})
            answer = service.client.request(
                method,
                path,
                **{k: v for k, v in options.items() if k != "headers"},
                headers={**extra, **headers},
            )
            assert answer.status_code == 404, (method, path, answer.text)
            assert error_code(answer) == "not_found"
    # The rest of the service is on.
    assert service.client.get("/healthz").status_code == 200


# -- pagination ----------------------------------------------------------------------


def test_pagination_over_a_thousand_records_has_no_gaps_nor_repeats(
    service_factory: ServiceFactory, database_url: str
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    statuses = ["awaiting_payment", "expired", "payment_failed", "pending", "fulfilling"]
    # Ten records per created_at: the cursor must break ties by session ID.
    # (From now on, so that the worker does not see the pending ones as stale.)
    ids = write_records(
        database_url,
        [statuses[n % len(statuses)] for n in range(1000)],
        start=utcnow(),
        per_timestamp=10,
    )
    status_of = {sid: statuses[n % len(statuses)] for n, sid in enumerate(ids)}

    seen = walk(service, limit=37)
    assert len(seen) == 1000
    assert Counter(r["session_id"] for r in seen) == Counter(ids)
    keys = [(r["created_at"], r["session_id"]) for r in seen]
    assert keys == sorted(keys, reverse=True)

    for status in ("expired", "fulfilling"):
        filtered = walk(service, limit=23, status=status)
        assert {r["status"] for r in filtered} == {status}
        expected = sorted(sid for sid, s in status_of.items() if s == status)
        assert sorted(r["session_id"] for r in filtered) == expected

    # A walk while newer records arrive still returns exactly the ones it started with.
    first = api(service, "GET", "/fulfillments", params={"limit": 100}).json()
    later = write_records(database_url, ["expired"] * 20, start=utcnow() + timedelta(hours=1))
    rest = walk_from(service, first["next_cursor"], limit=150)
    assert Counter(r["session_id"] for r in first["data"] + rest) == Counter(ids)
    assert not set(later) & {r["session_id"] for r in rest}
    assert len(walk(service, limit=200)) == 1020


def walk_from(service: ServiceServer, cursor: str, limit: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    next_cursor: str | None = cursor
    while next_cursor is not None:
        page = api(service, "GET", "/fulfillments", params={"limit": limit, "cursor": next_cursor})
        assert page.status_code == 200, page.text
        records += page.json()["data"]
        next_cursor = page.json()["next_cursor"]
    return records


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"cursor": "not a cursor!"}, "invalid_cursor"),
    ({"cursor": "e30"}, "invalid_cursor"),  # {}
    ({"cursor": _cursor([])}, "invalid_cursor"),
    ({"cursor": _cursor(None)}, "invalid_cursor"),
    ({"cursor": _cursor(["yesterday", "cs_test_a"])}, "invalid_cursor"),
    ({"cursor": _cursor([1, 2, 3])}, "invalid_cursor"),
    ({"cursor": "x" * 600}, "invalid_request"),
    ({"status": "shipped"}, "invalid_request"),
    ({"limit": 0}, "invalid_request"),
    ({"limit": 201}, "invalid_request"),
    ({"limit": "ten"}, "invalid_request"),
]


def test_bad_query_parameters_are_400(service_factory: ServiceFactory) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    for params, code in BAD_QUERIES:
        answer = api(service, "GET", "/fulfillments", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert error_code(answer) == code, params
    # A typo is refused, not ignored: ?stauts=failed must not answer every record.
    answer = api(service, "GET", "/fulfillments", params={"stauts": "failed"})
    assert answer.status_code == 400
    assert error_code(answer) == "unknown_parameter"
    assert "cursor, limit, status" in answer.json()["error"]["message"]
    answer = api(service, "GET", "/fulfillments/cs_test_abc123", params={"x": "1"})
    assert (answer.status_code, error_code(answer)) == (400, "unknown_parameter")


def test_a_cursor_with_a_timezone_is_read_as_utc(
    service_factory: ServiceFactory, database_url: str
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    ids = write_records(database_url, ["expired"] * 3, start=utcnow())
    newest_first = list(reversed(ids))
    created = api(service, "GET", f"/fulfillments/{newest_first[0]}").json()["created_at"]
    # "…Z" and "+00:00": the same moment as the naive UTC the database holds.
    cursor = _cursor([created.replace("Z", "+00:00"), newest_first[0]])
    page = api(service, "GET", "/fulfillments", params={"cursor": cursor})
    assert page.status_code == 200, page.text
    assert [r["session_id"] for r in page.json()["data"]] == newest_first[1:]


def test_session_ids_are_checked_before_anything_else(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    for bad in ("not-a-session", "cs_test_", "cs_test_abc%21", "cs_prod_abc", "pi_123"):
        for method, path in (
            ("GET", f"/fulfillments/{bad}"),
            ("POST", f"/fulfillments/{bad}/retry"),
        ):
            answer = api(service, method, path)
            assert answer.status_code == 400, (path, answer.text)
            assert error_code(answer) == "invalid_session_id"
    unknown = api(service, "GET", "/fulfillments/cs_test_NoSuchSession0")
    assert unknown.status_code == 404
    assert error_code(unknown) == "not_found"
    assert error_code(api(service, "POST", "/fulfillments/cs_test_NoSuchSession0/retry")) == (
        "not_found"
    )
    assert service.shop.get("/_emulator/requests")["total"] == 0


def test_a_path_no_route_takes_is_a_json_404_under_the_api_and_a_page_elsewhere(
    service_factory: ServiceFactory,
) -> None:
    """A line break in a segment passes no mount's pattern (``.`` stops at it): the
    answer must still be the API's JSON under /api, not the framework's text."""
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    for method, path in (
        ("POST", "/fulfillments/%29c%3F%0A/retry"),
        ("GET", "/fulfillments/a%0Ab"),
        ("GET", "/%0A"),
    ):
        answer = api(service, method, path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert error_code(answer) == "not_found"
    page = service.client.get("/no-such-page%0A", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert service.client.get("/no-such-page").status_code == 404


# -- retry ----------------------------------------------------------------------------


def test_retry_of_a_failed_record_fulfills_it_and_a_fulfilled_one_is_409(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    receiver.failures = 1000  # the receiver answers 500 …
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN, FULFILL_MAX_ATTEMPTS=1)
    session_id = service.paid_session()
    failed = until(
        lambda: (
            (r := api(service, "GET", f"/fulfillments/{session_id}")).status_code == 200
            and r.json()["status"] == "failed"
            and r.json()
        ),
        what="the failed record",
    )
    assert "500" in failed["last_error"]
    assert failed["next_attempt_at"] is None  # no more automatic attempts: an operator's turn

    receiver.failures = 0  # … until it recovers
    retried = api(service, "POST", f"/fulfillments/{session_id}/retry")
    assert retried.status_code == 200, retried.text
    record = retried.json()
    assert record["status"] == "fulfilled"
    assert record["last_error"] is None
    assert record["items"][0]["status"] == "done"
    assert "admin" in record["triggers"]
    keys = [r.headers["idempotency-key"] for r in receiver.received]
    assert len(keys) == 2
    assert len(set(keys)) == 1  # the same idempotency key both times

    again = api(service, "POST", f"/fulfillments/{session_id}/retry")
    assert again.status_code == 409
    assert error_code(again) == "not_failed"
    assert len(receiver.received) == 2


# -- reconcile --------------------------------------------------------------------------


def reconcile_results(service: ServiceServer) -> dict[str, float]:
    text = service.client.get("/metrics").text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fulfill_reconcile_sessions_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('result="')[1].split('"')[0]] = float(value)
    return found


def test_post_reconcile_starts_a_sweep_that_fulfills_a_session_whose_webhook_was_lost(
    service_factory: ServiceFactory, receiver: Receiver
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    service.shop.post("/_emulator/webhooks", {"mode": "off"})
    session_id = service.paid_session()
    assert api(service, "GET", f"/fulfillments/{session_id}").status_code == 404

    bad = api(service, "POST", "/reconcile", json={"since": "forever"})
    assert bad.status_code == 400
    assert error_code(bad) == "invalid_reconcile"

    dry = api(service, "POST", "/reconcile", json={"since": "1h", "dry_run": True})
    assert dry.status_code == 202, dry.text
    assert dry.json() == {"started": True, "since": "1h", "dry_run": True}
    until(lambda: reconcile_results(service).get("would_fulfill") == 1, what="the dry run")
    assert api(service, "GET", f"/fulfillments/{session_id}").status_code == 404
    assert receiver.received == []

    started = api(service, "POST", "/reconcile", json={"since": "1h"})
    assert started.status_code == 202, started.text
    record = until(
        lambda: (
            (r := api(service, "GET", f"/fulfillments/{session_id}")).status_code == 200
            and r.json()["status"] == "fulfilled"
            and r.json()
        ),
        what="the reconciled record",
    )
    assert record["triggers"] == ["reconcile"]
    assert len(receiver.received) == 1
    until(lambda: reconcile_results(service).get("fulfilled") == 1, what="the sweep's end")


# -- the schema ---------------------------------------------------------------------------


def test_the_openapi_schema_is_valid_and_lists_the_four_paths(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(FULFILL_ADMIN_TOKEN=TOKEN)
    answer = api(service, "GET", "/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    schema = answer.json()
    OPENAPI_31_VALIDATOR.validate(schema)
    assert set(schema["paths"]) == {
        "/fulfillments",
        "/fulfillments/{session_id}",
        "/fulfillments/{session_id}/retry",
        "/reconcile",
    }
    assert schema["servers"] == [{"url": "/api"}]
    assert set(schema["paths"]["/fulfillments"]) == {"get"}
    assert set(schema["paths"]["/fulfillments/{session_id}/retry"]) == {"post"}
    assert "202" in schema["paths"]["/reconcile"]["post"]["responses"]
    schemes = schema["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    listed = {p["name"] for p in schema["paths"]["/fulfillments"]["get"]["parameters"]}
    assert listed == {"status", "limit", "cursor"}
