"""Database time: the one clock every lease is written with and judged by.

Two instances on one PostgreSQL must agree whether a lease has run out; their
hosts' clocks need not agree at all. Instances 40 s apart performed half the
line items of a run twice: each wrote and compared leases with its own wall
clock, so the one ahead took over leases that were still being renewed. On
PostgreSQL, therefore, a lease's end is computed (``clock_timestamp() +
lease``) and every lease compared, inside the statement, with the clock of the
one machine all instances share. ``clock_timestamp()`` rather than ``now()``:
``now()`` is when the transaction began, and a statement that waited for a
row lock would judge with a moment already past.

On SQLite every process is on one host; the moment is bound by the process
from ``LocalClock``: the wall clock read once, advanced by ``CLOCK_MONOTONIC``.
An NTP step or an operator setting the date then neither makes live leases
look expired (a step forward: a takeover while the owner still works) nor
stretches dead ones (a step back). Processes started on either side of a step
disagree by the step; ``serve --workers N`` starts them together.

Statements are built once with ``DbTime.now`` and ``DbTime.plus(name)`` in
them and executed with ``DbTime.params(name=seconds)``, which binds what the
dialect needs: nothing of the clock on PostgreSQL, the moments on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Float, bindparam, literal_column
from sqlalchemy.sql.elements import ColumnElement


class LocalClock:
    """Naive UTC wall time that moves only with the monotonic clock (see the module)."""

    def __init__(
        self,
        wall: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        start = wall() if wall is not None else datetime.now(UTC).replace(tzinfo=None)
        self._anchor = (start, monotonic())

    def __call__(self) -> datetime:
        start, at = self._anchor
        return start + timedelta(seconds=self._monotonic() - at)


class DbTime:
    """SQL for "now" and "now + seconds" on the clock that judges leases."""

    def __init__(self, dialect: str, clock: Callable[[], datetime] | None = None) -> None:
        self.in_database = dialect == "postgresql"
        self.clock = clock or LocalClock()
        self.now: ColumnElement[datetime]
        if self.in_database:
            # timestamp without time zone, in UTC: what the columns hold.
            self.now = literal_column("timezone('UTC', clock_timestamp())", DateTime())
        else:
            self.now = bindparam("t_now", type_=DateTime())

    def plus(self, name: str) -> ColumnElement[datetime]:
        """``now`` plus the seconds bound as ``name`` (see ``params``)."""
        if self.in_database:
            seconds = bindparam(name, type_=Float())
            return self.now + literal_column("interval '1 second'") * seconds
        return bindparam(f"{name}_at", type_=DateTime())

    def params(self, **seconds: float) -> dict[str, Any]:
        """The values a statement built with ``now`` and ``plus(name)`` needs."""
        if self.in_database:
            return dict(seconds)
        now = self.clock()
        values: dict[str, Any] = {"t_now": now}
        for name, delta in seconds.items():
            values[f"{name}_at"] = now + timedelta(seconds=delta)
        return values
