"""Every read and write of fulfillment state, as atomic statements.

The claim is one conditional ``UPDATE``: it succeeds for exactly one caller,
whichever process or host it runs in, because the database applies the
``WHERE`` and the ``SET`` atomically (a row lock on PostgreSQL, the write lock
on SQLite). Everything that must not happen twice is decided by such a
statement's row count, never by a read followed by a write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    CompoundSelect,
    Integer,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import BindParameter

from fulfill.records import (
    AWAITING_PAYMENT,
    FAILED,
    FULFILLED,
    FULFILLING,
    ITEM_DONE,
    ITEM_FAILED,
    ITEM_PENDING,
    PAYMENT_FAILED,
    PENDING,
    FulfillmentRecord,
    ItemRecord,
    SessionSnapshot,
)
from fulfill.store import database
from fulfill.store.dbtime import DbTime
from fulfill.store.deliverables import Deliverables
from fulfill.store.emails import Emails, QueuedEmail, enqueue
from fulfill.store.schema import (
    fulfillment_items,
    fulfillment_triggers,
    fulfillments,
    webhook_events,
)

T = TypeVar("T")

CLAIMABLE = (PENDING, FAILED)
# Statuses that wait on Stripe (a delayed payment): asked about at most once per interval.
CHECKED = (AWAITING_PAYMENT, PAYMENT_FAILED)

# -- one record in one indexed read --------------------------------------------------
#
# Every trigger reads the record at least once, and the landing page and a
# duplicate webhook do little else: so the record, its items and its triggers
# come back from one statement, a UNION ALL of three lookups by primary key or
# index, each row tagged with the part it belongs to. Built once: SQLAlchemy
# then only binds the session ID.

_ITEM_FIELDS = (
    "line_item_id",
    "position",
    "price_id",
    "product_id",
    "description",
    "quantity",
    "amount_total",
    "currency",
    "action",
    "status",
    "result",
    "error",
)
_RECORD_FIELDS = (*(column.name for column in fulfillments.c), "lease_live", "retry_due")
_PART_RECORD, _PART_ITEM, _PART_TRIGGER = 0, 1, 2


def _one_record_query(time: DbTime) -> CompoundSelect[Any]:
    session_id: BindParameter[str] = bindparam("session_id")
    # Whether the lease is live and a retry due, judged by the database's clock
    # in the same read: the engine decides with these, never with its host's.
    judged: list[tuple[str, Any]] = [
        (f"r_{name}", case((condition, true()), else_=false()))
        for name, condition in (
            ("lease_live", fulfillments.c.lease_expires_at >= time.now),
            ("retry_due", fulfillments.c.next_attempt_at <= time.now),
        )
    ]
    groups: tuple[list[tuple[str, Any]], ...] = (
        [(f"r_{c.name}", c) for c in fulfillments.c] + judged,
        [(f"i_{name}", fulfillment_items.c[name]) for name in _ITEM_FIELDS],
        [("t_trigger", fulfillment_triggers.c.trigger), ("t_id", fulfillment_triggers.c.id)],
    )
    wheres = (
        fulfillments.c.session_id == session_id,
        fulfillment_items.c.session_id == session_id,
        fulfillment_triggers.c.session_id == session_id,
    )
    parts = []
    for part, where in enumerate(wheres):
        columns: list[Any] = [literal_column(str(part), Integer).label("part")]
        for group, labelled in enumerate(groups):
            columns += [
                column.label(label)
                if group == part
                # Typed NULLs: PostgreSQL needs every column's type in every
                # SELECT, and SQLAlchemy decodes every row with the first one's.
                else cast(null(), column.type).label(label)
                for label, column in labelled
            ]
        parts.append(select(*columns).where(where))
    query = union_all(*parts)
    return query.order_by(
        query.selected_columns.part,
        query.selected_columns.i_position,
        query.selected_columns.t_id,
    )


_EVENT_RECORDED = select(webhook_events.c.event_id).where(
    webhook_events.c.event_id == bindparam("event_id")
)

# -- the writes of every fulfillment, built once ----------------------------------------
#
# A statement built per call costs SQLAlchemy more (expressions, cache key)
# than SQLite takes to run it; these only bind values. Parameters are named
# b_…: SQLAlchemy keeps a column's own name for the values it sets.


def _param(name: str, column: Any = None) -> BindParameter[Any]:
    """A named parameter, typed like ``column`` (so a dict goes in as JSON)."""
    return bindparam(name, type_=None if column is None else column.type)


_ADD_TRIGGER = insert(fulfillment_triggers)
_HELD_BY_OWNER = and_(
    fulfillments.c.session_id == _param("b_session_id"),
    fulfillments.c.status == FULFILLING,
    fulfillments.c.lease_owner == _param("b_owner"),
)


class _LeaseStatements:
    """The writes that take, keep and judge a lease, on ``DbTime``'s clock.

    Built once per store: on PostgreSQL the clock is ``clock_timestamp()``
    inside each statement, on SQLite a bound moment of the process's clock.
    """

    def __init__(self, time: DbTime) -> None:
        lease_ends = time.plus("b_lease")
        self.claim = (
            update(fulfillments)
            .where(
                fulfillments.c.session_id == _param("b_session_id"),
                or_(
                    fulfillments.c.status.in_(CLAIMABLE),
                    and_(
                        fulfillments.c.status == FULFILLING,
                        fulfillments.c.lease_expires_at < time.now,
                    ),
                ),
            )
            .values(
                status=FULFILLING,
                lease_owner=_param("b_owner"),
                lease_expires_at=lease_ends,
                attempts=fulfillments.c.attempts + 1,
                updated_at=_param("b_now", fulfillments.c.updated_at),
            )
        )
        # Extends the lease while the owner still holds it. Recording an item
        # does this first, in the item's transaction: the row lock it takes
        # makes a takeover wait until the item is recorded (SQLite holds the
        # write lock already: BEGIN IMMEDIATE), and the write is then proof
        # of a lease that runs a whole lease from now, not of one that might
        # be about to end.
        self.renew = update(fulfillments).where(_HELD_BY_OWNER).values(lease_expires_at=lease_ends)
        # ``failed``, to be retried ``b_retry`` seconds from now, or (``fail_for_good``)
        # only when an operator says so.
        failed = update(fulfillments).where(_HELD_BY_OWNER)
        settled = {
            "status": FAILED,
            "last_error": _param("b_error"),
            "updated_at": _param("b_now", fulfillments.c.updated_at),
            "lease_owner": None,
            "lease_expires_at": None,
        }
        self.fail = failed.values(next_attempt_at=time.plus("b_retry"), **settled)
        self.fail_for_good = failed.values(next_attempt_at=None, **settled)
        # Stripe was asked about the session just now (see ``Store.take_check``).
        self.checked = (
            update(fulfillments)
            .where(fulfillments.c.session_id == _param("b_session_id"))
            .values(checked_at=time.now)
        )
        self.take_check = (
            update(fulfillments)
            .where(
                fulfillments.c.session_id == _param("b_session_id"),
                fulfillments.c.status.in_(CHECKED),
                or_(
                    fulfillments.c.checked_at.is_(None),
                    fulfillments.c.checked_at <= time.plus("b_ago"),
                ),
            )
            .values(checked_at=time.now)
        )


_ITEM = and_(
    fulfillment_items.c.session_id == _param("b_session_id"),
    fulfillment_items.c.line_item_id == _param("b_line_item_id"),
    fulfillment_items.c.status != ITEM_DONE,
)
# The action is written with the item's outcome (None keeps what is there).
_ITEM_DONE = (
    update(fulfillment_items)
    .where(_ITEM)
    .values(
        status=ITEM_DONE,
        result=_param("b_result", fulfillment_items.c.result),
        error=None,
        done_at=_param("b_now", fulfillment_items.c.done_at),
        attempts=fulfillment_items.c.attempts + 1,
        action=func.coalesce(
            _param("b_action", fulfillment_items.c.action), fulfillment_items.c.action
        ),
    )
)
_ITEM_FAILED = (
    update(fulfillment_items)
    .where(_ITEM)
    .values(
        status=ITEM_FAILED,
        error=_param("b_error", fulfillment_items.c.error),
        attempts=fulfillment_items.c.attempts + 1,
        action=func.coalesce(
            _param("b_action", fulfillment_items.c.action), fulfillment_items.c.action
        ),
    )
)
_ITEMS_NOT_DONE = (
    select(func.count())
    .select_from(fulfillment_items)
    .where(
        fulfillment_items.c.session_id == _param("b_session_id"),
        fulfillment_items.c.status != ITEM_DONE,
    )
)
_FINISH = (
    update(fulfillments)
    .where(
        fulfillments.c.session_id == _param("b_session_id"),
        fulfillments.c.status == FULFILLING,
        fulfillments.c.lease_owner == _param("b_owner"),
    )
    .values(
        status=FULFILLED,
        fulfilled_at=_param("b_now", fulfillments.c.fulfilled_at),
        updated_at=_param("b_now", fulfillments.c.updated_at),
        last_error=None,
        next_attempt_at=None,
        lease_owner=None,
        lease_expires_at=None,
    )
)
_SET_EVENT_OUTCOME = (
    update(webhook_events)
    .where(webhook_events.c.event_id == _param("b_event_id"))
    .values(
        outcome=_param("b_outcome"), processed_at=_param("b_now", webhook_events.c.processed_at)
    )
)
_ITEMS_AT = 1 + len(_RECORD_FIELDS)
_TRIGGER_AT = _ITEMS_AT + len(_ITEM_FIELDS)


class Store:
    """The database of one service: records, items, triggers, the event inbox."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # The clock leases are written with and judged by (the database's on PostgreSQL).
        self.time = DbTime(engine.dialect.name)
        self._insert = sqlite_insert if database.is_sqlite(engine) else pg_insert
        self._leases = _LeaseStatements(self.time)
        self._one_record = database.Query(_one_record_query(self.time), engine)
        self._event_recorded = database.Query(_EVENT_RECORDED, engine)
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

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction, retrying briefly if SQLite stays locked."""
        return await database.write(self.engine, work)

    # -- reads ------------------------------------------------------------------

    async def get(self, session_id: str) -> FulfillmentRecord | None:
        """One record with its items and triggers, in one indexed read."""
        rows = await self._one_record.rows(
            self.engine, {"session_id": session_id, **self.time.params()}
        )
        record: dict[str, Any] | None = None
        items: list[dict[str, Any]] = []
        triggers: list[str] = []
        for row in rows:
            part = row[0]
            if part == _PART_RECORD:
                record = dict(zip(_RECORD_FIELDS, row[1:_ITEMS_AT], strict=True))
            elif part == _PART_ITEM:
                items.append(dict(zip(_ITEM_FIELDS, row[_ITEMS_AT:_TRIGGER_AT], strict=True)))
            else:
                triggers.append(row[_TRIGGER_AT])
        return None if record is None else _record(record, items, triggers)

    async def list_records(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        after: tuple[datetime, str] | None = None,
    ) -> list[FulfillmentRecord]:
        """Records newest first; ``after`` is the (created_at, session_id) of the last one seen.

        Keyset pagination: stable while records are added, no gaps, no repeats.
        """
        query = select(fulfillments)
        if status is not None:
            query = query.where(fulfillments.c.status == status)
        if after is not None:
            created, session_id = after
            query = query.where(
                or_(
                    fulfillments.c.created_at < created,
                    and_(
                        fulfillments.c.created_at == created, fulfillments.c.session_id < session_id
                    ),
                )
            )
        query = query.order_by(
            fulfillments.c.created_at.desc(), fulfillments.c.session_id.desc()
        ).limit(limit)
        async with database.read(self.engine) as connection:
            return await self._records(connection, query)

    async def session_ids(self, status: str, limit: int = 10_000) -> list[str]:
        async with database.read(self.engine) as connection:
            rows = await connection.execute(
                select(fulfillments.c.session_id)
                .where(fulfillments.c.status == status)
                .order_by(fulfillments.c.created_at)
                .limit(limit)
            )
            return [str(r[0]) for r in rows]

    async def _records(self, connection: AsyncConnection, query: Any) -> list[FulfillmentRecord]:
        """The records ``query`` selects, with their items and triggers (three queries in all)."""
        rows = (await connection.execute(query)).all()
        if not rows:
            return []
        ids = [row.session_id for row in rows]
        items: dict[str, list[Any]] = {i: [] for i in ids}
        for item in await connection.execute(
            select(fulfillment_items)
            .where(fulfillment_items.c.session_id.in_(ids))
            .order_by(fulfillment_items.c.session_id, fulfillment_items.c.position)
        ):
            items[item.session_id].append(item._mapping)
        triggers: dict[str, list[str]] = {i: [] for i in ids}
        for trigger in await connection.execute(
            select(fulfillment_triggers.c.session_id, fulfillment_triggers.c.trigger)
            .where(fulfillment_triggers.c.session_id.in_(ids))
            .order_by(fulfillment_triggers.c.id)
        ):
            triggers[trigger.session_id].append(trigger.trigger)
        return [
            _record(row._mapping, items[row.session_id], triggers[row.session_id]) for row in rows
        ]

    async def status_of(self, session_id: str) -> str | None:
        async with database.read(self.engine) as connection:
            value = await connection.scalar(
                select(fulfillments.c.status).where(fulfillments.c.session_id == session_id)
            )
            return str(value) if value is not None else None

    async def take_due(self, pending_before: datetime, window: float, limit: int = 50) -> list[str]:
        """Sessions the background worker should take up now, each given to one instance.

        Due: failed ones whose next attempt has come, pending ones nobody
        claimed since ``pending_before`` (their trigger died), and fulfilling
        ones whose lease expired (their worker died). Each candidate is taken
        by a conditional write that pushes ``next_attempt_at`` ``window``
        seconds ahead, so that when every instance's worker looks at once,
        one of them takes it and the others don't spend an API call on it.
        Leases and attempts are judged on the database's clock (``DbTime``);
        ``pending_before`` is compared with ``updated_at``, which each host
        writes with its own: a host's skew moves when an unclaimed record is
        taken up, never whether a claim succeeds.
        """
        now = self.time.now
        not_deferred = or_(
            fulfillments.c.next_attempt_at.is_(None), fulfillments.c.next_attempt_at <= now
        )
        due = or_(
            and_(fulfillments.c.status == FAILED, fulfillments.c.next_attempt_at <= now),
            and_(
                fulfillments.c.status == PENDING,
                fulfillments.c.updated_at < pending_before,
                not_deferred,
            ),
            and_(
                fulfillments.c.status == FULFILLING,
                fulfillments.c.lease_expires_at < now,
                not_deferred,
            ),
        )
        async with database.read(self.engine) as connection:
            rows = await connection.execute(
                select(fulfillments.c.session_id)
                .where(due)
                .order_by(fulfillments.c.updated_at)
                .limit(limit),
                self.time.params(),
            )
            candidates = [str(r[0]) for r in rows]
        take = (
            update(fulfillments)
            .where(fulfillments.c.session_id == bindparam("b_session_id"), due)
            .values(next_attempt_at=self.time.plus("b_window"))
        )
        taken: list[str] = []
        for session_id in candidates:

            async def work(connection: AsyncConnection, session_id: str = session_id) -> bool:
                result = await connection.execute(
                    take, {"b_session_id": session_id, **self.time.params(b_window=window)}
                )
                return bool(result.rowcount)

            if await self._write(work):
                taken.append(session_id)
        return taken

    # -- writes: the record ---------------------------------------------------------

    async def add_trigger(self, session_id: str, trigger: str, now: datetime) -> None:
        async def work(connection: AsyncConnection) -> None:
            await connection.execute(
                _ADD_TRIGGER, {"session_id": session_id, "trigger": trigger, "at": now}
            )

        await self._write(work)

    async def observe(
        self,
        snapshot: SessionSnapshot,
        status: str,
        may_replace: Iterable[str],
        now: datetime,
        *,
        trigger: str | None = None,
        email: QueuedEmail | None = None,
    ) -> bool:
        """Record what the API said about a session; True when it moved to ``status``.

        Inserts the record (and its items) when new; otherwise refreshes the
        session's fields, and moves the status to ``status`` only from one of
        ``may_replace``, so a late trigger never moves a record backwards.
        Items already recorded are left alone: a ``done`` item stays done.
        ``trigger``, if given, is recorded in the same transaction, and
        ``email`` queued there when the record moved to ``status``.
        """
        fields = {
            "payment_status": snapshot.payment_status,
            "livemode": snapshot.livemode,
            "mode": snapshot.mode,
            "customer": dict(snapshot.customer),
            "shipping": dict(snapshot.shipping) if snapshot.shipping else None,
            "amount_total": snapshot.amount_total,
            "currency": snapshot.currency,
            "client_reference_id": snapshot.client_reference_id,
            "session_metadata": dict(snapshot.metadata),
        }

        async def work(connection: AsyncConnection) -> bool:
            inserted = await connection.execute(
                self._record_once,
                {
                    "session_id": snapshot.session_id,
                    "status": status,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    **fields,
                },
            )
            moved = bool(inserted.rowcount)
            if not moved:
                await connection.execute(
                    update(fulfillments)
                    .where(fulfillments.c.session_id == snapshot.session_id)
                    .values(**fields)
                )
                changed = await connection.execute(
                    update(fulfillments)
                    .where(
                        fulfillments.c.session_id == snapshot.session_id,
                        fulfillments.c.status.in_(list(may_replace)),
                        fulfillments.c.status != status,
                    )
                    .values(status=status, updated_at=now)
                )
                moved = bool(changed.rowcount)
            if moved and email is not None:
                await enqueue(connection, self._insert, snapshot.session_id, email, now, self.time)
            if snapshot.items:
                await connection.execute(
                    self._items_once,
                    [
                        {
                            "session_id": snapshot.session_id,
                            "line_item_id": item.line_item_id,
                            "position": item.position,
                            "price_id": item.price_id,
                            "product_id": item.product_id,
                            "description": item.description,
                            "quantity": item.quantity,
                            "amount_total": item.amount_total,
                            "currency": item.currency,
                            "status": ITEM_PENDING,
                            "attempts": 0,
                        }
                        for item in snapshot.items
                    ],
                )
            if trigger is not None:
                await connection.execute(
                    _ADD_TRIGGER,
                    {"session_id": snapshot.session_id, "trigger": trigger, "at": now},
                )
            if status in CHECKED:
                await connection.execute(
                    self._leases.checked,
                    {"b_session_id": snapshot.session_id, **self.time.params()},
                )
            return moved

        return await self._write(work)

    async def set_status(
        self,
        session_id: str,
        status: str,
        may_replace: Iterable[str],
        now: datetime,
        *,
        email: QueuedEmail | None = None,
    ) -> bool:
        """Move to ``status`` from one of ``may_replace``; creates a bare record if none.

        ``email``, if given, is queued in the same transaction when the status moved.
        """

        async def work(connection: AsyncConnection) -> bool:
            moved = await _move(connection)
            if moved and email is not None:
                await enqueue(connection, self._insert, session_id, email, now, self.time)
            return moved

        async def _move(connection: AsyncConnection) -> bool:
            inserted = await connection.execute(
                self._insert(fulfillments)
                .values(
                    session_id=session_id,
                    status=status,
                    livemode=session_id.startswith("cs_live_"),
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["session_id"])
            )
            if inserted.rowcount:
                return True
            result = await connection.execute(
                update(fulfillments)
                .where(
                    fulfillments.c.session_id == session_id,
                    fulfillments.c.status.in_(list(may_replace)),
                )
                .values(status=status, updated_at=now)
            )
            return bool(result.rowcount)

        return await self._write(work)

    async def take_check(self, session_id: str, interval: float) -> bool:
        """May Stripe be asked about this waiting session now? True for one caller per interval.

        One conditional write on the database's clock: of all the visitors
        and instances asking at once, one gets True, and nobody again for
        ``interval`` seconds (``observe`` of a waiting status counts as asked).
        """

        async def work(connection: AsyncConnection) -> bool:
            result = await connection.execute(
                self._leases.take_check,
                {"b_session_id": session_id, **self.time.params(b_ago=-interval)},
            )
            return bool(result.rowcount)

        return await self._write(work)

    # -- writes: claiming and performing --------------------------------------------

    async def claim(self, session_id: str, owner: str, lease: float, now: datetime) -> bool:
        """Take the session for fulfillment: exactly one concurrent caller gets True.

        Claimable: ``pending`` or ``failed`` records, and ``fulfilling`` ones
        whose lease has expired (their worker died; the items it finished are
        ``done`` and will be skipped).
        """

        params = {"b_session_id": session_id, "b_owner": owner, "b_now": now}

        async def work(connection: AsyncConnection) -> bool:
            result = await connection.execute(
                self._leases.claim, {**params, **self.time.params(b_lease=lease)}
            )
            return bool(result.rowcount)

        return await self._write(work)

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        """Extend our lease to ``lease`` seconds from now (database time); False: it was lost.

        Succeeds while we are still the owner, even if the lease ran out
        meanwhile: nobody else claimed it, so nobody else performed anything.
        """

        async def work(connection: AsyncConnection) -> bool:
            return await self._renew(connection, session_id, owner, lease)

        return await self._write(work)

    async def _renew(
        self, connection: AsyncConnection, session_id: str, owner: str, lease: float
    ) -> bool:
        result = await connection.execute(
            self._leases.renew,
            {"b_session_id": session_id, "b_owner": owner, **self.time.params(b_lease=lease)},
        )
        return bool(result.rowcount)

    async def item_done(
        self,
        session_id: str,
        line_item_id: str,
        owner: str,
        result: dict[str, Any],
        now: datetime,
        *,
        lease: float,
        action: str | None = None,
    ) -> bool:
        """Mark an item ``done`` (by ``action``) while we hold the lease; False if we lost it.

        The lease is extended to ``lease`` seconds from now in the same
        transaction: a True answer proves a whole lease ahead.
        """

        async def work(connection: AsyncConnection) -> bool:
            return await self._item_done(
                connection, session_id, line_item_id, owner, result, now, action, lease
            )

        return await self._write(work)

    async def finish_with_item(
        self,
        session_id: str,
        line_item_id: str,
        owner: str,
        result: dict[str, Any],
        now: datetime,
        *,
        lease: float,
        action: str | None = None,
        email: QueuedEmail | None = None,
    ) -> tuple[bool, bool]:
        """``item_done`` for the last item, then ``finish``, in one transaction.

        Returns (item recorded, session fulfilled); nothing is finished when
        the item could not be recorded. ``email`` is queued with the finish.
        """

        async def work(connection: AsyncConnection) -> tuple[bool, bool]:
            if not await self._item_done(
                connection, session_id, line_item_id, owner, result, now, action, lease
            ):
                return False, False
            return True, await self._finish(connection, session_id, owner, now, email)

        return await self._write(work)

    async def item_failed(
        self, session_id: str, line_item_id: str, error: str, *, action: str | None = None
    ) -> None:
        async def work(connection: AsyncConnection) -> None:
            await connection.execute(
                _ITEM_FAILED,
                {
                    "b_session_id": session_id,
                    "b_line_item_id": line_item_id,
                    "b_error": error,
                    "b_action": action,
                },
            )

        await self._write(work)

    async def finish(
        self, session_id: str, owner: str, now: datetime, *, email: QueuedEmail | None = None
    ) -> bool:
        """``fulfilled``, only if every item is done and we hold the lease (``email`` with it)."""

        async def work(connection: AsyncConnection) -> bool:
            return await self._finish(connection, session_id, owner, now, email)

        return await self._write(work)

    async def _finish(
        self,
        connection: AsyncConnection,
        session_id: str,
        owner: str,
        now: datetime,
        email: QueuedEmail | None,
    ) -> bool:
        finished = await _finish(connection, session_id, owner, now)
        if finished and email is not None:
            await enqueue(connection, self._insert, session_id, email, now, self.time)
        return finished

    async def fail(
        self,
        session_id: str,
        owner: str,
        error: str,
        retry_in: float | None,
        now: datetime,
    ) -> bool:
        """``failed`` with the error; tried again ``retry_in`` seconds from now (database
        time), or with None only when an operator says so."""
        params = {"b_session_id": session_id, "b_owner": owner, "b_error": error, "b_now": now}

        async def work(connection: AsyncConnection) -> bool:
            if retry_in is None:
                result = await connection.execute(self._leases.fail_for_good, params)
            else:
                result = await connection.execute(
                    self._leases.fail, {**params, **self.time.params(b_retry=retry_in)}
                )
            return bool(result.rowcount)

        return await self._write(work)

    async def _item_done(
        self,
        connection: AsyncConnection,
        session_id: str,
        line_item_id: str,
        owner: str,
        result: dict[str, Any],
        now: datetime,
        action: str | None,
        lease: float,
    ) -> bool:
        if not await self._renew(connection, session_id, owner, lease):
            return False
        updated = await connection.execute(
            _ITEM_DONE,
            {
                "b_session_id": session_id,
                "b_line_item_id": line_item_id,
                "b_result": result,
                "b_now": now,
                "b_action": action,
            },
        )
        return bool(updated.rowcount)

    # -- the webhook inbox --------------------------------------------------------------

    async def record_event(
        self,
        event_id: str,
        event_type: str,
        session_id: str | None,
        livemode: bool,
        outcome: str,
        now: datetime,
    ) -> bool:
        """Insert the event once; False when it was already recorded (a redelivery).

        A redelivery is told by one indexed read, without taking SQLite's write
        lock; a new event by the insert's conflict clause, which stays the
        judge when two deliveries race.
        """
        if await self._event_recorded.rows(self.engine, {"event_id": event_id}):
            return False

        async def work(connection: AsyncConnection) -> bool:
            result = await connection.execute(
                self._event_once,
                {
                    "event_id": event_id,
                    "type": event_type,
                    "session_id": session_id,
                    "livemode": livemode,
                    "received_at": now,
                    "outcome": outcome,
                },
            )
            return bool(result.rowcount)

        return await self._write(work)

    async def set_event_outcome(self, event_id: str, outcome: str, now: datetime) -> None:
        async def work(connection: AsyncConnection) -> None:
            await connection.execute(
                _SET_EVENT_OUTCOME, {"b_event_id": event_id, "b_outcome": outcome, "b_now": now}
            )

        await self._write(work)

    async def event(self, event_id: str) -> dict[str, Any] | None:
        async with database.read(self.engine) as connection:
            row = (
                await connection.execute(
                    select(webhook_events).where(webhook_events.c.event_id == event_id)
                )
            ).first()
            return dict(row._mapping) if row else None

    async def events_for(self, session_id: str) -> list[dict[str, Any]]:
        """The webhook events recorded for a session, oldest first (its history)."""
        async with database.read(self.engine) as connection:
            rows = await connection.execute(
                select(webhook_events)
                .where(webhook_events.c.session_id == session_id)
                .order_by(webhook_events.c.received_at)
            )
            return [dict(r._mapping) for r in rows]

    async def unprocessed_events(
        self, older_than: datetime, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Events acknowledged but whose processing never finished (the process died)."""
        async with database.read(self.engine) as connection:
            rows = await connection.execute(
                select(webhook_events)
                .where(
                    webhook_events.c.outcome == "received",
                    webhook_events.c.received_at < older_than,
                )
                .order_by(webhook_events.c.received_at)
                .limit(limit)
            )
            return [dict(r._mapping) for r in rows]


async def _finish(connection: AsyncConnection, session_id: str, owner: str, now: datetime) -> bool:
    if await connection.scalar(_ITEMS_NOT_DONE, {"b_session_id": session_id}):
        return False
    result = await connection.execute(
        _FINISH, {"b_session_id": session_id, "b_owner": owner, "b_now": now}
    )
    return bool(result.rowcount)


def _record(row: Any, items: Sequence[Any], triggers: list[str]) -> FulfillmentRecord:
    return FulfillmentRecord(
        session_id=row["session_id"],
        status=row["status"],
        payment_status=row["payment_status"],
        livemode=bool(row["livemode"]),
        mode=row["mode"],
        customer=dict(row["customer"] or {}),
        shipping=row["shipping"],
        amount_total=row["amount_total"],
        currency=row["currency"],
        client_reference_id=row["client_reference_id"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        fulfilled_at=row["fulfilled_at"],
        next_attempt_at=row["next_attempt_at"],
        lease_expires_at=row["lease_expires_at"],
        lease_live=bool(row.get("lease_live")),
        retry_due=bool(row.get("retry_due")),
        metadata=dict(row["session_metadata"] or {}),
        triggers=triggers,
        items=[
            ItemRecord(
                line_item_id=i["line_item_id"],
                position=i["position"],
                price_id=i["price_id"],
                product_id=i["product_id"],
                description=i["description"],
                quantity=i["quantity"],
                amount_total=i["amount_total"],
                currency=i["currency"],
                action=i["action"],
                status=i["status"],
                result=i["result"],
                error=i["error"],
            )
            for i in items
        ],
    )
