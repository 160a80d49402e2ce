"""Webhook events left unprocessed, each claimed by one instance's worker at a time.

An event is recorded ``received`` before its 2xx; when the process that
handled it dies (or gives up) before marking it processed, the background
worker takes it up. Every instance's worker looks at the same rows at once,
so an event is claimed as a session is (docs/claims.md): one conditional
``UPDATE`` with a lease, whose row count says who won, and only the winner
spends a Stripe call on it. A claimant that dies leaves a lease that runs
out, and any instance's next pass takes the event then.

Leases are written and judged on ``DbTime``'s clock, inside the statements:
the database's on PostgreSQL, so instances whose hosts' clocks disagree
still agree whether a lease has run out.

A claimant that is not done with an event (its session still being
fulfilled, or processing failed) gives the claim up with a delay during
which nobody takes it: a Stripe outage is waited out by every instance, not
by each, and a session that another instance is still fulfilling is looked
at again later, not waited on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.engine import Connection

from fulfill.store import database
from fulfill.store.repository import Store
from fulfill.store.schema import webhook_events

RECEIVED = "received"


class Inbox:
    """The claims on unprocessed events; built on a ``Store`` (its engine, clock, writes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        time = store.time
        events = webhook_events.c
        # Free to claim: never claimed, or its lease (or the delay it was
        # given up with) has run out.
        claimable = and_(
            events.outcome == RECEIVED,
            or_(events.lease_expires_at.is_(None), events.lease_expires_at < time.now),
        )
        self._stale = (
            select(events.event_id, events.type, events.session_id, events.livemode)
            .where(claimable, events.received_at < bindparam("b_before"))
            .order_by(events.received_at)
        )
        self._claim = (
            update(webhook_events)
            .where(events.event_id == bindparam("b_event_id"), claimable)
            .values(
                lease_owner=bindparam("b_owner"),
                lease_expires_at=time.plus("b_lease"),
                attempts=events.attempts + 1,
            )
            .returning(events.attempts)
        )
        self._release = (
            update(webhook_events)
            .where(
                events.event_id == bindparam("b_event_id"),
                events.outcome == RECEIVED,
                events.lease_owner == bindparam("b_owner"),
            )
            .values(lease_owner=None, lease_expires_at=time.plus("b_after"))
        )

    async def stale(self, older_than: datetime, *, limit: int) -> list[dict[str, Any]]:
        """Unprocessed events received before ``older_than`` that are free to claim, oldest first.

        Those under a live claim, or given up with a delay, are not listed:
        they cannot crowd out the ones that are due.
        """
        params = {"b_before": older_than, **self.store.time.params()}
        async with database.read(self.store.engine) as connection:
            rows = await connection.execute(self._stale.limit(limit), params)
            return [dict(row._mapping) for row in rows]

    async def claim(self, event_id: str, owner: str, lease: float) -> int | None:
        """Take the event for ``lease`` seconds: its claims so far, or None (not ours now).

        One conditional ``UPDATE``: of claimants racing in any process or on
        any host, one gets a row back.
        """

        def work(connection: Connection) -> int | None:
            result = connection.execute(
                self._claim,
                {"b_event_id": event_id, "b_owner": owner, **self.store.time.params(b_lease=lease)},
            )
            attempts = result.scalar_one_or_none()
            return None if attempts is None else int(attempts)

        return await self.store._write(work)

    async def release(self, event_id: str, owner: str, *, after: float = 0.0) -> bool:
        """Give our claim up; nobody claims the event for ``after`` seconds. False: not ours.

        Whoever claims it after that finds what became of it (the ``outcome``
        is only ever set once the event has been acted on).
        """

        def work(connection: Connection) -> bool:
            result = connection.execute(
                self._release,
                {"b_event_id": event_id, "b_owner": owner, **self.store.time.params(b_after=after)},
            )
            return bool(result.rowcount)

        return await self.store._write(work)
