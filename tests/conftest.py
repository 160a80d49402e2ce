"""Factories shared by the tests: a real emulator server, a webhook receiver, Stripe clients."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import stripe
from sqlalchemy import text
from stripe import HTTPXClient, StripeClient

from fulfill.app import create_app as create_service_app
from fulfill.app import server_options
from fulfill.config import Settings, load_settings
from fulfill.emulator import Emulator, create_app
from fulfill.store import Store
from fulfill.store.database import create_engine
from tests.requirements import missing_service
from tests.servers import Receiver, free_port, serve_in_thread

TEST_KEY = "sk_test_emulator"


@dataclass
class EmulatorServer:
    """A running emulator: its URL, its state (for direct looks) and a control client."""

    url: str
    emulator: Emulator
    control: httpx.Client
    http_clients: list[HTTPXClient] = field(default_factory=list)

    def stripe(self, *, retries: int = 0, key: str = TEST_KEY, **options: Any) -> StripeClient:
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

    def stripe_async(self, *, retries: int = 0) -> StripeClient:
        """An async-capable official client (its HTTP client is closed at teardown)."""
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
            client.close()  # type: ignore[no-untyped-call]

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.control.post(path, json=body or {})
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, path: str) -> Any:
        response = self.control.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def price(
        self,
        name: str = "E-book",
        unit_amount: int = 1900,
        *,
        product_metadata: dict[str, str] | None = None,
        **extra: Any,
    ) -> str:
        """A new product with one price; returns the price ID."""
        client = self.stripe()
        product = client.v1.products.create({"name": name, "metadata": product_metadata or {}})
        price = client.v1.prices.create(
            {"currency": "eur", "unit_amount": unit_amount, "product": product.id, **extra}  # type: ignore[typeddict-item]
        )
        return price.id

    def session(self, prices: list[tuple[str, int]] | None = None, **extra: Any) -> Any:
        """A new open Checkout Session for (price, quantity) pairs."""
        items = prices or [(self.price(), 1)]
        return self.stripe().v1.checkout.sessions.create(
            {  # type: ignore[arg-type]
                "mode": "payment",
                "success_url": "http://shop.test/done?session_id={CHECKOUT_SESSION_ID}",
                "line_items": [{"price": p, "quantity": q} for p, q in items],
                **extra,
            }
        )

    def complete(self, session_id: str, outcome: str = "paid", **extra: Any) -> Any:
        return self.post(
            f"/_emulator/sessions/{session_id}/complete", {"outcome": outcome, **extra}
        )

    def requests_to(self, path: str) -> int:
        """How many API requests the emulator has logged for exactly ``path``."""
        log = self.get(f"/_emulator/requests?path={path}")
        return len(log["requests"])


@pytest.fixture
def emulator_server() -> Iterator[EmulatorServer]:
    emulator = Emulator(retry_delays=(0.2, 0.4, 0.8))
    # Control calls may wait long: webhooks/idle?timeout=90, a concurrent flush.
    with (
        serve_in_thread(create_app(emulator)) as url,
        httpx.Client(base_url=url, timeout=120) as control,
    ):
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


# -- the service ----------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_service_tests_0123456789abcdef"
HOOK_SECRET = "hook_secret_for_tests"
HOOK_METADATA = {"fulfill": "hook"}


def hook_catalog(receiver_url: str, timeout: str = "10s") -> str:
    """A catalog whose one entry sends every item tagged fulfill=hook to ``receiver_url``."""
    return f"""
[[product]]
name = "Anything the test receiver fulfills"
match = {{ metadata = {{ fulfill = "hook" }} }}
action = "webhook"
url = "{receiver_url}"
secret = "{HOOK_SECRET}"
timeout = "{timeout}"
"""


@dataclass
class ServiceServer:
    """A running fulfill service (in a thread) wired to the emulator."""

    url: str
    settings: Settings
    shop: EmulatorServer
    client: httpx.Client

    def landing(self, session_id: str, *, as_json: bool = True) -> httpx.Response:
        headers = {"Accept": "application/json"} if as_json else {"Accept": "text/html"}
        return self.client.get(
            "/checkout/complete", params={"session_id": session_id}, headers=headers
        )

    def record(self, session_id: str) -> dict[str, Any]:
        """The whole stored record (internals included), as the admin API gives it.

        The landing page's JSON is the customer's view only; tests that check
        triggers, attempts, errors or item results read the store.
        """
        record = stored_record(self.settings.database_url, session_id)
        assert record is not None, f"no record for {session_id}"
        return record

    def send(self, payload: bytes, signature: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        return self.client.post("/webhooks/stripe", content=payload, headers=headers)

    def paid_session(self, prices: list[tuple[str, int]] | None = None, **extra: Any) -> str:
        """A session of hook-fulfilled items, completed as paid; returns its ID."""
        items = prices or [(self.shop.price(product_metadata=HOOK_METADATA), 1)]
        session = self.shop.session(items, **extra)
        self.shop.complete(session.id, "paid")
        return str(session.id)


ServiceFactory = Callable[..., ServiceServer]


def stored_record(database_url: str, session_id: str) -> dict[str, Any] | None:
    """``FulfillmentRecord.as_json`` of one session, read from the database."""

    async def read() -> dict[str, Any] | None:
        store = await Store.open(database_url, migrate=False, pool_size=1)
        try:
            record = await store.get(session_id)
        finally:
            await store.close()
        return None if record is None else record.as_json()

    return asyncio.run(read())


POSTGRES_ADMIN = os.environ.get(
    "FULFILL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def _postgres_admin(statement: str) -> None:
    dsn = POSTGRES_ADMIN.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = "fulfill_test_" + uuid.uuid4().hex[:12]
    try:
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        missing_service(f"PostgreSQL is not reachable at {POSTGRES_ADMIN}: {exc}")
    base = POSTGRES_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each service test runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fulfill.db'}"
    else:
        with postgres_database() as url:
            yield url


def table_rows(database_url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table``, sorted, read through SQLAlchemy (any backend)."""

    async def read() -> list[tuple[Any, ...]]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(f"SELECT * FROM {table}"))  # noqa: S608
                return sorted((tuple(row) for row in result), key=repr)
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.fixture
def service_factory(
    tmp_path: Path, emulator_server: EmulatorServer, receiver: Receiver, database_url: str
) -> Iterator[ServiceFactory]:
    """Start services: ``make(catalog=None, webhooks=True, **settings)``."""
    stack = ExitStack()

    def make(
        catalog: str | None = None, *, webhooks: bool = True, **overrides: Any
    ) -> ServiceServer:
        catalog_path = tmp_path / "catalog.toml"
        catalog_path.write_text(catalog or hook_catalog(receiver.url))
        port = free_port()
        values: dict[str, Any] = {
            "STRIPE_SECRET_KEY": TEST_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": emulator_server.url,
            "FULFILL_DATABASE_URL": database_url,
            "FULFILL_CATALOG": str(catalog_path),
            "FULFILL_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "FULFILL_WORKER_INTERVAL": 0.1,
            "FULFILL_RECONCILE_INTERVAL": 0,
            "FULFILL_LOOKUPS_PER_CLIENT": 100_000,
            "FULFILL_LOOKUPS_PER_SECOND": 100_000,
            "FULFILL_CHECKOUTS_PER_CLIENT": 100_000,
            "FULFILL_CHECKOUTS_PER_SECOND": 100_000,
            "FULFILL_RETRY_BASE": 0.2,
            "FULFILL_MAIL_OUTBOX": str(tmp_path / "outbox"),
            **overrides,
        }
        settings = load_settings(env_file=None, **values)
        url = stack.enter_context(
            serve_in_thread(create_service_app(settings), port=port, **server_options(settings))
        )
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        if webhooks:
            emulator_server.post(
                "/_emulator/webhook_endpoints",
                {"url": f"{url}/webhooks/stripe", "secret": WEBHOOK_SECRET},
            )
        return ServiceServer(url, settings, emulator_server, client)

    with stack:
        yield make
