"""Every read and write of fulfillment state, as atomic statements.

The claim is one conditional ``UPDATE``: it succeeds for exactly one caller,
whichever process or host it runs in, because the database applies the
``WHERE`` and the ``SET`` atomically (a row lock on PostgreSQL, the write lock
on SQLite). Everything that must not happen twice is decided by such a
statement's row count, never by a read followed by a write.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from fulfill.store import database
from fulfill.store.batch import GroupCommit
from fulfill.store.dbtime import DbTime
from fulfill.store.deliverables import Deliverables
from fulfill.store.emails import Emails
from fulfill.store.event_log import EVENT_RECORDED, EventLog, set_one_outcome
from fulfill.store.leases import Leases, LeaseStatements
from fulfill.store.listing import Listing
from fulfill.store.record_query import RecordReads, one_record_query
from fulfill.store.record_writes import RecordWrites
from fulfill.store.schema import fulfillment_items, fulfillments, webhook_events


class Store(RecordReads, Listing, RecordWrites, Leases, EventLog):
    """The database of one service: records, items, triggers, the event inbox.

    One class for its callers; each concern's statements are in its own module:
    ``record_query`` (one record), ``listing``, ``record_writes``, ``leases``
    (claiming and performing), ``event_log`` (the webhook events).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # The clock leases are written with and judged by (the database's on PostgreSQL).
        self.time = DbTime(engine.dialect.name)
        self._insert = sqlite_insert if database.is_sqlite(engine) else pg_insert
        self._leases = LeaseStatements(self.time)
        self._one_record = database.Query(one_record_query(self.time), engine)
        self._event_recorded = database.Query(EVENT_RECORDED, engine)
        # Inserts that a conflict turns into nothing, per dialect, built once.
        self._record_once = self._insert(fulfillments).on_conflict_do_nothing(
            index_elements=["session_id"]
        )
        self._items_once = self._insert(fulfillment_items).on_conflict_do_nothing(
            index_elements=["session_id", "line_item_id"]
        )
        self._event_once = self._insert(webhook_events).on_conflict_do_nothing(
            index_elements=["event_id"]
        )
        self._record_events = GroupCommit(self._write, self._record_one_event)
        self._event_outcomes = GroupCommit(self._write, set_one_outcome)
        # What the built-in actions deliver: their own queries, same database.
        self.deliverables = Deliverables(engine)
        self.emails = Emails(engine, self.time)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, pool_size: int = 10) -> Store:
        engine = database.create_engine(url, pool_size=pool_size)
        if migrate:
            await database.migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        await database.dispose(self.engine)

    async def ping(self) -> bool:
        return await database.ping(self.engine)

    async def ready(self) -> tuple[bool, str]:
        """Readiness: reachable, and no migration pending."""
        if not await self.ping():
            return False, "database unreachable"
        try:
            if await database.migrations_pending(self.engine):
                return False, "migrations pending: run `fulfill migrate`"
        except Exception as exc:
            return False, f"database error: {type(exc).__name__}"
        return True, "ok"
