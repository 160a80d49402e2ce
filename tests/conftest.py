"""Factories shared by the tests: a real emulator server, a webhook receiver, Stripe clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import stripe

from fulfill.emulator import Emulator, create_app
from tests.servers import Receiver, serve_in_thread

TEST_KEY = "sk_test_emulator"


@dataclass
class EmulatorServer:
    """A running emulator: its URL, its state (for direct looks) and a control client."""

    url: str
    emulator: Emulator
    control: httpx.Client
    http_clients: list[stripe.HTTPXClient] = field(default_factory=list)

    def stripe(self, *, retries: int = 0, key: str = TEST_KEY, **options: Any) -> stripe.StripeClient:
        """A synchronous official client pointed at this emulator (closed at teardown)."""
        http_client = stripe.HTTPXClient(allow_sync_methods=True)
        self.http_clients.append(http_client)
        return stripe.StripeClient(
            key,
            base_addresses={"api": self.url},
            max_network_retries=retries,
            http_client=http_client,
            **options,
        )

    def stripe_async(self, *, retries: int = 0) -> stripe.StripeClient:
        """An async official client; close it with ``await client._requestor._client.close_async()``."""
        http_client = stripe.HTTPXClient(allow_sync_methods=True)
        self.http_clients.append(http_client)
        return stripe.StripeClient(
            TEST_KEY,
            base_addresses={"api": self.url},
            max_network_retries=retries,
            http_client=http_client,
        )

    def close(self) -> None:
        for client in self.http_clients:
            client.close()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.control.post(path, json=body or {})
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, path: str) -> Any:
        response = self.control.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def price(self, name: str = "E-book", unit_amount: int = 1900, **extra: Any) -> str:
        """A new product with one price; returns the price ID."""
        client = self.stripe()
        product = client.v1.products.create({"name": name})
        price = client.v1.prices.create(
            {"currency": "eur", "unit_amount": unit_amount, "product": product.id, **extra}
        )
        return price.id

    def session(self, prices: list[tuple[str, int]] | None = None, **extra: Any) -> Any:
        """A new open Checkout Session for (price, quantity) pairs."""
        items = prices or [(self.price(), 1)]
        return self.stripe().v1.checkout.sessions.create(
            {
                "mode": "payment",
                "success_url": "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
                "line_items": [{"price": p, "quantity": q} for p, q in items],
                **extra,
            }
        )

    def complete(self, session_id: str, outcome: str = "paid", **extra: Any) -> Any:
        return self.post(f"/_emulator/sessions/{session_id}/complete", {"outcome": outcome, **extra})

    def requests_to(self, path: str) -> int:
        """How many API requests the emulator has logged for exactly ``path``."""
        log = self.get(f"/_emulator/requests?path={path}")
        return len(log["requests"])


@pytest.fixture
def emulator_server() -> Iterator[EmulatorServer]:
    emulator = Emulator(retry_delays=(0.2, 0.4, 0.8))
    with serve_in_thread(create_app(emulator)) as url, httpx.Client(base_url=url) as control:
        server = EmulatorServer(url, emulator, control)
        try:
            yield server
        finally:
            server.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    with serve_in_thread(hook.app()) as url:
        hook.url = f"{url}/hook"
        yield hook
