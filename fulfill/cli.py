"""The ``fulfill`` command line."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from fulfill import operations
from fulfill.console import err, print_record, read_settings, read_store
from fulfill.errors import FulfillError
from fulfill.store import Store
from fulfill.store.deliverables import SHIPMENT_STATUSES, Shipment


class FulfillGroup(click.Group):
    """Turns every ``FulfillError`` into one red line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FulfillError as exc:
            # One line, however long, and the message as is: catalog errors
            # quote TOML like [[product]], which is not console markup.
            err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Processes on this host.")
def serve(host: str, port: int, workers: int) -> None:
    """Run the service (webhook endpoint, landing page, background worker)."""
    import asyncio
    import logging.config
    import os
    import shutil
    import tempfile

    import uvicorn

    from fulfill import logs
    from fulfill.app import create_app, server_options
    from fulfill.service import Service

    settings = read_settings()
    settings.require_stripe()
    # JSON lines (with session_id and event_id) when stderr is not a terminal.
    # uvicorn applies the same configuration in each worker process, and must
    # not replace it with its own.
    log_config = logs.logging_config()
    logging.config.dictConfig(log_config)

    # Fail before binding the port: a bad catalog or database must stop the
    # start, with its one clear line, not the first payment.
    async def preflight() -> None:
        service = await Service.start(settings, migrate=True)
        await service.close()

    asyncio.run(preflight())
    if workers > 1:
        metrics_dir = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Each worker counts in its own files there, and /metrics adds up
            # every worker's: a scrape lands on one process but sees the host.
            # Set before the workers start: they read it when they import
            # prometheus_client.
            metrics_dir = tempfile.mkdtemp(prefix="fulfill-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            uvicorn.run(
                "fulfill.app:create_app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                access_log=False,
                **server_options(settings),
                log_level="warning",
                log_config=log_config,
            )
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    else:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            access_log=False,
            log_level="warning",
            log_config=log_config,
            **server_options(settings),
        )


@main.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run from several hosts at once)."""
    import asyncio

    settings = read_settings()

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

    settings = read_settings()

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


# -- what the built-in actions delivered -------------------------------------------------


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else ""


@main.group()
def access() -> None:
    """Access grants made by the access action: which email may use which service, until when."""


@access.command("list")
@click.option("--email", default=None, help="Only this customer's grants (any letter case).")
@click.option("--json", "as_json", is_flag=True, help="Print the grants as JSON.")
def access_list(email: str | None, as_json: bool) -> None:
    """Access grants, newest first."""
    import json

    from rich.table import Table

    from fulfill.actions.base import utcnow

    grants = read_store(lambda store: store.deliverables.access_grants(email=email))
    if as_json:
        click.echo(json.dumps([grant.as_json() for grant in grants], indent=2))
        return
    now = utcnow()
    table = Table("id", "email", "service", "from", "until", "active", "session")
    for grant in grants:
        table.add_row(
            str(grant.id),
            grant.email,
            grant.service,
            _when(grant.starts_at),
            "lifetime" if grant.ends_at is None else _when(grant.ends_at),
            "yes" if grant.active(now) else ("not yet" if grant.starts_at > now else "ended"),
            grant.session_id,
        )
    out = Console()
    out.print(table)
    out.print(f"{len(grants)} grant{'' if len(grants) == 1 else 's'}", highlight=False)


SHIPMENT_CSV_COLUMNS = (
    "id",
    "status",
    "created_at",
    "session_id",
    "line_item_id",
    "description",
    "product_id",
    "price_id",
    "quantity",
    "name",
    "email",
    "phone",
    "line1",
    "line2",
    "postal_code",
    "city",
    "state",
    "country",
)
# Only digits, spaces and + - ( ) . : a phone number, which no spreadsheet
# can turn into a function call.
_HARMLESS = frozenset("0123456789 +-().")


def spreadsheet_safe(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula.

    Addresses are typed by customers; a name like ``=HYPERLINK(…)`` must not
    become a live formula on the warehouse's computer (OWASP "CSV injection"):
    such a cell gets a leading ``'``.
    """
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not set(text) <= _HARMLESS:
        return "'" + text
    return text


def shipment_row(shipment: Shipment) -> list[str]:
    address = shipment.address
    values: dict[str, object] = {
        **shipment.as_json(),
        **{key: address.get(key) for key in ("line1", "line2", "postal_code", "city")},
        "state": address.get("state"),
        "country": address.get("country"),
    }
    return [spreadsheet_safe(values.get(column)) for column in SHIPMENT_CSV_COLUMNS]


@main.command()
@click.option(
    "--status",
    type=click.Choice(SHIPMENT_STATUSES),
    default=None,
    help="Only shipments in this status.",
)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (one row per shipment).")
@click.option("--json", "as_json", is_flag=True, help="Print the shipments as JSON.")
def shipments(status: str | None, as_csv: bool, as_json: bool) -> None:
    """Shipments for the warehouse, oldest first."""
    import csv
    import io
    import json

    from rich.table import Table

    from fulfill.actions.shipment import one_line

    if as_csv and as_json:
        raise click.UsageError("choose one of --csv and --json")
    found = read_store(lambda store: store.deliverables.shipments(status=status))
    if as_json:
        click.echo(json.dumps([shipment.as_json() for shipment in found], indent=2))
        return
    if as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(SHIPMENT_CSV_COLUMNS)
        writer.writerows(shipment_row(shipment) for shipment in found)
        click.echo(buffer.getvalue(), nl=False)
        return
    table = Table("id", "status", "created", "item", "qty", "ship to", "session")
    for shipment in found:
        table.add_row(
            str(shipment.id),
            shipment.status,
            _when(shipment.created_at),
            shipment.description or shipment.product_id or "",
            str(shipment.quantity),
            ", ".join(p for p in (shipment.name, one_line(shipment.address)) if p),
            shipment.session_id,
        )
    out = Console()
    out.print(table)
    out.print(f"{len(found)} shipment{'' if len(found) == 1 else 's'}", highlight=False)


# The operator's commands (list, show, retry, reconcile, check, mail) live in
# fulfill/operations.py, which knows nothing of this module: they are added here.
for command in operations.COMMANDS:
    main.add_command(command)
