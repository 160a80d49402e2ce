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
    UniqueConstraint,
    text,
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
    # When Stripe was last asked about a session that waits for its payment
    # (database time, migration 0006): landing visits ask at most once per
    # interval, whoever and wherever they are.
    Column("checked_at", DateTime),
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
    # The background worker's claim on a "received" event (migration 0005,
    # store/inbox.py): one instance at a time spends a Stripe call on it, and
    # one that dies lets it go when the lease runs out. ``attempts``: claims
    # so far, what a failing event's backoff doubles with.
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime),
    Column("attempts", Integer, nullable=False, default=0, server_default=text("0")),
    Index("ix_webhook_events_outcome", "outcome", "received_at"),
)

# -- what the built-in actions deliver (migration 0002) ---------------------------
#
# Each table is unique per line item (``session_id``, ``line_item_id``, plus the
# file or unit where an item delivers several): that constraint is the
# action's idempotency record, so performing an item again after a crash
# finds what the first attempt wrote instead of delivering twice.

download_grants = Table(
    "download_grants",
    metadata,
    Column("session_id", String(255), primary_key=True),
    Column("line_item_id", String(255), primary_key=True),
    Column("file_name", String(255), primary_key=True),
    Column("path", Text, nullable=False),
    Column("label", Text),
    Column("expires_at", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

access_grants = Table(
    "access_grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(255), nullable=False),
    Column("line_item_id", String(255), nullable=False),
    Column("email", String(320), nullable=False),
    Column("customer_name", Text),
    Column("service", String(255), nullable=False),
    Column("url", Text, nullable=False),
    Column("product_id", String(255)),
    Column("price_id", String(255)),
    Column("quantity", Integer, nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("starts_at", DateTime, nullable=False),
    Column("ends_at", DateTime),  # NULL: lifetime
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("session_id", "line_item_id", name="uq_access_grants_item"),
    Index("ix_access_grants_email_service", "email", "service"),
)

license_keys = Table(
    "license_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False),
    Column("session_id", String(255), nullable=False),
    Column("line_item_id", String(255), nullable=False),
    Column("unit", Integer, nullable=False),
    Column("product", Text),
    Column("email", String(320)),
    Column("livemode", Boolean, nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("key", name="uq_license_keys_key"),
    UniqueConstraint("session_id", "line_item_id", "unit", name="uq_license_keys_item_unit"),
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(255), nullable=False),
    Column("line_item_id", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("email", String(320)),
    Column("name", Text),
    Column("phone", String(64)),
    Column("address", JSON, nullable=False),
    Column("description", Text),
    Column("product_id", String(255)),
    Column("price_id", String(255)),
    Column("quantity", Integer, nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("session_id", "line_item_id", name="uq_shipments_item"),
    Index("ix_shipments_status_created", "status", "created_at"),
)

# Reconcile sweeps: the cursor of each, so that an interrupted sweep resumes.
reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("since", DateTime, nullable=False),
    Column("cursor", String(255)),
    Column("started_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("results", JSON),
)

# Named leases across instances (e.g. "one reconcile sweep at a time").
locks = Table(
    "locks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(64)),
    Column("expires_at", DateTime, nullable=False),
)

# Emails to the customer (migration 0004): one row per session and kind, so
# that however many triggers and instances race, each email is sent once. The
# Message-ID is fixed when the row is made: a send repeated after a crash
# between sending and recording carries the same one.
emails = Table(
    "emails",
    metadata,
    Column("session_id", String(255), primary_key=True),
    Column("kind", String(32), primary_key=True),
    # pending → sending (leased) → sent | failed (next_attempt_at: when again;
    # NULL: given up) | skipped (nothing to send to).
    Column("status", String(16), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("recipient", String(320)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("next_attempt_at", DateTime),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("sent_at", DateTime),
    Index("ix_emails_status_next", "status", "next_attempt_at"),
)
