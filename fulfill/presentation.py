"""What pages and emails both show: templates, amounts, links, and the words for each state.

The landing page, the storefront and the emails render through ``TEMPLATES``,
whose autoescape covers every ``.html`` template: product names, descriptions
and results come from Stripe, the catalog or a merchant's webhook, and are
text, never markup. Links go through ``safe_url`` so that only http(s) reaches
an ``href``.

This module imports neither the engine nor the web layer: an email shows what
the landing page shows without importing the landing page (and with it the
engine and the Stripe client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    # The templates ship with the package: compiled once, never stat()ed again
    # on each page (a landing page is base.html, landing.html and includes).
    auto_reload=False,
)

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = {
    "bif",
    "clp",
    "djf",
    "gnf",
    "jpy",
    "kmf",
    "krw",
    "mga",
    "pyg",
    "rwf",
    "ugx",
    "vnd",
    "vuv",
    "xaf",
    "xof",
    "xpf",
}


def money(amount: int | None, currency: str | None) -> str:
    """``2999, "eur"`` → ``"29.99 EUR"`` (zero-decimal currencies as whole units)."""
    if amount is None or not currency:
        return ""
    if currency.lower() in ZERO_DECIMAL:
        return f"{amount:,} {currency.upper()}"
    return f"{amount / 100:,.2f} {currency.upper()}"


def safe_url(url: Any) -> str | None:
    """Only http(s) links reach a page; ``javascript:`` and friends are dropped."""
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return url
    return None


TEMPLATES.globals.update(money=money, safe_url=safe_url)


# What each state tells the customer.
STATES: dict[str, tuple[str, str]] = {
    "fulfilled": ("Thank you — your order is ready", "Everything you bought is below."),
    "fulfilling": (
        "We are preparing your order",
        "This takes a few seconds. This page updates by itself.",
    ),
    "pending": (
        "We are preparing your order",
        "This takes a few seconds. This page updates by itself.",
    ),
    "awaiting_payment": (
        "Your payment is processing",
        "Your bank has not confirmed the payment yet. We will deliver your order as soon as it "
        "does; this page updates by itself, and you can close it safely.",
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


# A shipment's state in the customer's words (as deliverables.html shows it).
SHIPMENT_STATES = {
    "pending": "Preparing your shipment",
    "shipped": "Shipped",
    "delivered": "Delivered",
    "cancelled": "Shipment cancelled",
}
