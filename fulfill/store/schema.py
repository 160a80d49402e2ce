"""The tables. Only ``store/`` knows SQL; the rest of the service sees records.

Two idempotency records, as the field notes advise: the inbox of webhook
events, unique by event ``id``, and the fulfillment, unique by session ``id``,
with one row per line item whose ``done`` status is written as soon as the
item is done, so that a crash resumes instead of repeating.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

fulfillments = Table(
    "fulfillments",
    metadata,
    Column("session_id", String(255), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("payment_status", String(32)),
    Column("livemode", Boolean, nullable=False, default=False),
    Column("mode", String(32)),
    Column("customer", JSON),
    Column("shipping", JSON),
    Column("amount_total", Integer),
    Column("currency", String(8)),
    Column("client_reference_id", String(255)),
    Column("session_metadata", JSON),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("next_attempt_at", DateTime),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("fulfilled_at", DateTime),
    Index("ix_fulfillments_status_next", "status", "next_attempt_at"),
    Index("ix_fulfillments_created", "created_at"),
)

fulfillment_items = Table(
    "fulfillment_items",
    metadata,
    Column("session_id", String(255), primary_key=True),
    Column("line_item_id", String(255), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("price_id", String(255)),
    Column("product_id", String(255)),
    Column("description", Text),
    Column("quantity", Integer, nullable=False, default=1),
    Column("amount_total", Integer),
    Column("currency", String(8)),
    Column("action", String(32)),
    Column("status", String(16), nullable=False),
    Column("result", JSON),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("done_at", DateTime),
)

fulfillment_triggers = Table(
    "fulfillment_triggers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(255), nullable=False, index=True),
    Column("trigger", String(255), nullable=False),
    Column("at", DateTime, nullable=False),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("type", String(128), nullable=False),
    Column("session_id", String(255), index=True),
    Column("livemode", Boolean, nullable=False),
    Column("received_at", DateTime, nullable=False),
    # received → (processed | ignored | pending | failed); "received" rows left
    # behind by a dead process are picked up by the background worker.
    Column("outcome", String(32), nullable=False),
    Column("processed_at", DateTime),
    Index("ix_webhook_events_outcome", "outcome", "received_at"),
)
