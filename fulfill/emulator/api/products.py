"""``/v1/products`` and ``/v1/prices``: what the shop sells."""

from __future__ import annotations

import re

from starlette.requests import Request

from fulfill.emulator import params as p
from fulfill.emulator.api.routing import (
    PAGINATION,
    created_filter,
    expansions,
    newest_first,
    paginate,
    state_of,
    stripe_route,
)
from fulfill.emulator.errors import invalid, missing, missing_parameter
from fulfill.emulator.state import Obj, State, _public

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


def price_from(state: State, params: p.Params, prefix: str = "") -> Obj:
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
    return _public(price_from(state_of(request), params))


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
