"""The Stripe webhook endpoint (SPEC §7): verify, record once, trigger, acknowledge.

``verify`` is a pure function of the raw body, the header, the secrets and
the clock, as in stripe-python's ``WebhookSignature``; the raw body is
verified before anything parses it (a framework that parses first breaks
signatures: stripe-node#494). 2xx means the event is durably recorded in the
inbox; the work itself is carried on by the background worker if this
process dies before it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import stamina
from cachetools import LRUCache
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from fulfill import logs
from fulfill.engine import Engine, utcnow
from fulfill.errors import FulfillError
from fulfill.events import HANDLED, Event, process_event
from fulfill.metrics import Metrics
from fulfill.records import valid_session_id
from fulfill.store import Store
from fulfill.stripe_api import StripeUnavailable

log = logging.getLogger("fulfill.webhooks")

MAX_BODY = 1024 * 1024  # 1 MiB; Stripe's events are far smaller
MAX_SIGNATURE_HEADER = 4096
EVENT_ID_RE = re.compile(r"evt_[A-Za-z0-9_]{1,250}")  # fullmatch: "$" allows a final "\n"
# Stripe writes an event's "id" first. A redelivery's ID is read from the start
# of its (verified) body, and one this process saw recorded is answered without
# parsing the rest: json.loads of a 3 KB event was the largest part of a
# duplicate's CPU (docs/benchmark.md). A body that starts any other way is
# parsed whole, as is every event not seen recorded.
LEADING_EVENT_ID_RE = re.compile(
    rb'[ \t\n\r]*\{[ \t\n\r]*"id"[ \t\n\r]*:[ \t\n\r]*"(evt_[A-Za-z0-9_]{1,250})"'
)

# When Stripe fails (5xx, broken connections, 429s beyond what stripe_api
# retries itself), the process holding the event tries again after these
# pauses, or after Stripe's Retry-After when longer. Without them the event
# would wait for the worker's sweep of abandoned events, which leaves an event
# alone for FULFILL_INLINE_BUDGET + 30 s (its handler may still be at work),
# and the customer's order with it. Together they fit inside that grace.
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)
# How many recorded event IDs each process remembers (about 100 bytes each).
RECORDED_IDS = 50_000
# How long the handler's own task (not the request: that is answered after
# FULFILL_INLINE_BUDGET) follows the fulfillment it triggered, so that the
# event is marked processed when the work is done. It holds up nothing else;
# the background worker waits far less (worker.EVENT_WAIT).
HANDLER_WAIT = 3600.0
# The two acknowledgements, as JSONResponse wrote them, encoded once.
RECEIVED = b'{"received":true}'
DUPLICATE = b'{"received":true,"duplicate":true}'


class WebhookError(FulfillError):
    status_code = 400
    code = "invalid_webhook"


class SignatureError(WebhookError):
    code = "invalid_signature"


class PayloadTooLarge(WebhookError):
    status_code = 413
    code = "payload_too_large"


def verify(
    payload: bytes, header: str | None, secrets: Sequence[str], now: float, tolerance: int
) -> None:
    """Raise ``SignatureError`` unless a ``v1`` signature by one of ``secrets`` is valid.

    ``Stripe-Signature: t=…,v1=…[,v1=…][,v0=…]``: HMAC-SHA256 of
    ``"{t}.{payload}"``; only ``v1`` counts; ``t`` must be within ``tolerance``
    seconds of ``now`` in either direction (a future date is as suspect as a
    stale one). Each signature is compared with each secret's HMAC in constant
    time, so the timing shows nothing of how close a forged signature came.
    """
    if not header:
        raise SignatureError("Missing Stripe-Signature header")
    if len(header) > MAX_SIGNATURE_HEADER or not header.isascii():
        raise SignatureError("Malformed Stripe-Signature header")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not timestamps[0].isdigit() or len(timestamps[0]) > 12:
        raise SignatureError("Stripe-Signature has no valid timestamp")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1 signature")
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance:
        raise SignatureError("Stripe-Signature timestamp is outside the tolerance")
    signed = timestamps[0].encode() + b"." + payload
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        # compare_digest hides how much of a forged signature is right. It
        # stops at the first secret and signature that match, so the timing
        # may show which of them matched; only a valid signature learns that,
        # and the secrets' order (the configured list) is no secret.
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return
    raise SignatureError("No valid signature for this payload")


def leading_event_id(payload: bytes) -> str | None:
    """The event ID if the body opens with it (``{"id": "evt_…"``, as Stripe writes); else None.

    Only for a body whose signature was verified: it reads the first key and
    nothing else, so it is no check of the rest (``parse_event`` is).
    """
    found = LEADING_EVENT_ID_RE.match(payload)
    return found.group(1).decode("ascii") if found else None


def parse_event(payload: bytes) -> Event:
    """The parts of a Stripe event the endpoint needs; ``WebhookError`` if it is not one."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise WebhookError("The body is not JSON") from None
    except RecursionError:
        # "[[[[…" nested a few thousand deep: no event looks like that, and the
        # decoder's recursion limit must be a 400, not a 500 and a retry storm.
        raise WebhookError("The body is nested too deeply to be an event") from None
    if not isinstance(body, dict) or body.get("object") != "event":
        raise WebhookError("The body is not a Stripe event")
    event_id, event_type, livemode = body.get("id"), body.get("type"), body.get("livemode")
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise WebhookError("The event has no valid id")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 128:
        raise WebhookError("The event has no valid type")
    if not isinstance(livemode, bool):
        raise WebhookError("The event has no livemode")
    session_id: str | None = None
    if event_type in HANDLED:
        data = body.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict) or obj.get("object") != "checkout.session":
            raise WebhookError(f"A {event_type} event must carry a Checkout Session")
        session_id = obj.get("id")
        if not isinstance(session_id, str) or not valid_session_id(session_id):
            raise WebhookError("The event's Checkout Session ID is not valid")
    return Event(event_id, event_type, livemode, session_id)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("The body is larger than 1 MiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("The body is larger than 1 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookEndpoint:
    """``POST /webhooks/stripe``: holds the background tasks it starts."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        secrets: Sequence[str],
        *,
        tolerance: int,
        inline_budget: float,
        livemode: bool | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or engine.metrics
        self.store = store
        self.secrets = tuple(secrets)
        self.tolerance = tolerance
        self.inline_budget = inline_budget
        self.livemode = livemode
        self.tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        # The handlers waiting to try their event again: closing cancels these
        # waits (and only these), so that shutdown is not held up by them.
        self._pausing: set[asyncio.Task[Any]] = set()
        # Event IDs this process saw recorded in the inbox, with their types
        # (for the metrics), the least recently seen forgotten first. Stripe
        # redelivers, and storms of duplicates are answered from here, after
        # the signature check, without a database round trip nor a parse: an
        # inbox row is never removed, so "recorded once" stays true.
        self._recorded: LRUCache[str, str] = LRUCache(maxsize=RECORDED_IDS)

    async def __call__(self, request: Request) -> Response:
        try:
            payload = await read_body(request)
        except PayloadTooLarge as exc:
            self.metrics.webhook_events.labels("unknown", "invalid").inc()
            return _error(exc.status_code, exc.code, exc.message)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            verify(
                payload,
                request.headers.get("stripe-signature"),
                self.secrets,
                time.time(),
                self.tolerance,
            )
        except SignatureError as exc:
            self.metrics.webhook_events.labels("unknown", "refused").inc()
            log.warning("refused a webhook delivery: %s", exc.message)
            return _error(exc.status_code, exc.code, exc.message)
        # A signed body is Stripe's: it writes each key once, so the ID it opens
        # with is the event's. An event recorded here passed the livemode check.
        event_id = leading_event_id(payload)
        if event_id is not None and (event_type := self._recorded.get(event_id)) is not None:
            self.metrics.webhook_events.labels(event_type, "duplicate").inc()
            return _answer(DUPLICATE)
        try:
            event = parse_event(payload)
        except WebhookError as exc:
            self.metrics.webhook_events.labels("unknown", "invalid").inc()
            return _error(exc.status_code, exc.code, exc.message)
        with logs.bound(event_id=event.id, session_id=event.session_id):
            return await self._accept(event)

    async def _accept(self, event: Event) -> Response:
        count = self.metrics.webhook_events.labels
        if self.livemode is not None and event.livemode != self.livemode:
            log.warning(
                "refused event %s: livemode %s with a %s key",
                event.id,
                event.livemode,
                "live" if self.livemode else "test",
            )
            count(event.type, "refused").inc()
            return _error(400, "livemode_mismatch", "The event's mode does not match the API key")
        if event.id in self._recorded:
            count(event.type, "duplicate").inc()
            return _answer(DUPLICATE)
        handled = event.type in HANDLED
        try:
            new = await self.store.record_event(
                event.id,
                event.type,
                event.session_id,
                event.livemode,
                "received" if handled else "ignored",
                utcnow(),
            )
        except (SQLAlchemyError, OSError):
            log.exception("could not record event %s; answering 503 so Stripe redelivers", event.id)
            count(event.type, "unavailable").inc()
            return _error(503, "unavailable", "The event could not be recorded; retry later")
        self._remember(event)
        if not new:
            count(event.type, "duplicate").inc()
            return _answer(DUPLICATE)
        count(event.type, "accepted" if handled else "ignored").inc()
        if handled:
            task = asyncio.get_running_loop().create_task(self._process(event))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            # Fulfill inline for up to the budget so the customer's redirect
            # usually lands on a finished fulfillment; then acknowledge anyway.
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.inline_budget)
        return _answer(RECEIVED)

    def _remember(self, event: Event) -> None:
        # Interned: 50,000 IDs share a few type strings.
        self._recorded[event.id] = sys.intern(event.type)

    async def _process(self, event: Event) -> None:
        pauses = iter(RETRY_PAUSES)
        task = asyncio.current_task()
        assert task is not None

        def wait(exc: Exception) -> bool | float:
            # Only Stripe failing in a way that passes, and not while closing.
            if not isinstance(exc, StripeUnavailable) or self._closing.is_set():
                return False
            pause = next(pauses, None)
            if pause is None:
                return False
            delay = max(pause, exc.retry_after or 0.0)
            log.info("event %s: %s; trying again in %.1f s", event.id, exc.message, delay)
            self._pausing.add(task)
            return delay

        try:
            async for attempt in stamina.retry_context(on=wait, attempts=None, timeout=None):
                self._pausing.discard(task)
                if attempt.num > 1 and self._closing.is_set():
                    log.warning("event %s left for the worker: the service is closing", event.id)
                    return
                with attempt:
                    await process_event(
                        self.engine, self.store, event, f"webhook:{event.id}", wait=HANDLER_WAIT
                    )
        except asyncio.CancelledError:
            # Cancelled by close() in a pause: the event stays ``received``.
            if task not in self._pausing or not self._closing.is_set():
                raise
            log.warning("event %s left for the worker: the service is closing", event.id)
        except StripeUnavailable as exc:
            log.warning("event %s left for the worker: %s", event.id, exc.message)
        except Exception as exc:
            log.warning("event %s left for the worker: %s", event.id, exc)
        finally:
            self._pausing.discard(task)

    async def close(self, timeout: float = 5.0) -> None:
        """At shutdown: stop retrying, give the work in progress a moment.

        An event still unprocessed stays ``received``; the worker takes it up.
        """
        self._closing.set()
        for task in self._pausing:
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


def _answer(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
