"""The admin API under ``/api`` (SPEC §4), described by ``/api/openapi.json``.

Behind ``FULFILL_ADMIN_TOKEN`` (a bearer token, compared in constant time);
with no token configured the API is off and every path answers 404. It only
translates HTTP to calls of the engine, the store and reconcile.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from fulfill.engine import InvalidSessionId
from fulfill.errors import FulfillError
from fulfill.reconcile import ReconcileError, Summary, parse_since
from fulfill.records import FAILED, STATUSES, FulfillmentRecord, valid_session_id
from fulfill.service import Service

log = logging.getLogger("fulfill.admin")

Status = Literal[
    "pending",
    "awaiting_payment",
    "fulfilling",
    "fulfilled",
    "failed",
    "payment_failed",
    "expired",
    "not_applicable",
]
assert set(Status.__args__) == set(STATUSES)  # type: ignore[attr-defined]


# The schema says what a session ID looks like, so that clients (and the
# fuzzer) know "abc" is not one; ``checked`` enforces it with its own error
# code. JSON Schema patterns are ECMA regexes: "$" is the true end there.
SessionId = Annotated[
    str,
    Path(
        description="A Checkout Session ID: cs_test_… or cs_live_…, letters and digits",
        json_schema_extra={"pattern": "^cs_(test|live)_[A-Za-z0-9]{1,250}$"},
    ),
]


class ApiError(FulfillError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status_code = status


class Item(BaseModel):
    line_item_id: str
    price_id: str | None
    product_id: str | None
    description: str | None
    quantity: int
    amount_total: int | None
    currency: str | None
    action: str | None
    status: Literal["pending", "done", "failed"]
    result: dict[str, Any] | None
    error: str | None


class Record(BaseModel):
    """A session's fulfillment record (SPEC §5)."""

    session_id: str
    status: Status
    payment_status: str | None
    livemode: bool
    mode: str | None
    customer: dict[str, Any]
    shipping: dict[str, Any] | None
    amount_total: int | None
    currency: str | None
    client_reference_id: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: str | None
    created_at: str | None
    updated_at: str | None
    fulfilled_at: str | None
    triggers: list[str]
    items: list[Item]


class RecordPage(BaseModel):
    data: list[Record]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class ReconcileRequest(BaseModel):
    since: str = Field(default="72h", examples=["72h", "30m", "7d"])
    dry_run: bool = False


class ReconcileStarted(BaseModel):
    started: bool
    since: str
    dry_run: bool


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# Module level: FastAPI resolves the (string) annotations of dependencies in
# the module's globals, where a local of create_admin_app would not be found.
BEARER = HTTPBearer(auto_error=False, description="FULFILL_ADMIN_TOKEN")


class TokenGate:
    """Every request under ``/api``: 404 while the API is off, 401 without the token.

    A middleware, not a route dependency, so that it answers before routing,
    validation and body parsing: nobody without the token learns anything
    from a 400, nor whether a path exists, nor (with the API off) that there
    is an API at all. The schema at ``/api/openapi.json`` is behind it too.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        # Compared as SHA-256 digests: constant time, and the length of the
        # token does not show either.
        self.digest = hashlib.sha256(token.encode()).digest() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.digest is None:
            answer = _error(404, "not_found", "The admin API is off: set FULFILL_ADMIN_TOKEN")
        elif not hmac.compare_digest(_bearer(scope), self.digest):
            answer = _error(
                401,
                "unauthorized",
                "A valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            await self.app(scope, receive, send)
            return
        await answer(scope, receive, send)


def _bearer(scope: Scope) -> bytes:
    """The digest of the request's bearer token (of nothing when there is none).

    Headers stay bytes: a token with non-ASCII bytes is simply wrong.
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return hashlib.sha256(credentials.strip()).digest()
    return hashlib.sha256(b"\0no token").digest()


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}


def encode_cursor(record: FulfillmentRecord) -> str:
    created = record.created_at.isoformat() if record.created_at else ""
    raw = json.dumps([created, record.session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, session_id = json.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(created)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid_cursor", "The cursor is not one this API gave out") from None
    if moment.tzinfo is not None:
        # The database holds naive UTC; an aware time (a hand-made cursor)
        # compared with it is an error on PostgreSQL, not an empty page.
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment, str(session_id)


async def known_query_parameters(request: Request) -> None:
    """A query parameter no route takes is refused, not ignored.

    ``?stauts=failed`` answering every record would mislead an operator, and a
    script's typo would go unnoticed; a 400 names the parameters there are.
    """
    route = request.scope.get("route")
    known = (
        {field.alias for field in route.dependant.query_params}
        if isinstance(route, APIRoute)
        else set()
    )
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"Unknown query parameter {unknown[0]!r}; this endpoint takes "
            + (", ".join(sorted(known)) if known else "none"),
        )


def create_admin_app(service: Callable[[], Service], token: str | None) -> FastAPI:
    """The admin API; ``service()`` gives the running ``Service`` (built at startup)."""
    app = FastAPI(
        title="fulfill admin API",
        version="1",
        description="Fulfillment records, retries and reconcile sweeps. "
        "Authenticate with `Authorization: Bearer $FULFILL_ADMIN_TOKEN`.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        # No 307 from "/fulfillments/" to an absolute URL built from the Host header.
        redirect_slashes=False,
        dependencies=[Security(BEARER), Depends(known_query_parameters)],
    )
    # The token is checked by TokenGate before routing and before any body is
    # read; BEARER only declares the scheme in the schema.
    app.add_middleware(TokenGate, token=token)
    # Sweeps started here; the service cancels them at shutdown, before it
    # closes the store under them (a sweep resumes from its checkpoint).
    sweeps: set[asyncio.Task[Summary]] = set()
    app.state.sweeps = sweeps

    @app.exception_handler(FulfillError)
    async def fulfill_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FulfillError)
        return _error(exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            {
                "error": {
                    "code": "invalid_request",
                    "message": f"{where}: {first.get('msg', 'invalid')}",
                }
            },
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
        )

    def checked(session_id: str) -> str:
        if not valid_session_id(session_id):
            raise ApiError(400, InvalidSessionId.code, "That is not a Checkout Session ID")
        return session_id

    @app.get(
        "/fulfillments",
        response_model=RecordPage,
        responses=ERRORS,
        summary="List records, newest first",
    )
    async def list_fulfillments(
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> dict[str, Any]:
        after = decode_cursor(cursor) if cursor else None
        records = await service().store.list_records(status=status, limit=limit + 1, after=after)
        page, more = records[:limit], len(records) > limit
        return {
            "data": [r.as_json() for r in page],
            "next_cursor": encode_cursor(page[-1]) if more else None,
        }

    @app.get(
        "/fulfillments/{session_id}",
        response_model=Record,
        responses=ERRORS,
        summary="One record",
    )
    async def get_fulfillment(session_id: SessionId) -> dict[str, Any]:
        record = await service().store.get(checked(session_id))
        if record is None:
            raise ApiError(404, "not_found", "No record for this session")
        return record.as_json()

    @app.post(
        "/fulfillments/{session_id}/retry",
        response_model=Record,
        responses=ERRORS,
        summary="Retry a failed record now",
    )
    async def retry_fulfillment(session_id: SessionId) -> dict[str, Any]:
        engine = service().engine
        record = await service().store.get(checked(session_id))
        if record is None:
            raise ApiError(404, "not_found", "No record for this session")
        if record.status != FAILED:
            raise ApiError(
                409, "not_failed", f"Only failed records are retried; this one is {record.status}"
            )
        record = await engine.fulfill_checkout(session_id, trigger="admin", force=True, wait=10)
        return record.as_json()

    @app.post(
        "/reconcile",
        response_model=ReconcileStarted,
        status_code=202,
        responses=ERRORS,
        summary="Start a reconcile sweep in the background",
    )
    async def start_reconcile(body: ReconcileRequest | None = None) -> dict[str, Any]:
        # No body at all is a sweep with the defaults (`curl -X POST …/api/reconcile`).
        body = body or ReconcileRequest()
        try:
            since = parse_since(body.since)
        except ReconcileError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        if any(not task.done() for task in sweeps):
            raise ApiError(409, "reconcile_running", "A sweep started here is still running")
        task = asyncio.get_running_loop().create_task(
            service().reconciler.sweep(since, dry_run=body.dry_run)
        )
        sweeps.add(task)
        task.add_done_callback(_log_sweep)
        task.add_done_callback(sweeps.discard)
        return {"started": True, "since": body.since, "dry_run": body.dry_run}

    return app


def _log_sweep(task: asyncio.Task[Summary]) -> None:
    if task.cancelled():
        return
    if (exc := task.exception()) is not None:
        log.warning("reconcile sweep failed: %s", exc)
    else:
        log.info("reconcile sweep finished: %s", task.result().as_json())
