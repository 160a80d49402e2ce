"""The one place that talks to Stripe, through the official library's async client.

A fulfillment costs one retrieve with ``line_items`` expanded (Stripe expands
only the first 10 items) plus one ``line_items.list`` per further page while
``has_more`` (https://docs.stripe.com/api/checkout/sessions/line_items).
Concurrent calls for the same session in one process share one retrieve.
"""

from __future__ import annotations

import asyncio
from typing import Any

import stripe

from fulfill.errors import FulfillError
from fulfill.records import SessionSnapshot

EXPAND = ["line_items", "line_items.data.price.product"]
PAGE = 100


class StripeApiError(FulfillError):
    """Stripe could not be asked; try again later."""

    status_code = 503
    code = "stripe_unavailable"


class SessionNotFound(FulfillError):
    status_code = 404
    code = "session_not_found"


class RateLimited(StripeApiError):
    code = "stripe_rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StripeApi:
    """Retrieves Checkout Sessions with all their line items."""

    def __init__(
        self, secret_key: str, api_base: str, *, max_network_retries: int = 2, timeout: float = 30
    ) -> None:
        self._http = stripe.HTTPXClient(timeout=timeout)
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            max_network_retries=max_network_retries,
            http_client=self._http,
        )
        self._inflight: dict[str, asyncio.Future[SessionSnapshot]] = {}

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def session(self, session_id: str) -> SessionSnapshot:
        """The session and every line item; one shared call per session at a time."""
        running = self._inflight.get(session_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[SessionSnapshot] = asyncio.get_running_loop().create_future()
        self._inflight[session_id] = future
        try:
            snapshot = await self._fetch(session_id)
        except BaseException as exc:
            future.set_exception(exc)
            # Mark the exception retrieved: waiters may be none.
            future.exception()
            raise
        else:
            future.set_result(snapshot)
            return snapshot
        finally:
            del self._inflight[session_id]

    async def _fetch(self, session_id: str) -> SessionSnapshot:
        try:
            session = await self.client.v1.checkout.sessions.retrieve_async(
                session_id, {"expand": EXPAND}
            )
            body = session.to_dict()
            first = body.get("line_items") or {"data": [], "has_more": False}
            items: list[dict[str, Any]] = list(first.get("data") or [])
            has_more = bool(first.get("has_more"))
            while has_more and items:
                page = await self.client.v1.checkout.sessions.line_items.list_async(
                    session_id,
                    {
                        "limit": PAGE,
                        "starting_after": items[-1]["id"],
                        "expand": ["data.price.product"],
                    },
                )
                items.extend(item.to_dict() for item in page.data)
                has_more = page.has_more
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing" or exc.http_status == 404:
                raise SessionNotFound(
                    f"No Checkout Session {session_id} in this Stripe account"
                ) from None
            raise StripeApiError(f"Stripe refused the request: {exc.user_message}") from None
        except stripe.RateLimitError as exc:
            retry_after = _retry_after(exc)
            raise RateLimited("Stripe rate limit reached", retry_after) from None
        except stripe.AuthenticationError:
            raise StripeApiError("Stripe refused the API key (STRIPE_SECRET_KEY)") from None
        except stripe.StripeError as exc:
            raise StripeApiError(
                f"Stripe is unavailable ({type(exc).__name__}, status {exc.http_status})"
            ) from None
        return SessionSnapshot.from_stripe(body, items)


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
