"""The ``/v1/…`` routes: the part of Stripe's API this product uses.

Each handler reads Stripe-style parameters, checks them as Stripe does
(unknown parameter → 400 ``parameter_unknown``; missing object → 404
``resource_missing``) and answers with objects from ``State``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fulfill.emulator import params as p
from fulfill.emulator.delivery import Deliveries
from fulfill.emulator.errors import StripeError, invalid, missing, missing_parameter
from fulfill.emulator.state import Obj, State, _public

Handler = Callable[[Request, p.Params], Awaitable[Any]]

SESSION_ID_RE = re.compile(r"^cs_(test|live)_[A-Za-z0-9]{1,200}$")
PAGINATION = ("limit", "starting_after", "ending_before", "expand")


def state_of(request: Request) -> State:
    state: State = request.app.state.emulator.state
    return state


async def read_params(request: Request) -> p.Params:
    raw = request.url.query
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        raw = f"{raw}&{body}" if raw else body
    return p.decode(raw)


def stripe_route(path: str, methods: list[str]) -> Callable[[Handler], Route]:
    """A route whose handler gets decoded parameters and returns a JSON-able object."""

    def wrap(handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            params = await read_params(request)
            result = await handler(request, params)
            return JSONResponse(result)

        return Route(path, endpoint, methods=methods, name=handler.__name__)

    return wrap


def paginate(
    items: Sequence[Obj], params: p.Params, url: str, *, render: Callable[[Obj], Obj] = _public
) -> Obj:
    """Stripe's cursor pagination over ``items`` (already in list order)."""
    limit = p.get_int(params, "limit", minimum=1, maximum=100) or 10
    after = p.get_str(params, "starting_after")
    before = p.get_str(params, "ending_before")
    if after and before:
        raise invalid(
            "ending_before", "You may only specify one of starting_after and ending_before."
        )
    ids = [item["id"] for item in items]
    if after:
        if after not in ids:
            raise missing("object", after, param="starting_after")
        start = ids.index(after) + 1
        page = list(items[start : start + limit])
        has_more = start + limit < len(items)
    elif before:
        if before not in ids:
            raise missing("object", before, param="ending_before")
        end = ids.index(before)
        start = max(0, end - limit)
        page = list(items[start:end])
        has_more = start > 0
    else:
        page = list(items[:limit])
        has_more = limit < len(items)
    return {"object": "list", "data": [render(i) for i in page], "has_more": has_more, "url": url}


def created_filter(params: p.Params) -> Callable[[Obj], bool]:
    """``created=123`` or ``created[gte|gt|lte|lt]=…``."""
    raw = params.get("created")
    if raw is None or raw == "":
        return lambda obj: True
    if isinstance(raw, str):
        exact = p.get_int(params, "created")
        return lambda obj: bool(obj["created"] == exact)
    if not isinstance(raw, dict):
        raise invalid("created", "Invalid created: must be an integer or a hash", kind="hash")
    p.check_keys(raw, ("gt", "gte", "lt", "lte"), prefix="created")
    bounds = {k: p.get_int(raw, k, "created") for k in raw}

    def keep(obj: Obj) -> bool:
        c = obj["created"]
        return not (
            (bounds.get("gt") is not None and not c > bounds["gt"])
            or (bounds.get("gte") is not None and not c >= bounds["gte"])
            or (bounds.get("lt") is not None and not c < bounds["lt"])
            or (bounds.get("lte") is not None and not c <= bounds["lte"])
        )

    return keep


def newest_first(objects: Any) -> list[Obj]:
    return sorted(objects, key=lambda o: (o["created"], o["_seq"]), reverse=True)


def expansions(params: p.Params, allowed: Sequence[str]) -> list[str]:
    asked = [str(e) for e in p.get_list(params, "expand")]
    for index, path in enumerate(asked):
        if path not in allowed:
            raise invalid(f"expand[{index}]", f"This property cannot be expanded ({path}).")
    return asked


def api_version(request: Request) -> str | None:
    return request.headers.get("stripe-version")


# -- products -----------------------------------------------------------------


@stripe_route("/v1/products", ["POST"])
async def create_product(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, ("id", "name", "description", "metadata", "active", "expand"))
    product = state_of(request).create_product(
        p.get_str(params, "name", required=True) or "",
        description=p.get_str(params, "description"),
        metadata=p.get_metadata(params),
        product_id=p.get_str(params, "id"),
        active=p.get_bool(params, "active") is not False,
    )
    return _public(product)


@stripe_route("/v1/products", ["GET"])
async def list_products(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, (*PAGINATION, "active", "created"))
    keep = created_filter(params)
    active = p.get_bool(params, "active")
    items = [
        o
        for o in newest_first(state_of(request).products.values())
        if keep(o) and (active is None or o["active"] == active)
    ]
    return paginate(items, params, "/v1/products")


@stripe_route("/v1/products/{id}", ["GET"])
async def retrieve_product(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, ("expand",))
    product = state_of(request).products.get(request.path_params["id"])
    if product is None:
        raise missing("product", request.path_params["id"])
    return _public(product)


# -- prices -------------------------------------------------------------------

PRICE_KEYS = (
    "currency",
    "unit_amount",
    "product",
    "product_data",
    "lookup_key",
    "metadata",
    "nickname",
    "active",
    "expand",
    "tax_behavior",
    "recurring",
)
INTERVALS = ("day", "week", "month", "year")


def _recurring(params: p.Params, prefix: str) -> Obj | None:
    """A price's ``recurring[interval]`` and ``recurring[interval_count]``, if given."""
    raw = p.get_hash(params, "recurring", prefix)
    if raw is None:
        return None
    where = p.sub(prefix, "recurring")
    p.check_keys(raw, ("interval", "interval_count", "usage_type"), where)
    return {
        "interval": p.get_choice(raw, "interval", INTERVALS, where, required=True),
        "interval_count": p.get_int(raw, "interval_count", where, minimum=1, maximum=365),
    }


def _price_from(state: State, params: p.Params, prefix: str = "") -> Obj:
    """Create a price from ``prices.create`` params or a line item's ``price_data``."""
    currency = p.get_str(params, "currency", prefix, required=True) or ""
    if not re.fullmatch(r"[a-zA-Z]{3}", currency):
        raise invalid(p.sub(prefix, "currency"), f"Invalid currency: {currency}")
    amount = p.get_int(params, "unit_amount", prefix, required=True, minimum=0)
    recurring = _recurring(params, prefix)
    product_id = p.get_str(params, "product", prefix)
    product_data = p.get_hash(params, "product_data", prefix)
    if product_id and product_data:
        raise invalid(
            p.sub(prefix, "product_data"), "Specify only one of product and product_data."
        )
    if product_data is not None:
        data_prefix = p.sub(prefix, "product_data")
        p.check_keys(product_data, ("name", "description", "metadata", "images"), data_prefix)
        product_id = state.create_product(
            p.get_str(product_data, "name", data_prefix, required=True) or "",
            description=p.get_str(product_data, "description", data_prefix),
            metadata=p.get_metadata(product_data, prefix=data_prefix),
        )["id"]
    if not product_id:
        raise missing_parameter(p.sub(prefix, "product"))
    return state.create_price(
        currency=currency,
        unit_amount=amount or 0,
        product=product_id,
        lookup_key=p.get_str(params, "lookup_key", prefix),
        metadata=p.get_metadata(params, prefix=prefix),
        nickname=p.get_str(params, "nickname", prefix),
        active=p.get_bool(params, "active", prefix) is not False,
        product_param=p.sub(prefix, "product"),
        recurring=recurring,
    )


@stripe_route("/v1/prices", ["POST"])
async def create_price(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, PRICE_KEYS)
    return _public(_price_from(state_of(request), params))


@stripe_route("/v1/prices", ["GET"])
async def list_prices(request: Request, params: p.Params) -> Obj:
    p.check_keys(
        params, (*PAGINATION, "active", "created", "product", "lookup_keys", "currency", "expand")
    )
    state = state_of(request)
    keep = created_filter(params)
    product = p.get_str(params, "product")
    active = p.get_bool(params, "active")
    lookup_keys = [str(k) for k in p.get_list(params, "lookup_keys")]
    expand_product = "data.product" in expansions(params, ("data.product",))
    items = [
        o
        for o in newest_first(state.prices.values())
        if keep(o)
        and (product is None or o["product"] == product)
        and (active is None or o["active"] == active)
        and (not lookup_keys or o["lookup_key"] in lookup_keys)
    ]

    def render(price: Obj) -> Obj:
        body = _public(price)
        if expand_product:
            body["product"] = _public(state.products[price["product"]])
        return body

    return paginate(items, params, "/v1/prices", render=render)


@stripe_route("/v1/prices/{id}", ["GET"])
async def retrieve_price(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    expand = expansions(params, ("product",))
    price = state.prices.get(request.path_params["id"])
    if price is None:
        raise missing("price", request.path_params["id"])
    body = _public(price)
    if "product" in expand:
        body["product"] = _public(state.products[price["product"]])
    return body


# -- checkout sessions ----------------------------------------------------------

SESSION_KEYS = (
    "mode",
    "line_items",
    "success_url",
    "cancel_url",
    "return_url",
    "ui_mode",
    "metadata",
    "client_reference_id",
    "customer_email",
    "customer",
    "shipping_address_collection",
    "expires_at",
    "payment_method_types",
    "locale",
    "submit_type",
    "allow_promotion_codes",
    "billing_address_collection",
    "phone_number_collection",
    "automatic_tax",
    "payment_intent_data",
    "customer_creation",
    "currency",
    "expand",
)
LINE_ITEM_KEYS = ("price", "price_data", "quantity", "adjustable_quantity", "tax_rates")
SESSION_EXPANSIONS = ("line_items", "line_items.data.price.product")


def _session_items(state: State, params: p.Params) -> list[tuple[str, int]]:
    raw_items = p.get_list(params, "line_items")
    if len(raw_items) > 100:
        raise invalid("line_items", "A Checkout Session can have at most 100 line items.", "array")
    items: list[tuple[str, int]] = []
    for index, raw in enumerate(raw_items):
        prefix = f"line_items[{index}]"
        if not isinstance(raw, dict):
            raise invalid(prefix, f"Invalid hash: {prefix} must be a hash", kind="hash")
        p.check_keys(raw, LINE_ITEM_KEYS, prefix)
        quantity = p.get_int(raw, "quantity", prefix, required=True, minimum=1, maximum=999_999)
        price_id = p.get_str(raw, "price", prefix)
        price_data = p.get_hash(raw, "price_data", prefix)
        if price_id and price_data is not None:
            raise invalid(f"{prefix}[price_data]", "Specify only one of price and price_data.")
        if price_data is not None:
            data_prefix = f"{prefix}[price_data]"
            p.check_keys(
                price_data,
                (
                    "currency",
                    "unit_amount",
                    "product",
                    "product_data",
                    "metadata",
                    "tax_behavior",
                    "recurring",
                ),
                data_prefix,
            )
            price_id = _price_from(state, price_data, data_prefix)["id"]
        if not price_id:
            raise missing_parameter(f"{prefix}[price]")
        if price_id not in state.prices:
            raise missing("price", price_id, param=f"{prefix}[price]")
        if not state.prices[price_id]["active"]:
            raise invalid(f"{prefix}[price]", f"The price specified ({price_id}) is inactive.")
        items.append((price_id, quantity or 1))
    return items


@stripe_route("/v1/checkout/sessions", ["POST"])
async def create_session(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(params, SESSION_KEYS)
    expand = expansions(params, SESSION_EXPANSIONS)
    mode = p.get_choice(params, "mode", ("payment", "setup", "subscription"), required=True)
    ui_mode = p.get_choice(params, "ui_mode", ("hosted", "embedded", "custom")) or "hosted"
    success_url = p.get_str(params, "success_url")
    return_url = p.get_str(params, "return_url")
    if ui_mode == "hosted" and not success_url:
        raise missing_parameter("success_url")
    for key, url in (("success_url", success_url), ("return_url", return_url)):
        if url and not re.match(r"^https?://", url):
            raise invalid(key, f"Not a valid URL: {key}")
    items = _session_items(state, params)
    _check_mode_items(state, mode or "payment", items)
    currency = p.get_str(params, "currency")
    if currency is not None and not re.fullmatch(r"[a-zA-Z]{3}", currency):
        raise invalid("currency", f"Invalid currency: {currency}")
    if mode == "setup" and currency is None and "payment_method_types" not in params:
        # https://docs.stripe.com/api/checkout/sessions/create#create_checkout_session-currency
        raise invalid(
            "currency",
            "`currency` is required in `setup` mode when `payment_method_types` is not set.",
        )
    now = state.now()
    expires_at = p.get_int(params, "expires_at")
    if expires_at is not None and not (now + 30 * 60 <= expires_at <= now + 24 * 3600):
        raise invalid(
            "expires_at",
            "The `expires_at` timestamp must be between 30 minutes and 24 hours from now.",
            kind="integer",
        )
    collection = p.get_hash(params, "shipping_address_collection")
    countries: list[str] | None = None
    if collection is not None:
        p.check_keys(collection, ("allowed_countries",), "shipping_address_collection")
        countries = [str(c) for c in p.get_list(collection, "allowed_countries")]
        if not countries:
            raise missing_parameter("shipping_address_collection[allowed_countries]")
    session = state.create_session(
        base_url=str(request.base_url),
        mode=mode or "payment",
        items=items,
        success_url=success_url,
        cancel_url=p.get_str(params, "cancel_url"),
        return_url=return_url,
        ui_mode=ui_mode,
        metadata=p.get_metadata(params),
        client_reference_id=p.get_str(params, "client_reference_id"),
        customer_email=p.get_str(params, "customer_email"),
        customer=p.get_str(params, "customer"),
        shipping_countries=countries,
        expires_at=expires_at,
        payment_method_types=[str(t) for t in p.get_list(params, "payment_method_types")]
        or ["card"],
        locale=p.get_str(params, "locale"),
        submit_type=p.get_str(params, "submit_type"),
        currency=currency,
    )
    return state.render_session(session, expand, api_version(request))


def _check_mode_items(state: State, mode: str, items: list[tuple[str, int]]) -> None:
    """What each mode may sell, as Stripe checks it.

    ``setup`` sells nothing (it saves a payment method); ``subscription``
    needs a recurring price; ``payment`` takes one-time prices only.
    """
    recurring = [pid for pid, _ in items if state.prices[pid]["type"] == "recurring"]
    if mode == "setup":
        if items:
            raise invalid("line_items", "You cannot pass `line_items` in `setup` mode.")
        return
    if not items:
        raise missing_parameter("line_items")
    if mode == "subscription" and not recurring:
        raise invalid(
            "line_items",
            "You must provide at least one recurring price in `subscription` mode "
            "when using prices.",
        )
    if mode == "payment" and recurring:
        raise invalid(
            "line_items",
            "You specified `payment` mode but passed a recurring price. Either switch to "
            "`subscription` mode or use only one-time prices.",
        )


def _session_id(request: Request) -> str:
    sid = str(request.path_params["id"])
    if not SESSION_ID_RE.match(sid):
        raise missing("checkout.session", sid[:200], param="session")
    return sid


@stripe_route("/v1/checkout/sessions/{id}", ["GET"])
async def retrieve_session(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(params, ("expand",))
    expand = expansions(params, SESSION_EXPANSIONS)
    session = state.get_session(_session_id(request))
    return state.render_session(session, expand, api_version(request))


@stripe_route("/v1/checkout/sessions", ["GET"])
async def list_sessions(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(
        params, (*PAGINATION, "status", "created", "customer", "payment_intent", "customer_details")
    )
    expand = expansions(params, tuple(f"data.{e}" for e in SESSION_EXPANSIONS))
    status = p.get_choice(params, "status", ("open", "complete", "expired"))
    payment_intent = p.get_str(params, "payment_intent")
    customer = p.get_str(params, "customer")
    keep = created_filter(params)
    items = [
        s
        for s in newest_first(state.sessions.values())
        if keep(s)
        and (status is None or s["status"] == status)
        and (payment_intent is None or s["payment_intent"] == payment_intent)
        and (customer is None or s["customer"] == customer)
    ]
    inner = [e.removeprefix("data.") for e in expand]
    version = api_version(request)
    return paginate(
        items,
        params,
        "/v1/checkout/sessions",
        render=lambda s: state.render_session(s, inner, version),
    )


@stripe_route("/v1/checkout/sessions/{id}/line_items", ["GET"])
async def list_line_items(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(params, PAGINATION)
    expand = expansions(params, ("data.price.product",))
    sid = _session_id(request)
    state.get_session(sid)
    items = state.line_items[sid]

    def render(item: Obj) -> Obj:
        return state.render_items([item], expand_product=bool(expand))[0]

    return paginate(items, params, f"/v1/checkout/sessions/{sid}/line_items", render=render)


@stripe_route("/v1/checkout/sessions/{id}/expire", ["POST"])
async def expire_session(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(params, ("expand",))
    session = state.expire(_session_id(request))
    return state.render_session(session, [], api_version(request))


# -- events -------------------------------------------------------------------


@stripe_route("/v1/events", ["GET"])
async def list_events(request: Request, params: p.Params) -> Obj:
    state = state_of(request)
    p.check_keys(params, (*PAGINATION, "type", "types", "created", "delivery_success"))
    keep = created_filter(params)
    event_type = p.get_str(params, "type")
    types = [str(t) for t in p.get_list(params, "types")]
    if event_type and types:
        raise invalid("types", "You may only specify one of type and types.")

    def type_matches(event: Obj) -> bool:
        if types:
            return event["type"] in types
        if event_type is None:
            return True
        if event_type.endswith("*"):
            return str(event["type"]).startswith(event_type[:-1])
        return bool(event["type"] == event_type)

    items = [e for e in newest_first(state.events.values()) if keep(e) and type_matches(e)]
    return paginate(items, params, "/v1/events")


@stripe_route("/v1/events/{id}", ["GET"])
async def retrieve_event(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, ("expand",))
    event = state_of(request).events.get(request.path_params["id"])
    if event is None:
        raise missing("event", request.path_params["id"])
    return _public(event)


# -- webhook endpoints (the real API's way of registering one) -------------------


@stripe_route("/v1/webhook_endpoints", ["POST"])
async def create_webhook_endpoint(request: Request, params: p.Params) -> Obj:
    p.check_keys(
        params, ("url", "enabled_events", "api_version", "description", "metadata", "expand")
    )
    url = p.get_str(params, "url", required=True) or ""
    events = [str(e) for e in p.get_list(params, "enabled_events")]
    if not events:
        raise missing_parameter("enabled_events")
    deliveries: Deliveries = request.app.state.emulator.deliveries
    endpoint = deliveries.add_endpoint(
        url, enabled_events=events, api_version=p.get_str(params, "api_version")
    )
    return endpoint.as_stripe(with_secret=True)


@stripe_route("/v1/webhook_endpoints", ["GET"])
async def list_webhook_endpoints(request: Request, params: p.Params) -> Obj:
    p.check_keys(params, PAGINATION)
    endpoints = [
        e.as_stripe(with_secret=False)
        for e in request.app.state.emulator.deliveries.endpoints.values()
    ]
    for index, endpoint in enumerate(endpoints):
        endpoint["_seq"] = index
    return paginate(list(reversed(endpoints)), params, "/v1/webhook_endpoints")


@stripe_route("/v1/webhook_endpoints/{id}", ["DELETE"])
async def delete_webhook_endpoint(request: Request, params: p.Params) -> Obj:
    deliveries = request.app.state.emulator.deliveries
    endpoint_id = request.path_params["id"]
    if endpoint_id not in deliveries.endpoints:
        raise missing("webhook_endpoint", endpoint_id)
    del deliveries.endpoints[endpoint_id]
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


async def not_found(request: Request) -> Response:
    error = StripeError(
        404,
        f"Unrecognized request URL ({request.method}: {request.url.path}). "
        "This emulator implements the part of Stripe's API that fulfill uses.",
    )
    return JSONResponse(error.body(), status_code=404)


ROUTES: list[Route] = [
    create_product,
    list_products,
    retrieve_product,
    create_price,
    list_prices,
    retrieve_price,
    create_session,
    list_sessions,
    retrieve_session,
    list_line_items,
    expire_session,
    list_events,
    retrieve_event,
    create_webhook_endpoint,
    list_webhook_endpoints,
    delete_webhook_endpoint,
]
