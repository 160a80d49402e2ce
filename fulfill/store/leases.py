"""Claiming and performing: the lease on a fulfillment, and each item recorded under it.

The claim is one conditional ``UPDATE`` (docs/claims.md), and so is every
write made under the lease: the row count says whether the caller still
holds it. Leases are written and judged on ``DbTime``'s clock, inside the
statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.engine import Connection

from fulfill.records import (
    AWAITING_PAYMENT,
    FAILED,
    FULFILLED,
    FULFILLING,
    ITEM_DONE,
    ITEM_FAILED,
    PAYMENT_FAILED,
    PENDING,
)
from fulfill.store import database
from fulfill.store.base import StoreBase, param
from fulfill.store.dbtime import DbTime
from fulfill.store.emails import QueuedEmail, enqueue
from fulfill.store.schema import fulfillment_items, fulfillments

CLAIMABLE = (PENDING, FAILED)
# Statuses that wait on Stripe (a delayed payment): asked about at most once per interval.
CHECKED = (AWAITING_PAYMENT, PAYMENT_FAILED)

# -- the writes of every fulfillment, built once ----------------------------------------
#
# A statement built per call costs SQLAlchemy more (expressions, cache key)
# than SQLite takes to run it; these only bind values.

_HELD_BY_OWNER = and_(
    fulfillments.c.session_id == param("b_session_id"),
    fulfillments.c.status == FULFILLING,
    fulfillments.c.lease_owner == param("b_owner"),
)


class LeaseStatements:
    """The writes that take, keep and judge a lease, on ``DbTime``'s clock.

    Built once per store: on PostgreSQL the clock is ``clock_timestamp()``
    inside each statement, on SQLite a bound moment of the process's clock.
    """

    def __init__(self, time: DbTime) -> None:
        lease_ends = time.plus("b_lease")
        self.claim = (
            update(fulfillments)
            .where(
                fulfillments.c.session_id == param("b_session_id"),
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
                lease_owner=param("b_owner"),
                lease_expires_at=lease_ends,
                attempts=fulfillments.c.attempts + 1,
                updated_at=param("b_now", fulfillments.c.updated_at),
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
            "last_error": param("b_error"),
            "updated_at": param("b_now", fulfillments.c.updated_at),
            "lease_owner": None,
            "lease_expires_at": None,
        }
        self.fail = failed.values(next_attempt_at=time.plus("b_retry"), **settled)
        self.fail_for_good = failed.values(next_attempt_at=None, **settled)
        # Stripe was asked about the session just now (see ``Store.take_check``).
        self.checked = (
            update(fulfillments)
            .where(fulfillments.c.session_id == param("b_session_id"))
            .values(checked_at=time.now)
        )
        self.take_check = (
            update(fulfillments)
            .where(
                fulfillments.c.session_id == param("b_session_id"),
                fulfillments.c.status.in_(CHECKED),
                or_(
                    fulfillments.c.checked_at.is_(None),
                    fulfillments.c.checked_at <= time.plus("b_ago"),
                ),
            )
            .values(checked_at=time.now)
        )


def take(
    connection: Connection,
    statements: LeaseStatements,
    time: DbTime,
    session_id: str,
    owner: str,
    lease: float,
    now: datetime,
) -> bool:
    """The claim, inside the caller's transaction (``Leases.claim``, ``RecordWrites.observe``)."""
    result = connection.execute(
        statements.claim,
        {"b_session_id": session_id, "b_owner": owner, "b_now": now, **time.params(b_lease=lease)},
    )
    return bool(result.rowcount)


_ITEM = and_(
    fulfillment_items.c.session_id == param("b_session_id"),
    fulfillment_items.c.line_item_id == param("b_line_item_id"),
    fulfillment_items.c.status != ITEM_DONE,
)
# The action is written with the item's outcome (None keeps what is there).
_ITEM_DONE = (
    update(fulfillment_items)
    .where(_ITEM)
    .values(
        status=ITEM_DONE,
        result=param("b_result", fulfillment_items.c.result),
        error=None,
        done_at=param("b_now", fulfillment_items.c.done_at),
        attempts=fulfillment_items.c.attempts + 1,
        action=func.coalesce(
            param("b_action", fulfillment_items.c.action), fulfillment_items.c.action
        ),
    )
)
_ITEM_FAILED = (
    update(fulfillment_items)
    .where(_ITEM)
    .values(
        status=ITEM_FAILED,
        error=param("b_error", fulfillment_items.c.error),
        attempts=fulfillment_items.c.attempts + 1,
        action=func.coalesce(
            param("b_action", fulfillment_items.c.action), fulfillment_items.c.action
        ),
    )
)
# ``fulfilled`` while we hold the lease and no item is left to do: one statement.
_FINISH = (
    update(fulfillments)
    .where(
        fulfillments.c.session_id == param("b_session_id"),
        fulfillments.c.status == FULFILLING,
        fulfillments.c.lease_owner == param("b_owner"),
        ~exists().where(
            fulfillment_items.c.session_id == fulfillments.c.session_id,
            fulfillment_items.c.status != ITEM_DONE,
        ),
    )
    .values(
        status=FULFILLED,
        fulfilled_at=param("b_now", fulfillments.c.fulfilled_at),
        updated_at=param("b_now", fulfillments.c.updated_at),
        last_error=None,
        next_attempt_at=None,
        lease_owner=None,
        lease_expires_at=None,
    )
)


class Leases(StoreBase):
    """``Store``'s claims: taking a session, keeping it, recording its items, settling it."""

    # ``LeaseStatements`` on the store's clock, built by ``Store.__init__``.
    _leases: LeaseStatements

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

            def work(connection: Connection, session_id: str = session_id) -> bool:
                result = connection.execute(
                    take, {"b_session_id": session_id, **self.time.params(b_window=window)}
                )
                return bool(result.rowcount)

            if await self._write(work):
                taken.append(session_id)
        return taken

    # -- writes: claiming and performing --------------------------------------------

    async def claim(self, session_id: str, owner: str, lease: float, now: datetime) -> bool:
        """Take the session for fulfillment: exactly one concurrent caller gets True.

        Claimable: ``pending`` or ``failed`` records, and ``fulfilling`` ones
        whose lease has expired (their worker died; the items it finished are
        ``done`` and will be skipped).
        """

        def work(connection: Connection) -> bool:
            return take(connection, self._leases, self.time, session_id, owner, lease, now)

        return await self._write(work)

    async def renew(self, session_id: str, owner: str, lease: float) -> bool:
        """Extend our lease to ``lease`` seconds from now (database time); False: it was lost.

        Succeeds while we are still the owner, even if the lease ran out
        meanwhile: nobody else claimed it, so nobody else performed anything.
        """

        def work(connection: Connection) -> bool:
            return self._renew(connection, session_id, owner, lease)

        return await self._write(work)

    def _renew(self, connection: Connection, session_id: str, owner: str, lease: float) -> bool:
        result = connection.execute(
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

        def work(connection: Connection) -> bool:
            return self._item_done(
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

        def work(connection: Connection) -> tuple[bool, bool]:
            if not self._item_done(
                connection, session_id, line_item_id, owner, result, now, action, lease
            ):
                return False, False
            return True, self._finish(connection, session_id, owner, now, email)

        return await self._write(work)

    async def item_failed(
        self, session_id: str, line_item_id: str, error: str, *, action: str | None = None
    ) -> None:
        def work(connection: Connection) -> None:
            connection.execute(
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

        def work(connection: Connection) -> bool:
            return self._finish(connection, session_id, owner, now, email)

        return await self._write(work)

    def _finish(
        self,
        connection: Connection,
        session_id: str,
        owner: str,
        now: datetime,
        email: QueuedEmail | None,
    ) -> bool:
        finished = _finish(connection, session_id, owner, now)
        if finished and email is not None:
            enqueue(connection, self._insert, session_id, email, now, self.time)
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

        def work(connection: Connection) -> bool:
            if retry_in is None:
                result = connection.execute(self._leases.fail_for_good, params)
            else:
                result = connection.execute(
                    self._leases.fail, {**params, **self.time.params(b_retry=retry_in)}
                )
            return bool(result.rowcount)

        return await self._write(work)

    def _item_done(
        self,
        connection: Connection,
        session_id: str,
        line_item_id: str,
        owner: str,
        result: dict[str, Any],
        now: datetime,
        action: str | None,
        lease: float,
    ) -> bool:
        if not self._renew(connection, session_id, owner, lease):
            return False
        updated = connection.execute(
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


def _finish(connection: Connection, session_id: str, owner: str, now: datetime) -> bool:
    result = connection.execute(
        _FINISH, {"b_session_id": session_id, "b_owner": owner, "b_now": now}
    )
    return bool(result.rowcount)
