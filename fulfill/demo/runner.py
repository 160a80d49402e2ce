"""Setting the demo up: SQLite in a temporary folder, the emulator, the service, the shop's system.

Everything runs in this one process, each server under uvicorn in its own
thread (their event loops stay independent, as separate hosts' would), on
127.0.0.1 only. The folder, with the database and the catalog, is removed
when the demo stops: the emulator forgets its sessions then too.
"""

from __future__ import annotations

import logging
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console

from fulfill.actions import FACTORIES
from fulfill.app import create_app as create_service_app
from fulfill.app import server_options
from fulfill.config import Settings, load_settings
from fulfill.demo.samples import SAMPLES, Listed, MerchantSystem, catalog_text, create_prices
from fulfill.emulator import Emulator
from fulfill.emulator import create_app as create_emulator_app
from fulfill.errors import FulfillError
from fulfill.service import Service

HOST = "127.0.0.1"
DEMO_KEY = "sk_test_fulfilldemo"


class DemoError(FulfillError):
    code = "demo_error"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_in_thread(app: Any, port: int, name: str, **options: Any) -> Iterator[str]:
    """``app`` under uvicorn in a daemon thread on ``port``; yields its base URL.

    ``options`` are more of ``uvicorn.Config``'s, e.g. the service's ``server_options``.
    """
    config = uvicorn.Config(app, host=HOST, port=port, log_level="error", lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"demo-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise DemoError(f"the {name} could not start on {HOST}:{port} (is the port in use?)")
        if time.monotonic() > deadline:
            raise DemoError(f"the {name} did not start within 30 s")
        time.sleep(0.01)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Demo:
    """A running demo: where everything is, and handles on its parts."""

    shop_url: str
    emulator_url: str
    merchant_url: str
    folder: Path
    settings: Settings
    emulator: Emulator
    merchant: MerchantSystem
    service: Service
    listed: list[Listed]


@contextmanager
def running_demo(port: int, *, settle_after: float, quiet: bool = True) -> Iterator[Demo]:
    """Start everything; stop everything and remove the folder on the way out."""
    if quiet:
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    # Only the actions this version has (the catalog would refuse the others).
    samples = tuple(s for s in SAMPLES if s.action in FACTORIES)
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fulfill-demo-")))
        emulator = Emulator(auto_settle=settle_after, retry_delays=(0.5, 1.0, 2.0, 5.0))
        listed = create_prices(emulator.state, samples)
        merchant = MerchantSystem(secret=secrets.token_urlsafe(24))
        emulator_url = stack.enter_context(
            serve_in_thread(create_emulator_app(emulator), free_port(), "Stripe emulator")
        )
        merchant_url = stack.enter_context(
            serve_in_thread(merchant.app(), free_port(), "sample merchant system")
        )
        catalog = folder / "catalog.toml"
        catalog.write_text(
            catalog_text(listed, merchant_url=merchant_url, hook_secret=merchant.secret)
        )
        webhook_secret = "whsec_" + secrets.token_hex(24)
        settings = load_settings(
            env_file=None,
            STRIPE_SECRET_KEY=DEMO_KEY,
            STRIPE_WEBHOOK_SECRET=webhook_secret,
            STRIPE_API_BASE=emulator_url,
            FULFILL_DATABASE_URL=f"sqlite:///{folder / 'fulfill.db'}",
            FULFILL_CATALOG=str(catalog),
            FULFILL_PUBLIC_URL=f"http://{HOST}:{port}",
            FULFILL_WORKER_INTERVAL=0.5,
            FULFILL_RETRY_BASE=1.0,
            FULFILL_INLINE_BUDGET=5.0,
            FULFILL_LANDING_WAIT=5.0,
            FULFILL_SHIPPING_COUNTRIES="DE,FR,GB,NL,US",
            # The scripted customer (--headless) starts a dozen checkouts within
            # seconds from one address; the defaults (10 a minute per client, 5 a
            # second in all) would refuse it. Production keeps the defaults.
            FULFILL_CHECKOUTS_PER_CLIENT=600,
            FULFILL_CHECKOUTS_PER_SECOND=50,
            # Customer emails are written here, not sent; the shop links to them.
            FULFILL_MAIL_OUTBOX=str(folder / "outbox"),
            FULFILL_MAIL_RECEIVED=True,
            FULFILL_SHOP_NAME="Fulfill demo shop",
            FULFILL_MAIL_FROM="Fulfill demo shop <orders@demo.example>",
        )
        app = create_service_app(settings, show_outbox=True)
        shop_url = stack.enter_context(
            serve_in_thread(app, port, "fulfill service", **server_options(settings))
        )
        emulator.deliveries.add_endpoint(f"{shop_url}/webhooks/stripe", secret=webhook_secret)
        yield Demo(
            shop_url=shop_url,
            emulator_url=emulator_url,
            merchant_url=merchant_url,
            folder=folder,
            settings=settings,
            emulator=emulator,
            merchant=merchant,
            service=app.state.service,
            listed=listed,
        )


def interactive(port: int) -> int:
    """Serve until Ctrl+C, telling a person where to buy."""
    out = Console()
    with running_demo(port, settle_after=5.0) as demo:
        out.print(
            "\n[bold]fulfill demo[/bold] — the service, a sample catalog and the bundled Stripe "
            "emulator, offline.\n"
        )
        out.print(f"  Open the shop:  [bold underline]{demo.shop_url}/shop[/]\n")
        out.print(
            "Buy something, pay on the emulator's checkout page, and you land on the order "
            "page.\nA card pays at once; a bank debit stays processing and settles by itself "
            "after about 5 seconds.\n"
        )
        out.print(f"  Customer emails:  {demo.shop_url}/outbox  (written, not sent)")
        out.print(f"  Stripe emulator:  {demo.emulator_url}  (API at /v1, control at /_emulator)")
        out.print(f"  Data (removed on exit):  {demo.folder}")
        out.print("\nPress Ctrl+C to stop.")
        stop = threading.Event()
        # Ctrl+C, or a TERM from a process manager: stop the servers, remove the folder.
        # Both handled explicitly: a process started in the background by a
        # non-interactive shell inherits SIGINT as ignored, and Python keeps it so.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        with suppress(KeyboardInterrupt):
            stop.wait()
        out.print("\nStopping the demo.")
    return 0
