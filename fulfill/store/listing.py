"""Lists of records for operators and the admin API: newest first, a page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fulfill.records import FulfillmentRecord
from fulfill.store import database
from fulfill.store.base import StoreBase
from fulfill.store.record_query import to_record
from fulfill.store.schema import fulfillment_items, fulfillment_triggers, fulfillments


class Listing(StoreBase):
    """``Store``'s lists of records, with keyset pagination."""

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
            to_record(row._mapping, items[row.session_id], triggers[row.session_id]) for row in rows
        ]
