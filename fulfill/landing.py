"""The landing page the customer returns to: ``GET /checkout/complete?session_id=…``.

It runs ``fulfill_checkout`` (the customer may arrive before the webhook, or
the webhook may never come), waits up to ``FULFILL_LANDING_WAIT`` for a
fulfillment in flight, and renders the record. The session ID in the URL is
the customer's key to their order: the answer is never cached and never
leaks the URL as a referrer (SPEC §10.5).
"""

from __future__ import annotations

import logging
import math

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from fulfill.engine import Engine, InvalidSessionId, ModeMismatch
from fulfill.guard import LookupGuard, TooManyLookups
from fulfill.pages import (
    PRIVATE_HEADERS,
    TEMPLATES,
    money,
    render_problem,
    safe_url,
    wants_json,
)
from fulfill.records import FulfillmentRecord
from fulfill.stripe_api import SessionNotFound, StripeApiError, StripeUnavailable

__all__ = ["PRIVATE_HEADERS", "LandingPage", "money", "render_record", "safe_url"]

log = logging.getLogger("fulfill.landing")

REFRESH_SECONDS = 3

# What each state tells the customer.
STATES: dict[str, tuple[str, str]] = {
    "fulfilled": ("Thank you — your order is ready", "Everything you bought is below."),
    "fulfilling": (
        "We are preparing your order",
        "This takes a few seconds. This page refreshes by itself.",
    ),
    "pending": (
        "We are preparing your order",
        "This takes a few seconds. This page refreshes by itself.",
    ),
    "awaiting_payment": (
        "Your payment is processing",
        "Your bank has not confirmed the payment yet. We will deliver your order as soon as it "
        "does; this page refreshes by itself, and you can close it safely.",
    ),
    "failed": (
        "Your payment went through — we are on it",
        "Something went wrong while we prepared your order. It is being retried automatically "
        "and our team has been told; you do not need to pay again.",
    ),
    "payment_failed": (
        "Your payment did not go through",
        "Your bank declined the payment, so nothing was charged or delivered. "
        "You can return to the shop and try another payment method.",
    ),
    "expired": (
        "This checkout has expired",
        "The checkout was not completed in time and nothing was charged. "
        "You can return to the shop and start again.",
    ),
    "not_applicable": (
        "Your payment details are saved",
        "This checkout saved a payment method for later; nothing was charged and there is "
        "nothing to deliver. If you expected an order, please contact the shop.",
    ),
    "open": (
        "Your checkout is not complete",
        "We have not received your payment for this order. If you meant to pay, "
        "return to the checkout page and complete it.",
    ),
}
REFRESHING = {"fulfilling", "pending", "awaiting_payment"}

# The badge of each state, in plain words, and its tone (ok, warn, bad, or neutral "").
BADGES: dict[str, tuple[str, str]] = {
    "fulfilled": ("Ready", "ok"),
    "fulfilling": ("Preparing", "warn"),
    "pending": ("Preparing", "warn"),
    "awaiting_payment": ("Payment processing", "warn"),
    "failed": ("Paid · delivery delayed", "warn"),
    "payment_failed": ("Payment failed", "bad"),
    "expired": ("Expired", "bad"),
    "not_applicable": ("Payment method saved", "ok"),
    "open": ("Not paid", ""),
}
# States whose order is, or will be, emailed: the page says where to.
EMAILED = {"fulfilled", "fulfilling", "pending", "awaiting_payment", "failed", "payment_failed"}


def item_badge(item_status: str, order_status: str, action: str | None = None) -> tuple[str, str]:
    """An item's badge: delivered, or what its order is waiting for."""
    if item_status == "done":
        # A shipment is done when it is ordered, not when it arrives.
        return ("Confirmed", "ok") if action == "shipment" else ("Delivered", "ok")
    if order_status in ("payment_failed", "expired", "open"):
        return ("Not delivered", "")
    if order_status == "awaiting_payment":
        return ("Awaiting payment", "warn")
    if item_status == "failed":
        return ("Retrying", "warn")
    return ("Preparing", "warn")


def render_record(request: Request, record: FulfillmentRecord) -> Response:
    if wants_json(request):
        return JSONResponse(record.as_json(), headers=PRIVATE_HEADERS)
    title, message = STATES.get(record.status, STATES["failed"])
    html = TEMPLATES.get_template("landing.html").render(
        record=record,
        title=title,
        message=message,
        badge=BADGES.get(record.status, BADGES["failed"]),
        item_badge=item_badge,
        refresh=REFRESH_SECONDS if record.status in REFRESHING else None,
        emailed=record.status in EMAILED,
    )
    return HTMLResponse(html, headers=PRIVATE_HEADERS)


class LandingPage:
    """``GET /checkout/complete``."""

    def __init__(self, engine: Engine, wait: float, guard: LookupGuard | None = None) -> None:
        self.engine = engine
        self.wait = wait
        self.guard = guard or LookupGuard()

    async def __call__(self, request: Request) -> Response:
        session_id = request.query_params.get("session_id", "")
        client = request.client.host if request.client else "unknown"
        if self.guard.known_missing(session_id):
            return _not_found(request)
        try:
            record = await self.engine.fulfill_checkout(
                session_id,
                trigger="landing",
                wait=self.wait,
                admit=lambda: self.guard.admit(client),
            )
        except TooManyLookups as exc:
            response = render_problem(
                request,
                429,
                exc.code,
                "Too many requests",
                "We are getting a lot of order lookups just now. Please wait a minute and "
                "refresh this page; your payment is safe.",
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
            return _unavailable(request, exc)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("landing page unavailable: %s", type(exc).__name__)
            return _unavailable(request, exc)
        return render_record(request, record)

    async def _stored(self, session_id: str) -> FulfillmentRecord | None:
        try:
            return await self.engine.store.get(session_id)
        except (SQLAlchemyError, OSError):
            return None


# How long the temporary-error page waits before it tries again by itself: long
# enough not to add to a rate limit, short enough for a customer who waits.
UNAVAILABLE_RETRY_SECONDS = 10


def _unavailable(request: Request, exc: Exception) -> Response:
    retry_after = UNAVAILABLE_RETRY_SECONDS
    if isinstance(exc, StripeUnavailable) and exc.retry_after is not None:
        retry_after = max(retry_after, math.ceil(exc.retry_after))
    return render_problem(
        request,
        503,
        "temporarily_unavailable",
        "We could not load your order just now",
        "Your payment is safe. This page tries again by itself in a few seconds; "
        "if it does not, please refresh this page in a minute.",
        retry_after=retry_after,
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
