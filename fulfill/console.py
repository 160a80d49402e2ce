"""What every command of the command line shares: its consoles, settings and store.

Both ``fulfill/cli.py`` and ``fulfill/operations.py`` print through these; they
live apart from either so that neither command module imports the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

from fulfill.errors import FulfillError
from fulfill.store import Store

T = TypeVar("T")

err = Console(stderr=True)
# Piped to grep or a file, output has no width to fit: tables keep every
# session ID and error whole instead of cutting them to 80 columns.
PIPED_WIDTH = 1000


def stdout() -> Console:
    """The console for what a command prints: the terminal's width, or wide when piped."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


def read_settings(**overrides: Any) -> Any:
    """The settings, read once per command, with the options given on its line."""
    from fulfill.config import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def print_record(record: Any) -> None:
    """A fulfillment record as a header line and a table of its items."""
    from rich.table import Column, Table
    from rich.text import Text

    # Descriptions and errors come from Stripe and receivers: printed as
    # text, never read as console markup.
    out = stdout()
    out.print(
        f"[bold]{record.session_id}[/bold]  status [bold]{record.status}[/bold]  "
        f"payment {record.payment_status}  attempts {record.attempts}",
        soft_wrap=True,
    )
    if record.last_error:
        out.print(f"[red]last error:[/red] {escape(record.last_error)}", highlight=False)
    table = Table(Column("line item", no_wrap=True), "description", "qty", "action", "status")
    for item in record.items:
        table.add_row(
            item.line_item_id,
            Text(item.description or ""),
            str(item.quantity),
            item.action or "",
            item.status,
        )
    out.print(table)


def read_store(read: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``read`` against the configured database, which must be migrated already.

    A listing never migrates: an operator's query must not change the schema
    under running servers; ``fulfill migrate`` (or ``serve``) does that.
    """
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from fulfill.store.database import migrations_pending

    settings = read_settings()

    async def go() -> T:
        store = await Store.open(settings.database_url, migrate=False, pool_size=1)
        try:
            if await migrations_pending(store.engine):
                raise FulfillError(
                    "the database is not up to date (or empty): run `fulfill migrate` first"
                )
            return await read(store)
        except SQLAlchemyError as exc:
            raise FulfillError(f"cannot read the database: {type(exc).__name__}") from exc
        finally:
            await store.close()

    return asyncio.run(go())
