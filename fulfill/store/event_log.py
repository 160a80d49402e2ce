"""The webhook events as received: each recorded once, before its 2xx; its outcome; read back.

The claims of the events left unprocessed are ``inbox.py``'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from fulfill.store import database
from fulfill.store.base import StoreBase, param
from fulfill.store.batch import GroupCommit
from fulfill.store.schema import webhook_events

EVENT_RECORDED = select(webhook_events.c.event_id).where(
    webhook_events.c.event_id == bindparam("event_id")
)
_SET_EVENT_OUTCOME = (
    update(webhook_events)
    .where(webhook_events.c.event_id == param("b_event_id"))
    .values(outcome=param("b_outcome"), processed_at=param("b_now", webhook_events.c.processed_at))
)


def set_one_outcome(connection: Connection, params: dict[str, Any]) -> None:
    connection.execute(_SET_EVENT_OUTCOME, params)


class EventLog(StoreBase):
    """``Store``'s record of the webhook events."""

    # Prepared by ``Store.__init__``: ``EVENT_RECORDED`` for the engine, and
    # the insert a conflict on the event ID turns into nothing.
    _event_recorded: database.Query
    _event_once: Any
    # New events and outcomes arriving together share a transaction (batch.py).
    _record_events: GroupCommit[dict[str, Any], bool]
    _event_outcomes: GroupCommit[dict[str, Any], None]

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
        return await self._record_events(
            {
                "event_id": event_id,
                "type": event_type,
                "session_id": session_id,
                "livemode": livemode,
                "received_at": now,
                "outcome": outcome,
            }
        )

    def _record_one_event(self, connection: Connection, params: dict[str, Any]) -> bool:
        return bool(connection.execute(self._event_once, params).rowcount)

    async def set_event_outcome(self, event_id: str, outcome: str, now: datetime) -> None:
        await self._event_outcomes({"b_event_id": event_id, "b_outcome": outcome, "b_now": now})

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
