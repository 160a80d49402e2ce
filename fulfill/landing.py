"""The landing page the customer returns to: ``GET /checkout/complete?session_id=…``.

It runs ``fulfill_checkout`` (the customer may arrive before the webhook, or
the webhook may never come), waits up to ``FULFILL_LANDING_WAIT`` for a
fulfillment in flight, and renders the record. The session ID in the URL is
the customer's key to their order: the answer is never cached by a browser
or a proxy and never leaks the URL as a referrer (SPEC §10.5). The service
itself keeps the rendered pages of fulfilled orders (``KeptPages``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from cachetools import LRUCache
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fulfill.engine import LANDING, Engine, InvalidSessionId, ModeMismatch
from fulfill.guard import LookupGuard, TooManyLookups, client_address
from fulfill.pages import PRIVATE_HEADERS, render_problem, wants_json
from fulfill.presentation import (
    BADGES,
    SHIPMENT_STATES,
    STATES,
    TEMPLATES,
    item_badge,
    money,
    safe_url,
)
from fulfill.records import FAILED, FULFILLED, FULFILLING, PENDING, FulfillmentRecord
from fulfill.stripe_api import SessionNotFound, StripeApiError, StripeUnavailable

__all__ = [
    "PRIVATE_HEADERS",
    "KeptPages",
    "LandingPage",
    "money",
    "public_json",
    "render_record",
    "safe_url",
]

log = logging.getLogger("fulfill.landing")

# How often an open page of an order in progress asks for its JSON. Waiting for
# a bank (days, perhaps) it asks less often; either way the database answers,
# and Stripe is asked at most once per FULFILL_PAYMENT_CHECK_INTERVAL.
REFRESH_SECONDS = 3
REFRESH_AWAITING_PAYMENT_SECONDS = 10

REFRESHING = {"fulfilling", "pending", "awaiting_payment"}

# The query of the link Stripe sends the customer back with (session_id_of).
PLAIN_QUERY = re.compile(rb"session_id=([A-Za-z0-9_]*)")

# Rendered pages of fulfilled orders kept per process (KeptPages), by size: a
# page is about 15 KB, so some thousand pages; and how long one is kept at most.
KEPT_PAGE_BYTES = 16 * 1024 * 1024
KEPT_PAGE_SECONDS = 60.0

# States whose order is, or will be, emailed: the page says where to.
EMAILED = {"fulfilled", "fulfilling", "pending", "awaiting_payment", "failed", "payment_failed"}


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _delivered(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a done item delivers, as the page shows it: never the raw result.

    A ``python`` action's result is whatever the merchant's code returned, so
    only the shapes the page knows are read, each checked for its type (the
    same reading as ``landing.html`` and ``deliverables.html``).
    """
    shown: dict[str, Any] = {}
    if isinstance(message := result.get("message"), str):
        shown["message"] = message
    links = result.get("links")
    shown["links"] = [
        {"label": str(link.get("label") or "Open"), "url": url}
        for link in (links if isinstance(links, list) else [])
        if isinstance(link, Mapping) and (url := safe_url(link.get("url")))
    ]
    if keys := _strings(result.get("keys")):
        shown["licence_keys"] = keys
    if isinstance(expires := result.get("expires_at"), str):
        shown["expires_at"] = expires  # a download link's last moment
    access = result.get("access")
    if isinstance(access, Mapping) and safe_url(access.get("url")):
        shown["access"] = {
            key: access.get(key)
            for key in ("service", "url", "email", "starts_at", "ends_at", "lifetime")
        }
    shipment = result.get("shipment")
    if isinstance(shipment, Mapping) and isinstance(state := shipment.get("status"), str):
        words = SHIPMENT_STATES.get(state, state)
        shown["shipment"] = {"status": state, "state": words}
    return shown


def public_json(record: FulfillmentRecord) -> dict[str, Any]:
    """The customer's view of an order: what the landing page shows, as JSON.

    ``Accept: application/json`` on the landing page gets this, not the
    record: the session ID opens it, so it says no more than the page —
    no error text (a receiver's URL and answer), triggers, event IDs,
    attempts, leases, metadata or client reference. The whole record is for
    operators: the admin API and ``fulfill show --json``.
    """
    title, message = STATES.get(record.status, STATES["failed"])
    items = []
    for item in record.items:
        shown: dict[str, Any] = {
            "description": item.description,
            "quantity": item.quantity,
            "amount_total": item.amount_total,
            "currency": item.currency,
            "state": item_badge(item.status, record.status, item.action)[0],
            "delivered": item.status == "done",
        }
        if item.status == "done" and isinstance(item.result, Mapping):
            shown.update(_delivered(item.result))
        items.append(shown)
    shipping = record.shipping or None
    if shipping is not None:
        address = shipping.get("address") or {}
        shipping = {
            "name": shipping.get("name"),
            "address": {
                key: address.get(key)
                for key in ("line1", "line2", "postal_code", "city", "state", "country")
            },
        }
    return {
        "status": record.status,
        "state": BADGES.get(record.status, BADGES["failed"])[0],
        "title": title,
        "message": message,
        "reference": record.session_id[-12:],
        "customer": {
            "name": record.customer.get("name"),
            "email": record.customer.get("email"),
        },
        "items": items,
        "amount_total": record.amount_total,
        "currency": record.currency,
        "shipping": shipping,
    }


def session_id_of(request: Request) -> str:
    """The ``session_id`` of the query, as Starlette's ``query_params`` reads it.

    The link Stripe sends the customer back with, ``?session_id=cs_…`` and
    nothing else, has nothing to decode: it is read as it stands, without
    parsing the query into a multi-dict on every reload. Any other query is
    parsed.
    """
    plain = PLAIN_QUERY.fullmatch(request.scope.get("query_string", b""))
    if plain is not None:
        return plain.group(1).decode("ascii")
    return request.query_params.get("session_id", "")


def page_body(record: FulfillmentRecord, as_json: bool) -> bytes:
    """The landing page of ``record``, as HTML or as its public JSON, encoded.

    A function of the record alone: the template reads no clock, no request
    and no per-response value (a nonce), which is what lets ``KeptPages``
    serve it again.
    """
    if as_json:
        # As JSONResponse writes it.
        return json.dumps(
            public_json(record), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()
    title, message = STATES.get(record.status, STATES["failed"])
    return (
        TEMPLATES.get_template("landing.html")
        .render(
            record=record,
            title=title,
            message=message,
            badge=BADGES.get(record.status, BADGES["failed"]),
            item_badge=item_badge,
            refresh=(
                None
                if record.status not in REFRESHING
                else REFRESH_AWAITING_PAYMENT_SECONDS
                if record.status == "awaiting_payment"
                else REFRESH_SECONDS
            ),
            emailed=record.status in EMAILED,
        )
        .encode()
    )


def page_response(body: bytes, as_json: bool) -> Response:
    if as_json:
        return Response(body, media_type="application/json", headers=PRIVATE_HEADERS)
    return HTMLResponse(body, headers=PRIVATE_HEADERS)


def render_record(request: Request, record: FulfillmentRecord) -> Response:
    as_json = wants_json(request)
    return page_response(page_body(record, as_json), as_json)


def named_moments(record: FulfillmentRecord) -> list[float]:
    """The moments (unix seconds) a record's deliveries name: links' expiries, access windows."""
    moments = []
    for item in record.items:
        if item.status != "done" or not isinstance(item.result, Mapping):
            continue
        access = item.result.get("access")
        named = [item.result.get("expires_at")]
        if isinstance(access, Mapping):
            named += [access.get("starts_at"), access.get("ends_at")]
        for text in named:
            if isinstance(text, str):
                with contextlib.suppress(ValueError):
                    moment = datetime.fromisoformat(text)
                    moments.append(moment.replace(tzinfo=moment.tzinfo or UTC).timestamp())
    return moments


@dataclass(frozen=True)
class _Kept:
    record: FulfillmentRecord
    body: bytes
    until: float


class KeptPages:
    """Rendered pages of fulfilled orders, served again while they are what rendering would give.

    A customer reloading the page of a fulfilled order was answered by asking
    the engine and rendering the whole template each time: most of the
    visit's CPU (docs/benchmark.md). ``fulfilled`` is final, and the page is
    a function of the record and of whether the visit asks for JSON
    (``page_body``). So the page of a fulfilled record is kept with the
    record, and served again:

    - after the engine, to a visit that got that very record object back (the
      engine keeps fulfilled records, and hands the same object to every
      visit while it does);
    - before the engine (``reload``), when the kept record already has its
      landing visit recorded: the engine would have nothing to do but hand
      that record back.

    It is rendered again, all the same, once ``seconds`` have passed or a
    moment the record names (a download link's expiry, an access window's
    start or end) has come: the page says nothing of those today, and a page
    that one day does must not outlive them. Bounded by the bytes kept, the
    least recently served dropped first.
    """

    def __init__(
        self,
        *,
        max_bytes: int = KEPT_PAGE_BYTES,
        seconds: float = KEPT_PAGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self._pages: LRUCache[tuple[str, bool], _Kept] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda kept: len(kept.body)
        )

    def reload(self, session_id: str, as_json: bool) -> bytes | None:
        """The kept page of a fulfilled order whose landing visit is recorded; None if none holds.

        For such an order the engine has nothing left to do on a visit but
        hand back the record the page was rendered from: the page is answered
        without asking it.
        """
        kept = self._pages.get((session_id, as_json))
        if kept is None or LANDING not in kept.record.triggers or self.clock() >= kept.until:
            return None
        return kept.body

    def body(self, record: FulfillmentRecord, as_json: bool) -> bytes:
        """The page of ``record``: kept, or rendered (and kept when the record is fulfilled)."""
        if record.status != FULFILLED:
            return page_body(record, as_json)
        key = (record.session_id, as_json)
        now = self.clock()
        kept = self._pages.get(key)
        if kept is not None and kept.record is record and now < kept.until:
            return kept.body
        body = page_body(record, as_json)
        until = min([now + self.seconds, *(m for m in named_moments(record) if m > now)])
        with contextlib.suppress(ValueError):  # a page larger than the whole bound
            self._pages[key] = _Kept(record, body, until)
        return body


class LandingPage:
    """``GET /checkout/complete``."""

    def __init__(
        self,
        engine: Engine,
        wait: float,
        guard: LookupGuard | None = None,
        pages: KeptPages | None = None,
    ) -> None:
        self.engine = engine
        self.wait = wait
        self.guard = guard or LookupGuard()
        self.pages = pages or KeptPages()

    async def __call__(self, request: Request) -> Response:
        session_id = session_id_of(request)
        as_json = wants_json(request)
        kept = self.pages.reload(session_id, as_json)
        if kept is not None:
            return page_response(kept, as_json)
        client = client_address(request)
        if self.guard.known_missing(session_id):
            return _not_found(request)
        try:
            record = await self.engine.fulfill_checkout(
                session_id,
                trigger=LANDING,
                wait=self.wait,
                admit=lambda: self.guard.admit(client),
            )
        except TooManyLookups as exc:
            response = render_problem(
                request,
                429,
                exc.code,
                "Too many requests",
                # Only sessions the service has no record of are counted, so
                # nothing is known about this one's payment: claim nothing.
                "We are getting a lot of order lookups just now. Please wait a minute and "
                "try again.",
                retry=_again(session_id),
            )
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return response
        except InvalidSessionId:
            return render_problem(
                request,
                400,
                "invalid_session_id",
                "This link is not valid",
                "The order link is incomplete or damaged. Please use the link from your "
                "confirmation email, or contact the shop.",
            )
        except ModeMismatch:
            return render_problem(
                request,
                400,
                "livemode_mismatch",
                "This link is not valid",
                "This order does not belong to this shop's current mode.",
            )
        except SessionNotFound:
            self.guard.remember_missing(session_id)
            return _not_found(request)
        except StripeApiError as exc:
            # Stripe failing (a rate limit, an outage) says nothing new about an
            # order already recorded: show it as it stands (its page refreshes
            # by itself while it is not final) rather than an error.
            log.warning("landing page could not ask Stripe: %s", exc.message)
            known = await self._stored(session_id)
            if known is not None:
                return render_record(request, known)
            return _unavailable(request, exc, session_id, None)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("landing page unavailable: %s", type(exc).__name__)
            # The database may answer a read even when a write failed: say what
            # it knows about the payment, and nothing when it knows nothing.
            known = await self._stored(session_id)
            return _unavailable(request, exc, session_id, known)
        return page_response(self.pages.body(record, as_json), as_json)

    async def _stored(self, session_id: str) -> FulfillmentRecord | None:
        try:
            return await self.engine.store.get(session_id)
        except (SQLAlchemyError, OSError):
            return None


# The Retry-After of the temporary-error page: long enough not to add to a
# rate limit, short enough for a customer who waits.
UNAVAILABLE_RETRY_SECONDS = 10

# Recorded statuses that mean the session was paid (or had nothing to pay):
# only then may the temporary-error page speak of the payment.
PAID = frozenset({PENDING, FULFILLING, FAILED, FULFILLED})


def _again(session_id: str) -> str:
    """The "Try again" link: this same page, relative, so it works behind any host."""
    return "?" + urlencode({"session_id": session_id})


def unavailable_message(known: FulfillmentRecord | None) -> str:
    """What the 503 page says: only what the service knows about the payment.

    A record showing the session paid lets it say so; with no record (the
    database away, or Stripe unreachable for a session never seen) it cannot
    tell a paid order from an abandoned checkout, and claims nothing.
    """
    if known is not None and known.status in PAID:
        return (
            "We have received your payment, and your order will be completed. "
            "Its details could not be loaded just now: please try again in a moment."
        )
    return "Your order page could not be loaded just now. Please try again in a moment."


def _unavailable(
    request: Request, exc: Exception, session_id: str, known: FulfillmentRecord | None
) -> Response:
    retry_after = UNAVAILABLE_RETRY_SECONDS
    if isinstance(exc, StripeUnavailable) and exc.retry_after is not None:
        retry_after = max(retry_after, math.ceil(exc.retry_after))
    return render_problem(
        request,
        503,
        "temporarily_unavailable",
        "We could not load your order just now",
        unavailable_message(known),
        retry_after=retry_after,
        retry=_again(session_id),
    )


def _not_found(request: Request) -> Response:
    return render_problem(
        request,
        404,
        "session_not_found",
        "We could not find this order",
        "No order matches this link. Please use the link from your confirmation email, "
        "or contact the shop.",
    )
