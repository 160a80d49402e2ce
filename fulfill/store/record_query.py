"""One fulfillment record, with its items and triggers, in one indexed read; rows to records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Integer,
    bindparam,
    case,
    cast,
    false,
    literal_column,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.elements import BindParameter

from fulfill.records import FulfillmentRecord, ItemRecord
from fulfill.store import database
from fulfill.store.base import StoreBase
from fulfill.store.dbtime import DbTime
from fulfill.store.schema import fulfillment_items, fulfillment_triggers, fulfillments

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


def one_record_query(time: DbTime) -> CompoundSelect[Any]:
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


_ITEMS_AT = 1 + len(_RECORD_FIELDS)
_TRIGGER_AT = _ITEMS_AT + len(_ITEM_FIELDS)


class RecordReads(StoreBase):
    """``Store``'s reads of one record."""

    # ``one_record_query``, prepared for the engine by ``Store.__init__``.
    _one_record: database.Query

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
        return None if record is None else to_record(record, items, triggers)

    async def status_of(self, session_id: str) -> str | None:
        async with database.read(self.engine) as connection:
            value = await connection.scalar(
                select(fulfillments.c.status).where(fulfillments.c.session_id == session_id)
            )
            return str(value) if value is not None else None


def to_record(row: Any, items: Sequence[Any], triggers: list[str]) -> FulfillmentRecord:
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
