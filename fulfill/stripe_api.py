"""The one place that talks to Stripe, through the official library's async client.

A fulfillment costs one retrieve with ``line_items`` expanded (Stripe expands
only the first 10 items) plus one ``line_items.list`` per further page while
``has_more`` (https://docs.stripe.com/api/checkout/sessions/line_items).
Concurrent calls for the same session in one process share one retrieve.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import stamina
import stripe

from fulfill.catalog import Catalog
from fulfill.errors import FulfillError
from fulfill.metrics import Metrics
from fulfill.records import SessionSnapshot

EXPAND = ["line_items", "line_items.data.price.product"]
PAGE = 100
# prices.list takes at most 10 lookup_keys per call
# (https://docs.stripe.com/api/prices/list#list_prices-lookup_keys).
LOOKUP_KEYS_PER_CALL = 10
# stripe-python retries 5xx answers and broken connections by itself
# (max_network_retries) but never a 429. Stripe asks for rate-limited calls to
# be retried with backoff (https://docs.stripe.com/rate-limits): a few times
# here, honouring Retry-After, so that a short burst of 429s costs a moment
# rather than a failed fulfillment. A longer wait than this is left to the
# caller's own, durable retries (the webhook's event, the worker, reconcile).
RATE_LIMIT_RETRIES = 2
MAX_RATE_LIMIT_WAIT = 2.0


class StripeApiError(FulfillError):
    """Stripe could not be asked, or refused the request."""

    status_code = 503
    code = "stripe_unavailable"


class StripeUnavailable(StripeApiError):
    """A failure that passes: a 5xx, a broken connection or timeout, a rate limit.

    The same call, made again a little later, may well succeed; callers with
    durable work (the webhook's event, reconcile) retry it with backoff,
    waiting at least ``retry_after`` seconds when Stripe said so.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SessionNotFound(FulfillError):
    status_code = 404
    code = "session_not_found"


class RateLimited(StripeUnavailable):
    code = "stripe_rate_limited"


class CheckoutRefused(FulfillError):
    """Stripe refused to create a Checkout Session (an inactive price, a bad parameter)."""

    status_code = 400
    code = "checkout_refused"


@dataclass(frozen=True)
class PriceInfo:
    """A price as the storefront shows it and the catalog matches it."""

    price_id: str
    product_id: str
    product_name: str
    product_description: str | None
    unit_amount: int | None
    currency: str
    lookup_key: str | None
    active: bool
    one_time: bool
    price_metadata: dict[str, str] = field(default_factory=dict)
    product_metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_stripe(cls, price: dict[str, Any]) -> PriceInfo:
        """From a price with ``product`` expanded."""
        product = price.get("product") or {}
        if not isinstance(product, dict):
            product = {"id": product}
        return cls(
            price_id=str(price["id"]),
            product_id=str(product.get("id") or ""),
            product_name=str(product.get("name") or ""),
            product_description=product.get("description"),
            unit_amount=price.get("unit_amount"),
            currency=str(price.get("currency") or ""),
            lookup_key=price.get("lookup_key"),
            active=bool(price.get("active")) and bool(product.get("active", True)),
            one_time=price.get("type", "one_time") == "one_time",
            price_metadata={str(k): str(v) for k, v in (price.get("metadata") or {}).items()},
            product_metadata={str(k): str(v) for k, v in (product.get("metadata") or {}).items()},
        )


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    url: str | None


@dataclass(frozen=True)
class ListedSession:
    id: str
    created: int
    payment_status: str
    livemode: bool
    mode: str = "payment"


@dataclass(frozen=True)
class SessionPage:
    sessions: list[ListedSession]
    has_more: bool


T = TypeVar("T")

_ID_SEGMENT = re.compile(r"/(cs|li|price|prod|evt|pi)_[A-Za-z0-9_]+")


class MeteredHTTPClient(stripe.AIOHTTPClient):
    """The official client's aiohttp transport, counting calls by endpoint and status.

    aiohttp rather than httpx: a session retrieved with its line items cost
    0.70 ms of CPU through httpx and 0.23 ms through aiohttp (300 retrieves
    from the emulator, best of three), on the hot path of every fulfillment.
    """

    def __init__(self, metrics: Metrics, *, timeout: float) -> None:
        super().__init__(timeout=aiohttp.ClientTimeout(total=timeout))
        self._metrics = metrics

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        endpoint = f"{method.upper()} {_ID_SEGMENT.sub('/{id}', urlsplit(url).path)}"
        try:
            content, status, answer_headers = await self.request_stream_async(
                method, url, headers, post_data
            )
            # The body read is part of the call: a connection cut or a timeout
            # there is a connection error, retried as one (the library's own
            # request_async lets it through as it is).
            try:
                body = await content.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._handle_request_error(exc)
        except stripe.APIConnectionError:
            self._metrics.stripe_calls.labels(endpoint, "0").inc()
            raise
        self._metrics.stripe_calls.labels(endpoint, str(status)).inc()
        return body, status, answer_headers


class StripeApi:
    """Retrieves Checkout Sessions with all their line items; creates them for the storefront."""

    def __init__(
        self,
        secret_key: str,
        api_base: str,
        *,
        max_network_retries: int = 2,
        rate_limit_retries: int = RATE_LIMIT_RETRIES,
        timeout: float = 30,
        metrics: Metrics | None = None,
    ) -> None:
        self.rate_limit_retries = rate_limit_retries
        self._http = MeteredHTTPClient(metrics or Metrics(), timeout=timeout)
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

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again after a 429 as ``Retry-After`` asks, up to ``rate_limit_retries``."""

        def wait(exc: Exception) -> bool | float:
            # Only a 429: stripe-python has retried the rest already.
            if not isinstance(exc, stripe.RateLimitError):
                return False
            asked = _retry_after(exc)
            if asked is None:
                return True  # stamina's backoff: 0.5 s, then 1 s, jittered
            if asked > MAX_RATE_LIMIT_WAIT:
                return False  # the caller's durable retries wait that long, not this call
            # Never sooner than asked; spread out, so that calls refused
            # together do not all come back in the same instant.
            return asked * (1 + random.random() / 4)

        async for attempt in stamina.retry_context(
            on=wait,
            attempts=self.rate_limit_retries + 1,
            timeout=None,
            wait_initial=0.5,
            wait_jitter=0.125,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")

    async def _get_json(self, path: str, **params: Any) -> dict[str, Any]:
        """``GET path`` as plain JSON, through the official client's transport.

        The same authentication, retries, metrics and errors as its typed
        methods, without building a tree of StripeObjects only to turn it back
        into dicts: for a session with its line items that tree cost more CPU
        than the rest of the fulfillment's bookkeeping.
        """
        answer = await self.client.raw_request_async("get", path, **params)
        body = answer.data
        if not isinstance(body, dict):
            raise StripeApiError(f"Stripe answered GET {path} with something else than an object")
        return body

    async def _fetch(self, session_id: str) -> SessionSnapshot:
        path = f"/v1/checkout/sessions/{quote(session_id, safe='')}"
        try:
            body = await self._retrying(lambda: self._get_json(path, expand=EXPAND))
            first = body.get("line_items") or {"data": [], "has_more": False}
            items: list[dict[str, Any]] = list(first.get("data") or [])
            has_more = bool(first.get("has_more"))
            while has_more and items:
                page = await self._retrying(
                    functools.partial(
                        self._get_json,
                        f"{path}/line_items",
                        limit=PAGE,
                        starting_after=items[-1]["id"],
                        expand=["data.price.product"],
                    )
                )
                items.extend(page.get("data") or [])
                has_more = bool(page.get("has_more"))
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing" or exc.http_status == 404:
                raise SessionNotFound(
                    f"No Checkout Session {session_id} in this Stripe account"
                ) from None
            raise StripeApiError(f"Stripe refused the request: {exc.user_message}") from None
        except stripe.StripeError as exc:
            raise _api_error(exc) from None
        return SessionSnapshot.from_stripe(body, items)

    async def list_complete_sessions(
        self, created_gte: int, starting_after: str | None, limit: int = PAGE
    ) -> SessionPage:
        """One page of complete sessions created at or after ``created_gte``, newest first."""
        params: dict[str, Any] = {
            "status": "complete",
            "created": {"gte": created_gte},
            "limit": limit,
        }
        if starting_after:
            params["starting_after"] = starting_after
        try:
            page = await self._retrying(
                lambda: self.client.v1.checkout.sessions.list_async(params)  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise _api_error(exc) from None
        return SessionPage(
            sessions=[
                ListedSession(
                    id=str(s.id),
                    created=int(s.created),
                    payment_status=str(s.payment_status),
                    livemode=bool(s.livemode),
                    mode=str(getattr(s, "mode", None) or "payment"),
                )
                for s in page.data
            ],
            has_more=bool(page.has_more),
        )

    async def prices(self, price_ids: Sequence[str], lookup_keys: Sequence[str]) -> list[PriceInfo]:
        """The given prices and the prices of the given lookup keys, products expanded.

        A price ID that does not exist is left out (the storefront does not
        offer it, and a session for it would be refused anyway); any other
        failure raises.
        """

        async def one(price_id: str) -> PriceInfo | None:
            try:
                price = await self.client.v1.prices.retrieve_async(
                    price_id, {"expand": ["product"]}
                )
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404:
                    return None
                raise _api_error(exc) from None
            except stripe.StripeError as exc:
                raise _api_error(exc) from None
            return PriceInfo.from_stripe(price.to_dict())

        async def by_keys(keys: list[str]) -> list[PriceInfo]:
            try:
                page = await self.client.v1.prices.list_async(
                    {"lookup_keys": keys, "active": True, "expand": ["data.product"]}
                )
            except stripe.StripeError as exc:
                raise _api_error(exc) from None
            return [PriceInfo.from_stripe(price.to_dict()) for price in page.data]

        keys = list(dict.fromkeys(lookup_keys))
        chunks = [
            keys[i : i + LOOKUP_KEYS_PER_CALL] for i in range(0, len(keys), LOOKUP_KEYS_PER_CALL)
        ]
        found = await asyncio.gather(
            *(one(pid) for pid in dict.fromkeys(price_ids)), *(by_keys(c) for c in chunks)
        )
        prices: dict[str, PriceInfo] = {}
        for result in found:
            for info in result if isinstance(result, list) else [result]:
                if info is not None:
                    prices.setdefault(info.price_id, info)
        return list(prices.values())

    async def check_catalog(self, catalog: Catalog) -> list[dict[str, str]]:
        """Whether each price, product and lookup key the catalog names exists in this account."""
        findings: list[dict[str, str]] = []
        for entry in catalog.entries:
            match = entry.match
            checks: list[tuple[str, str, Callable[[], Awaitable[bool]]]] = []
            if match.price:
                checks.append(
                    ("price", match.price, functools.partial(self._exists_price, match.price))
                )
            if match.product:
                checks.append(
                    (
                        "product",
                        match.product,
                        functools.partial(self._exists_product, match.product),
                    )
                )
            if match.lookup_key:
                checks.append(
                    (
                        "lookup_key",
                        match.lookup_key,
                        functools.partial(self._exists_key, match.lookup_key),
                    )
                )
            for kind, value, exists in checks:
                try:
                    found = await exists()
                except StripeApiError as exc:
                    findings.append(
                        {"what": f"{entry.label} {kind}", "result": "error", "detail": exc.message}
                    )
                    continue
                findings.append(
                    {
                        "what": f"{entry.label} {kind}",
                        "result": "ok" if found else "missing",
                        "detail": value
                        if found
                        else f"{value} does not exist in this Stripe account",
                    }
                )
        return findings

    async def _exists_price(self, price_id: str) -> bool:
        return await self._exists(self.client.v1.prices.retrieve_async(price_id))

    async def _exists_product(self, product_id: str) -> bool:
        return await self._exists(self.client.v1.products.retrieve_async(product_id))

    async def _exists_key(self, lookup_key: str) -> bool:
        try:
            page = await self.client.v1.prices.list_async({"lookup_keys": [lookup_key]})
        except stripe.StripeError as exc:
            raise _api_error(exc) from None
        return bool(page.data)

    async def _exists(self, call: Awaitable[Any]) -> bool:
        try:
            await call
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return False
            raise _api_error(exc) from None
        except stripe.StripeError as exc:
            raise _api_error(exc) from None
        return True

    async def create_session(
        self,
        line_items: Sequence[tuple[str, int]],
        *,
        success_url: str,
        cancel_url: str,
        shipping_countries: Sequence[str] = (),
    ) -> CreatedSession:
        """A hosted Checkout Session in payment mode for ``(price, quantity)`` pairs."""
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {"price": price, "quantity": quantity} for price, quantity in line_items
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if shipping_countries:
            params["shipping_address_collection"] = {"allowed_countries": list(shipping_countries)}
        try:
            session = await self.client.v1.checkout.sessions.create_async(params)  # type: ignore[arg-type]
        except stripe.InvalidRequestError as exc:
            raise CheckoutRefused(
                f"Stripe refused the checkout: {exc.user_message or 'invalid request'}"
            ) from None
        except stripe.StripeError as exc:
            raise _api_error(exc) from None
        return CreatedSession(session_id=str(session.id), url=session.url)


def _api_error(exc: stripe.StripeError) -> StripeApiError:
    """The ``FulfillError`` for a failed call other than a missing session."""
    if isinstance(exc, stripe.RateLimitError):
        return RateLimited("Stripe rate limit reached", _retry_after(exc))
    if isinstance(exc, stripe.AuthenticationError):
        return StripeApiError("Stripe refused the API key (STRIPE_SECRET_KEY)")
    message = f"Stripe is unavailable ({type(exc).__name__}, status {exc.http_status})"
    if isinstance(exc, stripe.APIConnectionError) or (exc.http_status or 500) >= 500:
        # What stripe-python already retried max_network_retries times.
        return StripeUnavailable(message)
    return StripeApiError(message)


def _retry_after(exc: stripe.StripeError) -> float | None:
    headers = exc.headers or {}
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
