"""The database layer under contention: who waits for SQLite's write lock, and who does not.

Another process holding the write lock is played by a plain ``sqlite3``
connection in ``BEGIN IMMEDIATE``: reads (the record, a redelivered event,
readiness) must answer at once through it; writes must wait for it, and
still be transactions that hold the lock themselves.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    DatabaseError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import create_async_engine

from fulfill.engine import utcnow
from fulfill.records import MAY_REPLACE, PENDING, SessionSnapshot
from fulfill.store import Store, database
from fulfill.store.database import async_url, driver_error, write

SESSION_ID = "cs_test_database0001"
NOW = utcnow()


def snapshot(items: int = 3) -> SessionSnapshot:
    session = {
        "id": SESSION_ID,
        "status": "complete",
        "payment_status": "paid",
        "livemode": False,
        "mode": "payment",
        "customer_details": {"email": "ada@example.com", "name": "Ada"},
        "amount_total": 300,
        "currency": "eur",
        "metadata": {"order": "42"},
    }
    line_items = [
        {
            "id": f"li_{n}",
            "description": f"Item {n}",
            "quantity": n + 1,
            "amount_total": 100,
            "currency": "eur",
            "price": {"id": f"price_{n}", "product": {"id": f"prod_{n}"}},
        }
        for n in range(items)
    ]
    return SessionSnapshot.from_stripe(session, line_items)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path / 'fulfill.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@contextmanager
def another_writer(store: Store) -> Iterator[sqlite3.Connection]:
    """Another process in the middle of a write transaction."""
    path = store.engine.url.database
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_one_read_returns_the_record_its_items_in_order_and_its_triggers(
    store: Store,
) -> None:
    now = utcnow()
    await store.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now)
    for trigger in ("webhook:evt_1", "landing", "retry"):
        await store.add_trigger(SESSION_ID, trigger, now)
    record = await store.get(SESSION_ID)
    assert record is not None
    assert record.status == PENDING
    assert record.customer == {"email": "ada@example.com", "name": "Ada"}
    assert record.metadata == {"order": "42"}
    assert record.created_at == now
    assert [i.line_item_id for i in record.items] == ["li_0", "li_1", "li_2"]
    assert [i.quantity for i in record.items] == [1, 2, 3]
    assert record.triggers == ["webhook:evt_1", "landing", "retry"]
    assert await store.get("cs_test_nothing") is None


async def test_reads_answer_while_another_process_holds_the_write_lock(store: Store) -> None:
    now = utcnow()
    await store.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now)
    assert await store.record_event(
        "evt_1", "checkout.session.completed", SESSION_ID, False, "received", now
    )
    with another_writer(store):
        async with asyncio.timeout(2):
            record = await store.get(SESSION_ID)
            redelivered = await store.record_event(
                "evt_1", "checkout.session.completed", SESSION_ID, False, "received", now
            )
            ready = await store.ready()
    assert record is not None
    assert redelivered is False, "a redelivery is told without the write lock"
    assert ready == (True, "ok")


async def test_writes_wait_for_another_process_and_hold_the_lock_themselves(
    store: Store,
) -> None:
    now = utcnow()
    with another_writer(store) as other:
        pending = asyncio.create_task(store.add_trigger(SESSION_ID, "landing", now))
        await asyncio.sleep(0.3)
        assert not pending.done(), "the write waits for the other process's transaction"
        other.execute("ROLLBACK")
        other.execute("BEGIN")  # released; the fixture's ROLLBACK ends this one
        await asyncio.wait_for(pending, 5)

    def holds_lock(connection: Connection) -> None:
        intruder = sqlite3.connect(store.engine.url.database or "", timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                intruder.execute("BEGIN IMMEDIATE")
        finally:
            intruder.close()

    await write(store.engine, holds_lock)


async def test_many_concurrent_writers_in_one_process_all_commit(store: Store) -> None:
    now = utcnow()
    await store.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now)
    await asyncio.gather(*(store.add_trigger(SESSION_ID, f"t{n}", now) for n in range(200)))
    record = await store.get(SESSION_ID)
    assert record is not None
    assert sorted(record.triggers) == sorted(f"t{n}" for n in range(200))


async def test_observe_records_the_first_trigger_with_the_record(store: Store) -> None:
    now = utcnow()
    await store.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now, trigger="webhook:evt_1")
    await store.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now)
    record = await store.get(SESSION_ID)
    assert record is not None
    assert record.triggers == ["webhook:evt_1"]
    assert len(record.items) == 3, "observed again, the items are not doubled"


async def test_an_items_action_is_written_with_its_outcome(store: Store) -> None:
    now = utcnow()
    await store.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now)
    assert await store.claim(SESSION_ID, "me", 60, now)
    await store.item_failed(SESSION_ID, "li_0", "receiver down", action="webhook")
    assert await store.item_done(
        SESSION_ID, "li_1", "me", {"links": []}, now, lease=60, action="download"
    )
    assert await store.item_done(SESSION_ID, "li_0", "me", {"message": "ok"}, now, lease=60)
    assert not await store.item_done(
        SESSION_ID, "li_2", "someone else", {}, now, lease=60, action="x"
    )
    record = await store.get(SESSION_ID)
    assert record is not None
    items = {i.line_item_id: i for i in record.items}
    assert (items["li_0"].status, items["li_0"].action) == ("done", "webhook")
    assert items["li_0"].result == {"message": "ok"}
    assert items["li_0"].error is None
    assert (items["li_1"].status, items["li_1"].action, items["li_1"].result) == (
        "done",
        "download",
        {"links": []},
    )
    assert (items["li_2"].status, items["li_2"].action) == ("pending", None)
    assert not await store.finish(SESSION_ID, "me", now), "an item is not done yet"
    assert await store.item_done(SESSION_ID, "li_2", "me", {}, now, lease=60, action="license")
    assert await store.finish(SESSION_ID, "me", now)
    record = await store.get(SESSION_ID)
    assert record is not None
    assert (record.status, record.fulfilled_at) == ("fulfilled", now)


async def test_the_last_item_and_the_sessions_end_in_one_write(store: Store) -> None:
    now = utcnow()
    await store.observe(snapshot(2), PENDING, MAY_REPLACE[PENDING], now)
    assert await store.claim(SESSION_ID, "me", 60, now)
    assert await store.finish_with_item(SESSION_ID, "li_0", "me", {}, now, lease=60) == (
        True,
        False,
    ), "an item is still pending: not fulfilled"
    assert await store.finish_with_item(SESSION_ID, "li_1", "other", {}, now, lease=60) == (
        False,
        False,
    )
    assert await store.finish_with_item(
        SESSION_ID, "li_1", "me", {}, now, lease=60, action="x"
    ) == (
        True,
        True,
    )
    record = await store.get(SESSION_ID)
    assert record is not None
    assert record.status == "fulfilled"
    assert [i.status for i in record.items] == ["done", "done"]


async def test_writers_of_two_processes_take_turns_and_a_cancelled_one_gives_its_turn_back(
    tmp_path: Path,
) -> None:
    # Two engines on one file hold two open files of its lock, as two processes would.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = await Store.open(url), await Store.open(url, migrate=False)
    try:
        now = utcnow()
        await first.observe(snapshot(), PENDING, MAY_REPLACE[PENDING], now)
        # The transaction runs in the writer thread: it waits on threading events.
        inside, leave = threading.Event(), threading.Event()

        def slow(connection: Connection) -> None:
            inside.set()
            leave.wait(10)

        holder = asyncio.create_task(write(first.engine, slow))
        assert await asyncio.to_thread(inside.wait, 10)
        waiter = asyncio.create_task(second.add_trigger(SESSION_ID, "second", now))
        await asyncio.sleep(0.2)
        assert not waiter.done(), "the other process's writer waits for its turn"
        leave.set()
        async with asyncio.timeout(5):
            await holder
            await waiter

        # A writer cancelled while it waits for its turn stops waiting at once,
        # and its transaction never begins (it gives the turn back once it gets it).
        inside.clear()
        leave.clear()
        holder = asyncio.create_task(write(first.engine, slow))
        assert await asyncio.to_thread(inside.wait, 10)
        waiter = asyncio.create_task(second.add_trigger(SESSION_ID, "cancelled", now))
        await asyncio.sleep(0.2)
        waiter.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await waiter
        leave.set()
        async with asyncio.timeout(5):
            await holder
            await second.add_trigger(SESSION_ID, "after", now)
            await first.add_trigger(SESSION_ID, "first again", now)
        record = await first.get(SESSION_ID)
        assert record is not None
        assert record.triggers == ["second", "after", "first again"]
    finally:
        await first.close()
        await second.close()


# -- driver errors on the direct read path ------------------------------------------------


async def test_a_driver_error_on_the_direct_read_path_is_a_sqlalchemy_error(
    database_url: str,
) -> None:
    """``Query`` talks to aiosqlite and asyncpg directly; what they raise is translated.

    The webhook and landing handlers answer 503 for ``SQLAlchemyError``: a
    driver exception of its own kind would get past them as a 500.
    """
    store = await Store.open(database_url)
    try:
        async with store.engine.begin() as connection:
            await connection.execute(text("DROP TABLE webhook_events"))
        with pytest.raises(SQLAlchemyError) as info:
            await store.record_event("evt_1", "checkout.session.completed", None, False, "x", NOW)
        error = info.value
        assert isinstance(error, DBAPIError)
        assert isinstance(error.orig, sqlite3.Error | asyncpg.PostgresError)
        assert error.__cause__ is error.orig
        # "no such table" is an OperationalError in sqlite3's (PEP 249) terms;
        # PostgreSQL's undefined table (SQLSTATE 42P01) a ProgrammingError.
        expected = ProgrammingError if database_url.startswith("postgresql") else OperationalError
        assert type(error) is expected
        assert not error.connection_invalidated
        # The connection was fine: the pool goes on with it.
        assert await store.get(SESSION_ID) is None
    finally:
        await store.close()


def test_driver_errors_are_named_as_pep_249_names_them() -> None:
    assert type(driver_error(sqlite3.IntegrityError("x"), "SELECT 1", [])) is IntegrityError
    assert type(driver_error(sqlite3.DatabaseError("x"), "SELECT 1", [])) is DatabaseError
    for lost in (ConnectionResetError("peer"), asyncpg.InterfaceError("connection is closed")):
        error = driver_error(lost, "SELECT 1", [], lost=True)
        assert type(error) is OperationalError
        assert error.connection_invalidated
    assert type(driver_error(asyncpg.InterfaceError("x"), "SELECT 1", [])) is InterfaceError


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_backend_terminated_under_a_pooled_connection_is_an_operational_error(
    database_url: str,
) -> None:
    """The connection dies between the pool's ping and the query (here: no ping at all)."""
    await (await Store.open(database_url)).close()  # migrated
    engine = create_async_engine(async_url(database_url), pool_size=2, pool_pre_ping=False)
    store = Store(engine)
    try:
        assert await store.get(SESSION_ID) is None  # a connection now waits in the pool
        await terminate_backends(database_url)
        with pytest.raises(OperationalError) as info:
            await store.get(SESSION_ID)
        assert isinstance(info.value.orig, asyncpg.PostgresError | asyncpg.InterfaceError)
        assert info.value.connection_invalidated
        # Invalidated, not handed back to the pool: the next read opens a new one.
        assert await store.get(SESSION_ID) is None
    finally:
        await store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_connection_idle_in_the_pool_is_pinged_and_replaced_when_its_backend_died(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping for a connection in steady use; one idle longer than a moment is pinged first."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    pings: list[bool] = []
    real_ping = AsyncAdapt_asyncpg_connection.ping

    def ping(self: AsyncAdapt_asyncpg_connection) -> None:
        try:
            real_ping(self)  # type: ignore[no-untyped-call]
        except Exception:
            pings.append(False)
            raise
        pings.append(True)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", ping)
    store = await Store.open(database_url)
    try:
        for _ in range(3):
            assert await store.get(SESSION_ID) is None
        assert pings == [], "a connection in steady use is not pinged"
        # The server ended every backend: the pooled connection is dead. Past the
        # idle time it is pinged, found dead and replaced; the read and the write work.
        await terminate_backends(database_url)
        monkeypatch.setattr(database, "IDLE_BEFORE_PING", 0.0)
        assert await store.get(SESSION_ID) is None
        assert pings[0] is False
        assert await store.record_event(
            "evt_after", "checkout.session.completed", SESSION_ID, False, "received", utcnow()
        )
    finally:
        await store.close()


async def terminate_backends(url: str) -> None:
    """End every other session on the test's database, and wait until they are gone."""
    admin = await asyncpg.connect(url, timeout=10)
    try:
        ended = await admin.fetch(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert ended
        assert all(row[0] for row in ended)
    finally:
        await admin.close()
