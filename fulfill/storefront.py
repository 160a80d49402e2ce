"""A small storefront: ``GET /shop`` lists the catalog, ``POST /checkout/sessions`` buys.

Only the catalog decides what is for sale: an entry matched by ``price`` or
``lookup_key`` is an offer, with its amount read from the API (once, then
cached for ``OFFERS_TTL``: the API's capacity belongs to fulfillment, not to
page views). A request can name only those prices; anything else is refused
before Stripe is asked.

Checkouts are limited per client address and in total (``fulfill.guard``):
beyond either, a 429 with ``Retry-After`` and nothing asked of Stripe.

After creating the session the customer is sent (303) to the ``url`` Stripe
returned, and only there: nothing in the request decides the redirect target,
so the endpoint cannot be used as an open redirect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from fulfill.catalog import Catalog, CatalogEntry, LineItemFacts
from fulfill.errors import FulfillError
from fulfill.guard import ClientLimits, TooManyCheckouts, client_address
from fulfill.pages import wants_json
from fulfill.presentation import TEMPLATES, safe_url
from fulfill.stripe_api import PriceInfo, StripeApi, StripeApiError

log = logging.getLogger("fulfill.storefront")

OFFERS_TTL = 300.0  # seconds the storefront trusts the prices it read
MAX_QUANTITY = 99
MAX_LINE_ITEMS = 100  # Checkout's limit in payment mode
MAX_BODY = 64 * 1024
MAX_PRICE_ID = 255

# What the customer gets, in a few words, by the action that delivers it.
DELIVERY: Mapping[str, str] = {
    "download": "Instant download",
    "access": "Instant access",
    "license": "Licence key by return",
    "shipment": "Shipped to your address",
    "webhook": "Delivered after payment",
    "python": "Delivered after payment",
}


class InvalidOrder(FulfillError):
    """The request does not describe something this shop sells."""

    status_code = 400
    code = "invalid_order"
    title = "We could not start this checkout"


class UnsupportedMediaType(InvalidOrder):
    status_code = 415
    code = "unsupported_media_type"


class NoCheckoutPage(StripeApiError):
    """Stripe created a session without an http(s) ``url`` to send the customer to."""

    code = "no_checkout_url"


@dataclass(frozen=True)
class Offer:
    """One price for sale and the catalog entry that will fulfill it."""

    price: PriceInfo
    entry: CatalogEntry

    @property
    def name(self) -> str:
        return self.price.product_name or self.entry.name

    @property
    def delivery(self) -> str:
        return DELIVERY.get(self.entry.action, "Delivered after payment")


def offers_from(catalog: Catalog, prices: Iterable[PriceInfo]) -> list[Offer]:
    """The prices the catalog sells, in catalog order, each with the entry that will match it.

    The entry is found the way fulfillment finds it (first match wins), so
    the storefront shows and the checkout collects what will really be done.
    Prices Checkout cannot sell in payment mode (recurring, inactive, custom
    amounts) are left out.
    """
    by_id = {p.price_id: p for p in prices}
    by_key = {p.lookup_key: p for p in prices if p.lookup_key}
    offers: dict[str, Offer] = {}
    for listed in catalog.products():
        price = None
        if listed.match.price is not None:
            price = by_id.get(listed.match.price)
        elif listed.match.lookup_key is not None:
            price = by_key.get(listed.match.lookup_key)
        if price is None or price.price_id in offers:
            continue
        if not (price.active and price.one_time and price.unit_amount is not None):
            continue
        entry = catalog.match(
            LineItemFacts(
                price_id=price.price_id,
                product_id=price.product_id,
                lookup_key=price.lookup_key,
                price_metadata=price.price_metadata,
                product_metadata=price.product_metadata,
            )
        )
        if entry is None:
            # Its entry has further conditions the price does not meet: a sale
            # would fail fulfillment, so it is not for sale.
            log.warning("catalog %s lists %s, but does not match it", listed.label, price.price_id)
            continue
        offers[price.price_id] = Offer(price, entry)
    return list(offers.values())


class Offers:
    """The catalog's offers, read from the API lazily and kept for ``ttl`` seconds."""

    def __init__(self, catalog: Catalog, stripe: StripeApi, *, ttl: float = OFFERS_TTL) -> None:
        self.catalog = catalog
        self.stripe = stripe
        self.ttl = ttl
        self._offers: list[Offer] | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> list[Offer]:
        """The offers; concurrent callers share one read of the API."""
        async with self._lock:
            if self._offers is None or time.monotonic() - self._read_at > self.ttl:
                entries = self.catalog.products()
                prices = await self.stripe.prices(
                    [e.match.price for e in entries if e.match.price],
                    [
                        e.match.lookup_key
                        for e in entries
                        if e.match.lookup_key and not e.match.price
                    ],
                )
                self._offers = offers_from(self.catalog, prices)
                self._read_at = time.monotonic()
            return self._offers


def _quantity(raw: Any) -> int:
    if isinstance(raw, bool):
        raise InvalidOrder("quantity must be a whole number")
    try:
        quantity = int(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise InvalidOrder("quantity must be a whole number") from None
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidOrder(f"quantity must be between 1 and {MAX_QUANTITY}")
    return quantity


def parse_order(prices: Sequence[Any], quantities: Sequence[Any]) -> list[tuple[str, int]]:
    """Pair repeated ``price`` and ``quantity`` fields into line items; ``InvalidOrder`` if not.

    Without any ``quantity`` every item is one; otherwise there is one per price.
    """
    if not prices:
        raise InvalidOrder("Choose at least one product (give a price).")
    if len(prices) > MAX_LINE_ITEMS:
        raise InvalidOrder(f"A checkout can have at most {MAX_LINE_ITEMS} items.")
    if quantities and len(quantities) != len(prices):
        raise InvalidOrder("Give one quantity for each price, or none.")
    order: list[tuple[str, int]] = []
    for index, price in enumerate(prices):
        if not isinstance(price, str) or not price or len(price) > MAX_PRICE_ID:
            raise InvalidOrder("price must be a price ID")
        order.append((price, _quantity(quantities[index]) if quantities else 1))
    return order


def order_from_json(body: Any) -> list[tuple[str, int]]:
    """``{"price": …, "quantity": …}`` (each a value or a list) or ``{"line_items": [{…}]}``."""
    if not isinstance(body, dict):
        raise InvalidOrder("The body must be a JSON object.")
    if "line_items" in body:
        items = body["line_items"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise InvalidOrder("line_items must be a list of {price, quantity} objects.")
        return parse_order([i.get("price") for i in items], [i.get("quantity", 1) for i in items])

    def as_list(value: Any) -> list[Any]:
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    return parse_order(as_list(body.get("price")), as_list(body.get("quantity")))


def order_from_form(form: FormData) -> list[tuple[str, int]]:
    return parse_order(form.getlist("price"), form.getlist("quantity"))


async def read_order(request: Request) -> list[tuple[str, int]]:
    """The line items a form or JSON body asks for."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise InvalidOrder("The request body is too large.")
    try:
        if content_type == "application/json":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    raise InvalidOrder("The request body is too large.")
            try:
                return order_from_json(json.loads(body))
            except ValueError:
                raise InvalidOrder("The body is not valid JSON.") from None
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            async with request.form(max_files=0, max_fields=2 * MAX_LINE_ITEMS + 10) as form:
                return order_from_form(form)
    except ClientDisconnect:
        raise InvalidOrder("The request was cut short.") from None
    raise UnsupportedMediaType("Send the order as a form or as JSON (application/json).")


class Storefront:
    """``GET /shop`` and ``POST /checkout/sessions``."""

    def __init__(
        self,
        catalog: Catalog,
        stripe: StripeApi,
        *,
        public_url: str,
        shipping_countries: Sequence[str],
        outbox_url: str | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        # The demo links its outbox of customer emails from the shop (fulfill/outbox.py).
        self.outbox_url = outbox_url
        self.offers = Offers(catalog, stripe)
        self.stripe = stripe
        self.public_url = public_url.rstrip("/")
        self.shipping_countries = tuple(shipping_countries)
        if limits is None:
            limits = ClientLimits(
                per_client_per_minute=10, total_per_second=5, refused=TooManyCheckouts
            )
        self.limits = limits

    async def page(self, request: Request) -> Response:
        offers = await self.offers.get()
        html = TEMPLATES.get_template("shop.html").render(
            offers=offers,
            cancelled=request.query_params.get("cancelled") == "1",
            outbox_url=self.outbox_url,
        )
        return HTMLResponse(html)

    async def checkout(self, request: Request) -> Response:
        order = await read_order(request)
        offers = {offer.price.price_id: offer for offer in await self.offers.get()}
        for price_id, _ in order:
            if price_id not in offers:
                raise InvalidOrder(f"{price_id} is not for sale in this shop.")
        chosen = [offers[price_id] for price_id, _ in order]
        if len({offer.price.currency for offer in chosen}) > 1:
            raise InvalidOrder("Products priced in different currencies cannot be bought together.")
        ships = any(offer.entry.action == "shipment" for offer in chosen)
        # Each checkout is a call on the account's Stripe rate limit, and anyone
        # may ask: counted here, once the order is one Stripe would be asked
        # for, so a refused order (400) costs the customer nothing, and a 429
        # costs Stripe nothing.
        await self.limits.admit(client_address(request))
        created = await self.stripe.create_session(
            order,
            success_url=f"{self.public_url}/checkout/complete?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{self.public_url}/shop?cancelled=1",
            shipping_countries=self.shipping_countries if ships else (),
        )
        # The only redirect target is the page Stripe made for this session.
        target = safe_url(created.url)
        if target is None:
            raise NoCheckoutPage(f"Stripe returned no checkout page for {created.session_id}")
        if wants_json(request):
            return JSONResponse(
                {"id": created.session_id, "url": target},
                status_code=303,
                headers={"Location": target},
            )
        return RedirectResponse(target, status_code=303)
