"""Connecting to SQLite or PostgreSQL, and applying migrations.

SQLite: WAL (readers don't block the writer), a busy timeout, and every
transaction that may write begun ``IMMEDIATE``: a deferred transaction that
reads and then writes can fail at once with "database is locked" when another
process wrote in between (SQLITE_BUSY_SNAPSHOT ignores the busy timeout);
taking the write lock up front turns that into waiting. Connections opened
with ``read`` begin no transaction at all: each statement reads one WAL
snapshot, which neither waits for the writer nor holds it up, so a page view
or a duplicate webhook never queues behind fulfillments. Writers take turns
(``WriteTurn``) before they ask SQLite: an ``asyncio.Lock`` in the process,
an ``flock`` on ``<database>.writer`` across processes. Waiting in SQLite's
busy handler means sleeping 1, 2, 5 … 100 ms between polls, so under load
most of the lock's time was spent asleep; the turn is handed over at once.

PostgreSQL: asyncpg with a pool; migrations under an advisory lock so that
several instances starting at once apply them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import stamina
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Select, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# An arbitrary constant shared by every instance: the key of the advisory lock
# that serialises migrations on PostgreSQL.
MIGRATION_LOCK_KEY = 0x46554C46
# The execution option that marks a connection as only reading (see ``read``).
READ_ONLY = "fulfill_read_only"


class WriteTurn:
    """Whose turn it is to write to one SQLite file: one writer at a time, without sleeping.

    In this process an ``asyncio.Lock``; across processes an exclusive
    ``flock`` on ``<database>.writer`` next to the file, which the kernel
    hands to the next waiter the moment it is released (SQLite's own lock can
    only be polled, by sleeps of up to 100 ms). It only orders writers: each
    still begins ``IMMEDIATE``, so SQLite's lock keeps deciding, and a writer
    that does not take the turn (another tool) is merely not queued.
    """

    def __init__(self, database: str | None) -> None:
        self.lock = asyncio.Lock()
        self.path = f"{database}.writer" if database and database != ":memory:" else None
        self._fd: int | None = None
        self._closer: weakref.finalize[Any, Any] | None = None

    def _file(self) -> int | None:
        if self._fd is None and self.path is not None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self.path = None  # a read-only folder: SQLite's own lock alone
            else:
                # Closed with the engine (``dispose``), or at the latest when collected.
                self._closer = weakref.finalize(self, os.close, self._fd)
        return self._fd

    async def __aenter__(self) -> None:
        await self.lock.acquire()
        fd = self._file()
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except BaseException:
            self.lock.release()
            raise
        waiting = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread takes the file lock whatever happens now: give it and
            # this process's turn back only then, or another writer here would
            # believe it held a lock the thread is about to take.
            waiting.add_done_callback(self._give_back)
            raise
        except BaseException:
            self.lock.release()
            raise

    def _give_back(self, waiting: asyncio.Future[None]) -> None:
        if self._fd is not None and not waiting.cancelled() and waiting.exception() is None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.lock.release()

    async def __aexit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.lock.release()

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
        self._fd = None


# One turn per SQLite engine (see the module docstring); weak, so that an
# engine disposed of takes its turn with it.
_write_turns: weakref.WeakKeyDictionary[AsyncEngine, WriteTurn] = weakref.WeakKeyDictionary()


def async_url(url: str) -> str:
    """``sqlite:///x.db`` → aiosqlite; ``postgresql://…`` → asyncpg."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    full = async_url(url)
    parsed = make_url(full)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            full,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            # No overflow: a connection beyond the pool would be opened (a
            # thread, a file, the pragmas) for one statement of SQLite's
            # microseconds and closed again, so a burst of more concurrent
            # requests than the pool holds made every request pay for it
            # (2x the CPU of a landing page at 32 at once). They wait their
            # turn instead; writers take one connection at a time anyway.
            max_overflow=0,
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        full, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            return  # autocommit: each statement is its own snapshot
        # Straight to the driver: one trip to aiosqlite's thread, where a
        # statement through SQLAlchemy costs four and its bookkeeping.
        connection.connection.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: driver.execute("BEGIN IMMEDIATE")
        )


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(_alembic_config(connection), "head")


def _pending(connection: Connection) -> bool:
    script = ScriptDirectory.from_config(_alembic_config(connection))
    current = MigrationContext.configure(connection).get_current_heads()
    return set(current) != set(script.get_heads())


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration (safe to call from several instances at once)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def migrations_pending(engine: AsyncEngine) -> bool:
    async with read(engine) as connection:
        return await connection.run_sync(_pending)


@contextlib.asynccontextmanager
async def read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reading only: on SQLite it never takes the write lock.

    Each statement reads one consistent snapshot (on SQLite there is no
    transaction around several): a read that must agree with itself is one
    statement, as ``Store.get`` is. Nothing may be written through it; writes
    go through ``write``.
    """
    async with engine.connect() as connection:
        await connection.execution_options(**{READ_ONLY: True})
        yield connection


# What aiosqlite and asyncpg raise when called directly (``Query``), and never
# derive from SQLAlchemy's exceptions. OSError covers ConnectionError and
# TimeoutError (a socket cut or stalled under asyncpg).
DRIVER_ERRORS = (
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)
_PEP_249 = {
    kind.__name__: kind
    for kind in (
        sa_exc.IntegrityError,
        sa_exc.ProgrammingError,
        sa_exc.DataError,
        sa_exc.NotSupportedError,
        sa_exc.InternalError,
        sa_exc.InterfaceError,
        sa_exc.OperationalError,
        sa_exc.DatabaseError,
    )
}
# asyncpg's classes, by SQLSTATE class (23, 42, 22), the first that matches.
_ASYNCPG_KINDS: tuple[tuple[type[BaseException], type[sa_exc.DBAPIError]], ...] = (
    (asyncpg.exceptions.IntegrityConstraintViolationError, sa_exc.IntegrityError),
    (asyncpg.exceptions.SyntaxOrAccessError, sa_exc.ProgrammingError),
    (asyncpg.exceptions.DataError, sa_exc.DataError),
    (asyncpg.InterfaceError, sa_exc.InterfaceError),
    (asyncpg.exceptions.InternalClientError, sa_exc.InterfaceError),
)


def driver_error(
    error: BaseException, sql: str, params: Sequence[Any], *, lost: bool = False
) -> sa_exc.DBAPIError:
    """A driver's exception as the ``sqlalchemy.exc.DBAPIError`` it stands for.

    sqlite3's classes carry PEP 249's names (``OperationalError``,
    ``IntegrityError``, …), which SQLAlchemy's own classes mirror; asyncpg's
    are told by their SQLSTATE class. A lost connection, and whatever else
    is about the database's operation rather than the statement (a shutdown,
    a cancelled query, a lock timeout), is an ``OperationalError``.
    """
    kind: type[sa_exc.DBAPIError] = sa_exc.OperationalError
    if isinstance(error, sqlite3.Error):
        names = (c.__name__ for c in type(error).__mro__)
        kind = next((_PEP_249[name] for name in names if name in _PEP_249), kind)
    elif not lost:
        for driver_kind, sqlalchemy_kind in _ASYNCPG_KINDS:
            if isinstance(error, driver_kind):
                kind = sqlalchemy_kind
                break
    return kind(sql, list(params), error, connection_invalidated=lost)


def _connection_lost(driver: Any, error: BaseException) -> bool:
    if isinstance(error, OSError):
        return True
    is_closed = getattr(driver, "is_closed", None)  # asyncpg's; SQLite has no connection to lose
    return bool(is_closed()) if callable(is_closed) else False


class Query:
    """A read of the hot paths, run on the driver directly: one trip, no bookkeeping.

    SQLAlchemy's way through a statement costs 150-250 µs of CPU (cursor,
    result and pool bookkeeping; on aiosqlite four trips to the driver's
    thread), more than the database takes to answer and more than the
    landing page or a redelivered webhook spends on anything else. Here the
    same SQL, compiled once by SQLAlchemy for the engine's dialect, goes to
    the driver in one call (aiosqlite's ``execute_fetchall``, asyncpg's
    ``fetch``) on a connection from the same pool, and every value is decoded
    by its column type's own result processor for that dialect: the rows are
    those SQLAlchemy would return. Any other driver takes SQLAlchemy's path.

    The errors are SQLAlchemy's too: what the driver raises (``sqlite3.Error``,
    ``asyncpg.PostgresError``, ``asyncpg.InterfaceError``, an ``OSError`` of a
    broken socket) is raised as the ``sqlalchemy.exc.DBAPIError`` subclass it
    stands for, the original as its ``orig`` and cause, so that a caller that
    answers 503 for a database away (``except SQLAlchemyError``) does so for
    this path as for every other instead of letting a 500 through. A
    connection found broken is invalidated, not handed back to the pool.
    """

    def __init__(self, statement: Select[Any] | Any, engine: AsyncEngine) -> None:
        self.statement = statement
        self.driver = engine.dialect.driver  # "aiosqlite", "asyncpg", …
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.names: Sequence[str] = compiled.positiontup or ()
        self.processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]

    async def rows(self, engine: AsyncEngine, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        if self.driver not in ("aiosqlite", "asyncpg"):
            async with read(engine) as connection:
                return list((await connection.execute(self.statement, params)).all())
        values = [params[name] for name in self.names]
        try:
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                try:
                    if self.driver == "aiosqlite":
                        found = await driver.execute_fetchall(self.sql, values)
                    else:
                        found = await driver.fetch(self.sql, *values)
                except DRIVER_ERRORS as exc:
                    lost = _connection_lost(driver, exc)
                    if lost:
                        await connection.invalidate()
                    raise driver_error(exc, self.sql, values, lost=lost) from exc
        except DRIVER_ERRORS as exc:
            # Opening a connection: asyncpg's connect lets an OSError through as it is.
            raise driver_error(exc, self.sql, values, lost=True) from exc
        processors = self.processors
        return [
            [
                value if process is None else process(value)
                for process, value in zip(processors, row, strict=True)
            ]
            for row in found
        ]


async def write(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction, retrying briefly if SQLite stays locked.

    ``work`` must only use the connection it is given: on SQLite the
    process's other writers wait for it.
    """
    turn: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
    if is_sqlite(engine):
        turn = _write_turns.get(engine) or _write_turns.setdefault(
            engine, WriteTurn(engine.url.database)
        )

    async def once() -> T:
        async with engine.begin() as connection:
            return await work(connection)

    def locked(exc: Exception) -> bool:
        return isinstance(exc, OperationalError) and "locked" in str(exc).lower()

    async with turn:
        # The first try without stamina: every write of the service passes
        # here, and a retry context costs about 17 µs to build against 0.2 µs
        # for a plain call (measured with stamina 26.1); it is needed only once
        # SQLite stayed locked past its busy timeout.
        try:
            return await once()
        except OperationalError as exc:
            if not locked(exc):
                raise
        async for attempt in stamina.retry_context(
            on=locked,
            attempts=4,
            timeout=None,
            wait_initial=0.05,
            wait_max=0.2,
            wait_jitter=0.0,
        ):
            with attempt:
                return await once()
    raise AssertionError("unreachable")


async def dispose(engine: AsyncEngine) -> None:
    """Close the engine's connections (and its writers' lock file)."""
    turn = _write_turns.pop(engine, None)
    if turn is not None:
        turn.close()
    await engine.dispose()


async def ping(engine: AsyncEngine, timeout: float = 2.0) -> bool:
    """True when the database answers within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout), read(engine) as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
