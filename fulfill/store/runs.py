"""Reconcile runs: the checkpoint that lets an interrupted sweep resume, and the sweep lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from fulfill.store.repository import Store
from fulfill.store.schema import locks, reconcile_runs

# A new lock's expiry: long past on any clock.
NEVER_HELD = datetime(1970, 1, 1)


@dataclass
class ReconcileRun:
    id: int
    since: datetime
    cursor: str | None
    started_at: datetime
    finished_at: datetime | None = None
    results: dict[str, Any] | None = None


class Runs:
    """Checkpoints of reconcile sweeps, and a lease so one instance sweeps at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def unfinished(self) -> ReconcileRun | None:
        """The latest sweep that did not finish, to resume."""
        async with self.store.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(reconcile_runs)
                    .where(reconcile_runs.c.finished_at.is_(None))
                    .order_by(reconcile_runs.c.id.desc())
                    .limit(1)
                )
            ).first()
        return _run(row._mapping) if row else None

    async def start(self, since: datetime, now: datetime) -> ReconcileRun:
        def work(connection: Connection) -> ReconcileRun:
            # A new sweep supersedes any unfinished one.
            connection.execute(
                update(reconcile_runs)
                .where(reconcile_runs.c.finished_at.is_(None))
                .values(finished_at=now, results={"abandoned": True})
            )
            result = connection.execute(
                insert(reconcile_runs)
                .values(since=since, cursor=None, started_at=now, updated_at=now)
                .returning(reconcile_runs.c.id)
            )
            return ReconcileRun(
                id=int(result.scalar_one()), since=since, cursor=None, started_at=now
            )

        return await self.store._write(work)

    async def advance(self, run_id: int, cursor: str, now: datetime) -> None:
        def work(connection: Connection) -> None:
            connection.execute(
                update(reconcile_runs)
                .where(reconcile_runs.c.id == run_id)
                .values(cursor=cursor, updated_at=now)
            )

        await self.store._write(work)

    async def finish(self, run_id: int, results: dict[str, Any], now: datetime) -> None:
        def work(connection: Connection) -> None:
            connection.execute(
                update(reconcile_runs)
                .where(reconcile_runs.c.id == run_id)
                .values(finished_at=now, updated_at=now, results=results)
            )

        await self.store._write(work)

    async def acquire(self, name: str, owner: str, lease: float) -> bool:
        """Take the named lock for ``lease`` seconds if it has expired (one winner).

        The holder does not renew it either: it is a schedule as much as a
        lock, so whoever runs next runs one lease later. Judged and written
        on the database's clock (``DbTime``), as every lease.
        """
        time = self.store.time

        def work(connection: Connection) -> bool:
            connection.execute(
                self.store._insert(locks)
                .values(name=name, owner=None, expires_at=NEVER_HELD)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            result = connection.execute(
                update(locks)
                .where(locks.c.name == name, locks.c.expires_at < time.now)
                .values(owner=owner, expires_at=time.plus("b_lease")),
                time.params(b_lease=lease),
            )
            return bool(result.rowcount)

        return await self.store._write(work)


def _run(row: Any) -> ReconcileRun:
    return ReconcileRun(
        id=row["id"],
        since=row["since"],
        cursor=row["cursor"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        results=row["results"],
    )
