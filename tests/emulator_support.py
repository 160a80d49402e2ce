"""Helpers for the emulator's tests: async clients, webhook endpoints, polling.

(Factories that every test module could use belong in conftest.py; these are
the emulator suite's own.)
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import httpx
import stripe

from fulfill.emulator import Emulator, create_app
from tests.conftest import TEST_KEY, EmulatorServer
from tests.servers import Received, Receiver, serve_in_thread

T = TypeVar("T")

WEBHOOK_SECRET = "whsec_emulator_tests_0123456789abcdef"


@asynccontextmanager
async def async_stripe(
    server: EmulatorServer | str, *, retries: int = 0, key: str = TEST_KEY, **options: Any
) -> AsyncIterator[stripe.StripeClient]:
    """An official client using only async methods, pointed at the emulator; closed on exit."""
    url = server if isinstance(server, str) else server.url
    http_client = stripe.HTTPXClient()
    try:
        yield stripe.StripeClient(
            key,
            base_addresses={"api": url},
            max_network_retries=retries,
            http_client=http_client,
            **options,
        )
    finally:
        close: Any = http_client.close_async  # untyped in stripe-python
        await close()


@contextmanager
def sync_stripe(
    url: str, *, key: str = TEST_KEY, retries: int = 0
) -> Iterator[stripe.StripeClient]:
    """A sync official client for an emulator other than the ``emulator_server`` fixture."""
    http_client = stripe.HTTPXClient(allow_sync_methods=True)
    try:
        yield stripe.StripeClient(
            key,
            base_addresses={"api": url},
            max_network_retries=retries,
            http_client=http_client,
        )
    finally:
        close: Any = http_client.close  # untyped in stripe-python
        close()


@contextmanager
def other_emulator(emulator: Emulator) -> Iterator[str]:
    """Serve another emulator (its own options) for one test; yields its URL."""
    with serve_in_thread(create_app(emulator)) as url:
        yield url


def register(
    server: EmulatorServer, receiver: Receiver, secret: str = WEBHOOK_SECRET, **extra: Any
) -> dict[str, Any]:
    """Register ``receiver`` as a webhook endpoint of the emulator."""
    endpoint: dict[str, Any] = server.post(
        "/_emulator/webhook_endpoints", {"url": receiver.url, "secret": secret, **extra}
    )
    return endpoint


def verify(received: Received, secret: str = WEBHOOK_SECRET) -> stripe.Event:
    """Check a delivery's signature as a merchant does, with stripe-python."""
    event: stripe.Event = stripe.Webhook.construct_event(
        received.body.decode(), received.headers["stripe-signature"], secret
    )
    return event


def payload(received: Received) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(received.body)
    return body


def wait_idle(server: EmulatorServer) -> None:
    """Wait until the emulator has no webhook delivery (or retry) in flight."""
    response = server.control.get("/_emulator/webhooks/idle", params={"timeout": 10})
    assert response.json() == {"idle": True}


def poll(check: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Call ``check`` until it returns something other than None (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def raw_api(server: EmulatorServer | str, key: str | None = TEST_KEY) -> httpx.Client:
    """A plain HTTP client for the API (to look at raw answers); use as a context manager."""
    url = server if isinstance(server, str) else server.url
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers)
