"""The databases the service runs on in the bench, and reading its outcome from them.

The bench reads ``fulfillments`` directly (read-only, outside the service)
for the moment each session was fulfilled: the record's ``fulfilled_at``
has microseconds there, while the API rounds it to seconds. PostgreSQL is
used when it answers at ``FULFILL_TEST_POSTGRES`` (the test suite's
setting; default ``postgresql://postgres@127.0.0.1:5432/postgres``); the
bench creates a fresh database there and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

POSTGRES_ADMIN = os.environ.get(
    "FULFILL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
).replace("postgresql+asyncpg://", "postgresql://")

FULFILLED_SQL = "SELECT session_id, fulfilled_at FROM fulfillments WHERE status = 'fulfilled'"
# The guide's peer (bench/peers/guide.py) keeps one row per fulfilled session,
# written once its items were performed; fulfilled_at in Unix seconds.
GUIDE_FULFILLED_SQL = "SELECT session_id, fulfilled_at FROM fulfillments"


def _epoch(moment: datetime | str | float) -> float:
    """Naive UTC (as the store keeps times) → Unix seconds; Unix seconds as they are."""
    if isinstance(moment, int | float):
        return float(moment)
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC).timestamp()


class Database:
    """Where a service under test keeps its records."""

    url: str
    label: str

    async def fulfilled(self) -> dict[str, float]:
        """Each fulfilled session and when it was fulfilled (Unix seconds)."""
        raise NotImplementedError


class SQLite(Database):
    label = "SQLite"

    def __init__(self, path: Path, *, sql: str = FULFILLED_SQL) -> None:
        """A fresh file at ``path`` (any old one removed); ``sql`` reads what was fulfilled."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self.sql = sql

    def _read(self) -> dict[str, float]:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as connection:
            rows = connection.execute(self.sql).fetchall()
        return {str(session_id): _epoch(at) for session_id, at in rows}

    async def fulfilled(self) -> dict[str, float]:
        return await asyncio.to_thread(self._read)


class PostgreSQL(Database):
    label = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.url = url

    async def fulfilled(self) -> dict[str, float]:
        connection = await asyncpg.connect(self.url, timeout=10)
        try:
            rows = await connection.fetch(FULFILLED_SQL)
        finally:
            await connection.close()
        return {str(row["session_id"]): _epoch(row["fulfilled_at"]) for row in rows}


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def postgres_reachable() -> str | None:
    """None when PostgreSQL answers; otherwise why not."""
    try:
        await _admin("SELECT 1")
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@asynccontextmanager
async def postgres_database() -> AsyncIterator[PostgreSQL]:
    """A new, empty database for one run of the service; dropped afterwards."""
    name = "fulfill_bench_" + uuid.uuid4().hex[:12]
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield PostgreSQL(f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}")
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
