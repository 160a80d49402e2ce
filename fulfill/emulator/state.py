"""The emulator's objects and their transitions, in memory, with no I/O.

Objects are plain dicts in the shape of real Stripe objects (see
tests/fixtures/, captured from Stripe); a transition (complete, settle,
expire) changes the session and emits the event Stripe would emit, through
the ``on_event`` callback that webhook delivery listens to.
"""

from __future__ import annotations

import copy
import itertools
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fulfill.emulator.errors import StripeError, invalid, missing

API_VERSION = "2026-08-26.dahlia"
# Before this version the collected shipping address was the session's
# top-level ``shipping_details``; from it on, ``collected_information.shipping_details``.
# https://docs.stripe.com/changelog/basil/2025-03-31/checkout-session-remove-shipping-details
SHIPPING_MOVED_IN = "2025-03-31"
EXPANDED_LINE_ITEMS = 10  # an expanded ``line_items`` carries the first page only

_ALNUM = string.ascii_letters + string.digits

Obj = dict[str, Any]


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


DEFAULT_CUSTOMER = {"email": "jenny.rosen@example.com", "name": "Jenny Rosen"}
DEFAULT_ADDRESS = {
    "city": "South San Francisco",
    "country": "US",
    "line1": "354 Oyster Point Blvd",
    "line2": None,
    "postal_code": "94080",
    "state": "CA",
}

OUTCOMES = ("paid", "delayed", "free")


@dataclass
class State:
    """Every object the emulator holds, and the rules that change them."""

    on_event: Callable[[Obj], None] = lambda event: None
    clock: Callable[[], float] = time.time
    products: dict[str, Obj] = field(default_factory=dict)
    prices: dict[str, Obj] = field(default_factory=dict)
    sessions: dict[str, Obj] = field(default_factory=dict)
    line_items: dict[str, list[Obj]] = field(default_factory=dict)
    events: dict[str, Obj] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def now(self) -> int:
        return int(self.clock())

    # -- products and prices ------------------------------------------------

    def create_product(
        self,
        name: str,
        *,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        product_id: str | None = None,
        active: bool = True,
    ) -> Obj:
        pid = product_id or new_id("prod_", 14)
        if pid in self.products:
            raise StripeError(
                400, f"Product already exists: {pid}", code="resource_already_exists", param="id"
            )
        product: Obj = {
            "id": pid,
            "object": "product",
            "active": active,
            "created": self.now(),
            "default_price": None,
            "description": description,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": metadata or {},
            "name": name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": self.now(),
            "url": None,
            "_seq": next(self._seq),
        }
        self.products[pid] = product
        return product

    def create_price(
        self,
        *,
        currency: str,
        unit_amount: int,
        product: str,
        lookup_key: str | None = None,
        metadata: dict[str, str] | None = None,
        nickname: str | None = None,
        active: bool = True,
        product_param: str = "product",
        recurring: Obj | None = None,
    ) -> Obj:
        """A price; ``recurring`` (``{"interval", "interval_count"}``) makes it a subscription's."""
        if product not in self.products:
            raise missing("product", product, param=product_param)
        if lookup_key is not None:
            for other in self.prices.values():
                if other["lookup_key"] == lookup_key:
                    raise StripeError(
                        400,
                        f"A price (`{other['id']}`) already uses that lookup key.",
                        code="lookup_key_exists",
                        param="lookup_key",
                    )
        price: Obj = {
            "id": new_id("price_"),
            "object": "price",
            "active": active,
            "billing_scheme": "per_unit",
            "created": self.now(),
            "currency": currency.lower(),
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": lookup_key,
            "metadata": metadata or {},
            "nickname": nickname,
            "product": product,
            "recurring": (
                {
                    "interval": recurring["interval"],
                    "interval_count": recurring.get("interval_count") or 1,
                    "meter": None,
                    "trial_period_days": None,
                    "usage_type": "licensed",
                }
                if recurring
                else None
            ),
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
            "_seq": next(self._seq),
        }
        self.prices[price["id"]] = price
        if self.products[product]["default_price"] is None:
            self.products[product]["default_price"] = price["id"]
        return price

    # -- checkout sessions --------------------------------------------------

    def create_session(
        self,
        *,
        base_url: str,
        mode: str,
        items: list[tuple[str, int]],
        success_url: str | None,
        cancel_url: str | None,
        return_url: str | None,
        ui_mode: str,
        metadata: dict[str, str],
        client_reference_id: str | None,
        customer_email: str | None,
        customer: str | None,
        shipping_countries: list[str] | None,
        expires_at: int | None,
        payment_method_types: list[str],
        locale: str | None,
        submit_type: str | None,
        currency: str | None = None,
    ) -> Obj:
        """Create an ``open`` session for ``items`` (price ID, quantity) pairs.

        A ``setup`` session (no items) saves a payment method: it has no
        amount, a SetupIntent from the start, and is ``no_payment_required``
        throughout, as Stripe's are. ``payment`` and ``subscription`` sessions
        are ``unpaid`` until completed; the items' currency is the session's.
        """
        now = self.now()
        currencies = {self.prices[pid]["currency"] for pid, _ in items}
        if len(currencies) > 1:
            raise invalid(
                "line_items",
                "All line items must share one currency; got " + ", ".join(sorted(currencies)),
            )
        setup = mode == "setup"
        if currencies:
            currency = currencies.pop()
        elif not setup:
            currency = currency or "usd"
        sid = new_id("cs_test_", 58)
        line_items: list[Obj] = []
        for pid, quantity in items:
            price = self.prices[pid]
            product = self.products[price["product"]]
            amount = price["unit_amount"] * quantity
            line_items.append(
                {
                    "id": new_id("li_"),
                    "object": "item",
                    "adjustable_quantity": None,
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": product["name"],
                    "metadata": {},
                    "price": _public(price),
                    "quantity": quantity,
                }
            )
        subtotal: int | None = None if setup else sum(li["amount_subtotal"] for li in line_items)
        session: Obj = {
            "id": sid,
            "object": "checkout.session",
            "adaptive_pricing": {"enabled": False},
            "after_expiration": None,
            "allow_promotion_codes": None,
            # null in the captured 2026-08-26.dahlia event (tests/fixtures/)
            "allowed_payment_method_types": None,
            "amount_subtotal": subtotal,
            "amount_total": subtotal,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "billing_address_collection": None,
            "branding_settings": {
                "background_color": "#ffffff",
                "border_style": "rounded",
                "button_color": "#0074d4",
                "display_name": "fulfill emulator",
                "font_family": "default",
                "icon": None,
                "logo": None,
            },
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "client_secret": None,
            "collected_information": {
                "business_name": None,
                "individual_name": None,
                "shipping_details": None,
            },
            "consent": None,
            "consent_collection": None,
            "created": now,
            "currency": currency.lower() if currency else None,
            "currency_conversion": None,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": customer,
            "customer_account": None,
            "customer_creation": "if_required",
            "customer_details": None,
            "customer_email": customer_email,
            "discounts": [],
            "expires_at": expires_at or now + 24 * 3600,
            "integration_identifier": None,
            "invoice": None,
            "invoice_creation": {
                "enabled": False,
                "invoice_data": {
                    "account_tax_ids": None,
                    "custom_fields": None,
                    "description": None,
                    "footer": None,
                    "issuer": None,
                    "metadata": {},
                    "rendering_options": None,
                },
            },
            "livemode": False,
            "locale": locale,
            "managed_payments": {"enabled": False},
            "metadata": metadata,
            "mode": mode,
            "origin_context": None,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "if_required",
            "payment_method_configuration_details": None,
            "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
            "payment_method_types": payment_method_types,
            "payment_status": "no_payment_required" if setup else "unpaid",
            "permissions": None,
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "saved_payment_method_options": None,
            "setup_intent": new_id("seti_") if setup else None,
            "shipping_address_collection": (
                {"allowed_countries": shipping_countries} if shipping_countries else None
            ),
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": submit_type,
            "subscription": None,
            "success_url": success_url,
            "return_url": return_url,
            "total_details": (
                None if setup else {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
            ),
            "ui_mode": ui_mode,
            "url": f"{base_url.rstrip('/')}/c/pay/{sid}" if ui_mode == "hosted" else None,
            "wallet_options": None,
            "_seq": next(self._seq),
        }
        if return_url is None:
            del session["return_url"]
        self.sessions[sid] = session
        self.line_items[sid] = line_items
        return session

    def get_session(self, sid: str, param: str = "session") -> Obj:
        session = self.sessions.get(sid)
        if session is None:
            raise missing("checkout.session", sid, param=param)
        return session

    def complete(
        self,
        sid: str,
        outcome: str = "paid",
        *,
        email: str | None = None,
        name: str | None = None,
        shipping: Obj | None = None,
    ) -> Obj:
        """Complete an open session as Checkout does when the customer pays.

        ``paid``: a card; ``delayed``: a delayed method (complete, ``unpaid``,
        settled later); ``free``: an order of amount 0 (``no_payment_required``).
        A zero-amount session is ``no_payment_required`` whatever was asked,
        as in Stripe, and so is a ``setup`` session (which only saves the
        card: no charge, no PaymentIntent). A ``subscription`` session gets
        its customer, subscription and first invoice; it is paid through the
        invoice, so it has no PaymentIntent of its own.
        """
        session = self.get_session(sid)
        if session["status"] != "open":
            raise StripeError(
                400,
                f"Checkout Session {sid} is {session['status']}; "
                "only open sessions can be completed.",
                code="checkout_session_not_open",
            )
        if outcome not in OUTCOMES:
            raise invalid("outcome", f"outcome must be one of {', '.join(OUTCOMES)}")
        free = session["amount_total"] == 0 or session["mode"] == "setup"
        if outcome == "free" and not free:
            raise invalid("outcome", "outcome 'free' needs a session whose amount_total is 0")
        customer_email = email or session["customer_email"] or DEFAULT_CUSTOMER["email"]
        customer_name = name or DEFAULT_CUSTOMER["name"]
        address = dict(DEFAULT_ADDRESS)
        if shipping and isinstance(shipping.get("address"), dict):
            address = {**{k: None for k in DEFAULT_ADDRESS}, **shipping["address"]}
        session["customer_details"] = {
            "address": address,
            "business_name": None,
            "email": customer_email,
            "individual_name": None,
            "name": customer_name,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        }
        if session["shipping_address_collection"] is not None:
            session["collected_information"]["shipping_details"] = {
                "address": address,
                "name": (shipping or {}).get("name") or customer_name,
            }
        session["status"] = "complete"
        session["url"] = None
        if session["mode"] == "subscription":
            session["customer"] = session["customer"] or new_id("cus_", 14)
            session["subscription"] = new_id("sub_")
            session["invoice"] = new_id("in_")
        if free:
            session["payment_status"] = "no_payment_required"
        else:
            if session["mode"] == "payment":
                session["payment_intent"] = new_id("pi_")
            session["payment_status"] = "unpaid" if outcome == "delayed" else "paid"
        self.emit("checkout.session.completed", session)
        return session

    def settle(self, sid: str, succeeded: bool) -> Obj:
        """Settle a delayed payment: ``async_payment_succeeded`` or ``…_failed``."""
        session = self.get_session(sid)
        if session["status"] != "complete" or session["payment_status"] != "unpaid":
            raise StripeError(
                400,
                f"Checkout Session {sid} has no pending delayed payment "
                f"(status {session['status']}, payment_status {session['payment_status']}).",
                code="no_pending_payment",
            )
        if succeeded:
            session["payment_status"] = "paid"
            self.emit("checkout.session.async_payment_succeeded", session)
        else:
            self.emit("checkout.session.async_payment_failed", session)
        return session

    def expire(self, sid: str) -> Obj:
        session = self.get_session(sid)
        if session["status"] != "open":
            raise StripeError(
                400,
                "Only Checkout Sessions with a status of open can be expired; "
                f"{sid} is {session['status']}.",
                code="checkout_session_not_open",
            )
        session["status"] = "expired"
        session["url"] = None
        self.emit("checkout.session.expired", session)
        return session

    def expire_due(self) -> list[str]:
        """Expire every open session whose ``expires_at`` has passed."""
        now = self.now()
        due = [
            s["id"]
            for s in self.sessions.values()
            if s["status"] == "open" and s["expires_at"] <= now
        ]
        for sid in due:
            self.expire(sid)
        return due

    # -- events ---------------------------------------------------------------

    def emit(self, event_type: str, obj: Obj) -> Obj:
        event: Obj = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": _public(obj)},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": new_id("req_", 14), "idempotency_key": None},
            "type": event_type,
            "_seq": next(self._seq),
        }
        self.events[event["id"]] = event
        self.on_event(event)
        return event

    # -- rendering ------------------------------------------------------------

    def render_session(
        self, session: Obj, expand: list[str], api_version: str | None = None
    ) -> Obj:
        """The session as the API returns it, with the asked expansions."""
        body = render_for_version(_public(session), api_version)
        if "line_items" in expand or "line_items.data.price.product" in expand:
            items = self.render_items(
                self.line_items[session["id"]][:EXPANDED_LINE_ITEMS],
                expand_product="line_items.data.price.product" in expand,
            )
            body["line_items"] = {
                "object": "list",
                "data": items,
                "has_more": len(self.line_items[session["id"]]) > EXPANDED_LINE_ITEMS,
                "url": f"/v1/checkout/sessions/{session['id']}/line_items",
            }
        return body

    def render_items(self, items: list[Obj], *, expand_product: bool) -> list[Obj]:
        rendered = []
        for item in items:
            body = copy.deepcopy(item)
            if expand_product:
                body["price"]["product"] = _public(self.products[body["price"]["product"]])
            rendered.append(body)
        return rendered


def render_for_version(session: Obj, api_version: str | None) -> Obj:
    """Older API versions carry the shipping address at the top level."""
    if (
        api_version
        and api_version < SHIPPING_MOVED_IN
        and session.get("object") == "checkout.session"
    ):
        collected = session.pop("collected_information", None) or {}
        session["shipping_details"] = collected.get("shipping_details")
    return session


def _public(obj: Obj) -> Obj:
    """A deep copy without the emulator's private ``_`` keys."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
