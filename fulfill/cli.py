"""The ``fulfill`` command line."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from fulfill.errors import FulfillError

err = Console(stderr=True)


class FulfillGroup(click.Group):
    """Turns every ``FulfillError`` into one red line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FulfillError as exc:
            err.print(f"[red]error:[/red] {exc.message}", highlight=False)
            sys.exit(2)


@click.group(cls=FulfillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fulfill")
def main() -> None:
    """Exactly-once fulfillment of Stripe Checkout sessions."""


def _delays(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("give seconds separated by commas, e.g. 1,2,5") from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=12111, show_default=True, type=int, help="Port to listen on.")
@click.option("--api-key", default=None, help="Accept only this key (default: any sk_test_… key).")
@click.option("--latency-ms", default=0.0, type=float, help="Delay added to every API request.")
@click.option(
    "--auto-settle",
    default=None,
    type=float,
    help="Seconds after which a delayed payment settles by itself (default: only when asked).",
)
@click.option("--retry-delays", default=None, help="Webhook retry schedule in seconds, e.g. 1,2,5.")
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    metavar="URL[=whsec_…]",
    help="Register a webhook endpoint at start (repeatable); a secret after '=' is used as is.",
)
def emulator(
    host: str,
    port: int,
    api_key: str | None,
    latency_ms: float,
    auto_settle: float | None,
    retry_delays: str | None,
    webhooks: tuple[str, ...],
) -> None:
    """Run the Stripe emulator alone, for tests against it."""
    from fulfill.emulator.server import serve_emulator

    serve_emulator(
        host=host,
        port=port,
        api_key=api_key,
        latency_ms=latency_ms,
        auto_settle=auto_settle,
        retry_delays=_delays(retry_delays),
        webhooks=webhooks,
    )


@main.command()
@click.option(
    "--port",
    default=None,
    type=int,
    help="Port of the shop and the service [default: 8000; headless: any free port].",
)
@click.option(
    "--headless",
    is_flag=True,
    help="Play the scripted purchases, print the records, exit 0 only if all is as expected.",
)
def demo(port: int | None, headless: bool) -> None:
    """Everything offline with no account: the service, a sample shop and the Stripe emulator."""
    from fulfill.demo import run_demo

    sys.exit(run_demo(port, headless=headless))


def _settings(**overrides: Any) -> Any:
    from fulfill.config import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Processes on this host.")
def serve(host: str, port: int, workers: int) -> None:
    """Run the service (webhook endpoint, landing page, background worker)."""
    import asyncio
    import logging

    import uvicorn

    from fulfill.app import create_app
    from fulfill.service import Service

    settings = _settings()
    settings.require_stripe()

    # Fail before binding the port: a bad catalog or database must stop the
    # start, with its one clear line, not the first payment.
    async def preflight() -> None:
        service = await Service.start(settings, migrate=True)
        await service.close()

    asyncio.run(preflight())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if workers > 1:
        uvicorn.run(
            "fulfill.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            log_level="warning",
        )
    else:
        uvicorn.run(
            create_app(settings), host=host, port=port, access_log=False, log_level="warning"
        )


@main.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run from several hosts at once)."""
    import asyncio

    from fulfill.store import Store

    settings = _settings()

    async def apply() -> None:
        store = await Store.open(settings.database_url, migrate=True)
        await store.close()

    asyncio.run(apply())
    Console().print("migrations applied")


@main.command()
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def run(session_id: str, as_json: bool) -> None:
    """Call fulfill_checkout once for SESSION_ID and print the record."""
    import asyncio
    import json

    from fulfill.service import Service

    settings = _settings()

    async def once() -> Any:
        service = await Service.start(settings)
        try:
            return await service.engine.fulfill_checkout(session_id, trigger="cli", force=True)
        finally:
            await service.close()

    record = asyncio.run(once())
    if as_json:
        click.echo(json.dumps(record.as_json(), indent=2))
    else:
        print_record(record)


def print_record(record: Any) -> None:
    from rich.table import Table

    out = Console()
    out.print(
        f"[bold]{record.session_id}[/bold]  status [bold]{record.status}[/bold]  "
        f"payment {record.payment_status}  attempts {record.attempts}"
    )
    if record.last_error:
        out.print(f"[red]last error:[/red] {record.last_error}", highlight=False)
    table = Table("line item", "description", "qty", "action", "status")
    for item in record.items:
        table.add_row(
            item.line_item_id,
            item.description or "",
            str(item.quantity),
            item.action or "",
            item.status,
        )
    out.print(table)
