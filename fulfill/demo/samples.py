"""The demo's sample shop: one product of each action, their catalog, and the shop's own system.

The prices are created in the emulator at start; the catalog written for
them matches some by ``price`` and some by ``lookup_key``, as a merchant's
would. The ``webhook`` product is fulfilled by ``MerchantSystem``, a small app
the demo serves as a merchant's own back office would be (it checks the
signature and answers idempotently); the ``python`` product by
``thank_you_card`` below.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fulfill.actions import ItemContext
from fulfill.emulator.state import State

FILES = Path(__file__).parent / "files"
CURRENCY = "eur"


@dataclass(frozen=True)
class Sample:
    """One sample product: its Stripe product and price, and its catalog entry."""

    action: str
    name: str
    description: str
    unit_amount: int
    lookup_key: str | None = None  # matched by lookup_key when set, else by price ID
    quantity: int = 1  # how many the scripted purchase buys


SAMPLES = (
    Sample(
        "download",
        "The Python Handbook (e-book)",
        "A PDF you can download at once.",
        1900,
    ),
    Sample(
        "access",
        "Course access (1 year)",
        "A year of the video course, for your email address.",
        9900,
        lookup_key="course_year",
    ),
    Sample(
        "license",
        "Editor Pro licence",
        "One licence key per seat.",
        4900,
        lookup_key="editor_pro",
        quantity=2,
    ),
    Sample("shipment", "T-shirt", "Organic cotton, shipped to your door.", 2500),
    Sample(
        "webhook",
        "Gift card",
        "Issued by the shop's own system the moment you pay.",
        1500,
    ),
    Sample(
        "python",
        "Thank-you postcard",
        "Free: a postcard from us, written by a few lines of Python.",
        0,
    ),
)


@dataclass(frozen=True)
class Listed:
    """A sample as created in the emulator."""

    sample: Sample
    price_id: str
    product_id: str


def create_prices(state: State, samples: tuple[Sample, ...]) -> list[Listed]:
    """The sample products and prices, in the emulator's state."""
    listed = []
    for sample in samples:
        product = state.create_product(sample.name, description=sample.description)
        price = state.create_price(
            currency=CURRENCY,
            unit_amount=sample.unit_amount,
            product=product["id"],
            lookup_key=sample.lookup_key,
        )
        listed.append(Listed(sample, price["id"], product["id"]))
    return listed


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def catalog_text(listed: list[Listed], *, merchant_url: str, hook_secret: str) -> str:
    """The catalog of the sample shop, as a merchant would write it."""
    options: dict[str, dict[str, str]] = {
        "download": {
            "file": str(FILES / "handbook.pdf"),
            "label": "The Python Handbook (PDF)",
            "link_ttl": "7d",
        },
        "access": {
            "service": "Course platform",
            "url": f"{merchant_url}/course",
            "duration": "365d",
        },
        "license": {"format": "EDIT-XXXX-XXXX-XXXX"},
        "shipment": {},
        "webhook": {"url": f"{merchant_url}/fulfill", "secret": hook_secret, "timeout": "10s"},
        "python": {"callable": "fulfill.demo.samples:thank_you_card"},
    }
    parts = ["# The fulfill demo's catalog: one product of each action.\n"]
    for item in listed:
        sample = item.sample
        match = (
            f"lookup_key = {_toml(sample.lookup_key)}"
            if sample.lookup_key
            else f"price = {_toml(item.price_id)}"
        )
        lines = [
            "[[product]]",
            f"name = {_toml(sample.name)}",
            f"match = {{ {match} }}",
            f"action = {_toml(sample.action)}",
            *(f"{key} = {_toml(value)}" for key, value in options[sample.action].items()),
        ]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def thank_you_card(item: ItemContext) -> dict[str, Any]:
    """The ``python`` action's sample callable: what a merchant's own code would return."""
    who = item.customer.get("name") or "you"
    return {"message": f"A thank-you postcard for {who} is on its way. Enjoy!"}


@dataclass
class MerchantSystem:
    """The merchant's own back office: fulfills the gift card, hosts the course login page.

    It does what the README asks of a webhook receiver: checks the
    ``Fulfill-Signature`` and answers a repeated ``Idempotency-Key`` with the
    same gift card, so a retry never issues a second one.
    """

    secret: str
    tolerance: int = 300
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, body: bytes, header: str) -> bool:
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        try:
            stamp = int(fields.get("t", ""))
        except ValueError:
            return False
        if abs(time.time() - stamp) > self.tolerance:
            return False
        expected = hmac.new(
            self.secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(expected, fields.get("v1", ""))

    def gift_card(self, key: str) -> str:
        digest = hashlib.sha256(f"{self.secret}:{key}".encode()).hexdigest().upper()
        return f"GIFT-{digest[:4]}-{digest[4:8]}-{digest[8:12]}"

    def app(self) -> Starlette:
        async def fulfill(request: Request) -> Response:
            body = await request.body()
            if not self.verify(body, request.headers.get("fulfill-signature", "")):
                return JSONResponse({"error": "bad signature"}, status_code=400)
            key = request.headers.get("idempotency-key", "")
            with self.lock:
                self.calls[key] += 1
            quantity = int(json.loads(body).get("quantity") or 1)
            worth = f" (worth {quantity} cards)" if quantity > 1 else ""
            message = f"Your gift card code{worth}: {self.gift_card(key)}"
            return JSONResponse({"message": message, "links": []})

        async def course(request: Request) -> Response:
            return HTMLResponse(
                "<!doctype html><html lang=en><meta charset=utf-8>"
                "<meta name=viewport content='width=device-width, initial-scale=1'>"
                "<title>Course platform</title><body style='font:16px system-ui;margin:3rem'>"
                "<main><h1>Course platform</h1><p>Sign in with the email address you paid "
                "with: your access is waiting.</p></main>"
            )

        return Starlette(
            routes=[
                Route("/fulfill", fulfill, methods=["POST"]),
                Route("/course", course, methods=["GET"]),
            ]
        )
