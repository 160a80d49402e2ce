"""What every part of ``Store`` shares: its engine, its clock, its dialect's insert, one write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import bindparam
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import BindParameter

from fulfill.store import database
from fulfill.store.dbtime import DbTime

T = TypeVar("T")

# Parameters of the statements built once are named b_…: SQLAlchemy keeps a
# column's own name for the values it sets.


def param(name: str, column: Any = None) -> BindParameter[Any]:
    """A named parameter, typed like ``column`` (so a dict goes in as JSON)."""
    return bindparam(name, type_=None if column is None else column.type)


class StoreBase:
    """The parts of ``Store`` (``repository.py``) build on these; ``Store.__init__`` sets them."""

    engine: AsyncEngine
    time: DbTime
    # ``insert`` of the engine's dialect, whose inserts can ``on_conflict_do_nothing``.
    _insert: Callable[..., Any]

    async def _write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` (synchronous) in one transaction, retrying briefly if SQLite stays
        locked (``database.write``)."""
        return await database.write(self.engine, work)
