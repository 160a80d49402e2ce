"""``/v1/checkout/sessions`` and their line items."""

from __future__ import annotations

import re

from starlette.requests import Request

from fulfill.emulator import params as p
from fulfill.emulator.api.products import price_from
from fulfill.emulator.api.routing import (
    PAGINATION,
    SESSION_ID_RE,
    api_version,
    created_filter,
    expansions,
    newest_first,
    paginate,
    state_of,
    stripe_route,
)
from fulfill.emulator.errors import invalid, missing, missing_parameter
from fulfill.emulator.state import Obj, State

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
            price_id = price_from(state, price_data, data_prefix)["id"]
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
