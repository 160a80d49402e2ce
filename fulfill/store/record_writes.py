"""Writes of the record itself: what the API said about a session, its status, its triggers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection

from fulfill.records import ITEM_PENDING, SessionSnapshot
from fulfill.store.base import StoreBase
from fulfill.store.emails import QueuedEmail, enqueue
from fulfill.store.leases import CHECKED, LeaseStatements, take
from fulfill.store.schema import fulfillment_triggers, fulfillments

_ADD_TRIGGER = insert(fulfillment_triggers)


@dataclass(frozen=True)
class Observed:
    """What ``observe`` did: moved the status, inserted the record, claimed it."""

    moved: bool
    inserted: bool = False
    claimed: bool = False

    def __bool__(self) -> bool:
        return self.moved


class RecordWrites(StoreBase):
    """``Store``'s writes of the record, outside any lease."""

    # Built by ``Store.__init__``: inserts that a conflict turns into nothing,
    # and the lease statements (a waiting status observed counts as checked).
    _record_once: Any
    _items_once: Any
    _leases: LeaseStatements

    async def add_trigger(self, session_id: str, trigger: str, now: datetime) -> None:
        def work(connection: Connection) -> None:
            connection.execute(
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
        claim: tuple[str, float] | None = None,
    ) -> Observed:
        """Record what the API said about a session; true when it moved to ``status``.

        Inserts the record (and its items) when new; otherwise refreshes the
        session's fields, and moves the status to ``status`` only from one of
        ``may_replace``, so a late trigger never moves a record backwards.
        Items already recorded are left alone: a ``done`` item stays done.
        ``trigger``, if given, is recorded in the same transaction, and
        ``email`` queued there when the record moved to ``status``.

        ``claim`` (owner, lease seconds): claim the session for fulfillment in
        the same transaction, as ``claim`` would (``Observed.claimed``): a
        first trigger records the session and takes it in one write.
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

        def work(connection: Connection) -> Observed:
            inserted = connection.execute(
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
            new = moved = bool(inserted.rowcount)
            if not moved:
                connection.execute(
                    update(fulfillments)
                    .where(fulfillments.c.session_id == snapshot.session_id)
                    .values(**fields)
                )
                changed = connection.execute(
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
                enqueue(connection, self._insert, snapshot.session_id, email, now, self.time)
            if snapshot.items:
                connection.execute(
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
                connection.execute(
                    _ADD_TRIGGER,
                    {"session_id": snapshot.session_id, "trigger": trigger, "at": now},
                )
            if status in CHECKED:
                connection.execute(
                    self._leases.checked,
                    {"b_session_id": snapshot.session_id, **self.time.params()},
                )
            claimed = False
            if claim is not None:
                owner, lease = claim
                claimed = take(
                    connection, self._leases, self.time, snapshot.session_id, owner, lease, now
                )
            return Observed(moved, new, claimed)

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

        def work(connection: Connection) -> bool:
            moved = _move(connection)
            if moved and email is not None:
                enqueue(connection, self._insert, session_id, email, now, self.time)
            return moved

        def _move(connection: Connection) -> bool:
            inserted = connection.execute(
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
            result = connection.execute(
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

        def work(connection: Connection) -> bool:
            result = connection.execute(
                self._leases.take_check,
                {"b_session_id": session_id, **self.time.params(b_ago=-interval)},
            )
            return bool(result.rowcount)

        return await self._write(work)
