"""Fulfillments, their items and triggers, and the webhook event inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fulfillments",
        sa.Column("session_id", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("payment_status", sa.String(32)),
        sa.Column("livemode", sa.Boolean, nullable=False),
        sa.Column("mode", sa.String(32)),
        sa.Column("customer", sa.JSON),
        sa.Column("shipping", sa.JSON),
        sa.Column("amount_total", sa.Integer),
        sa.Column("currency", sa.String(8)),
        sa.Column("client_reference_id", sa.String(255)),
        sa.Column("session_metadata", sa.JSON),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("fulfilled_at", sa.DateTime),
    )
    op.create_index("ix_fulfillments_status_next", "fulfillments", ["status", "next_attempt_at"])
    op.create_index("ix_fulfillments_created", "fulfillments", ["created_at"])
    op.create_table(
        "fulfillment_items",
        sa.Column("session_id", sa.String(255), primary_key=True),
        sa.Column("line_item_id", sa.String(255), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("price_id", sa.String(255)),
        sa.Column("product_id", sa.String(255)),
        sa.Column("description", sa.Text),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("amount_total", sa.Integer),
        sa.Column("currency", sa.String(8)),
        sa.Column("action", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("done_at", sa.DateTime),
    )
    op.create_table(
        "fulfillment_triggers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_fulfillment_triggers_session_id", "fulfillment_triggers", ["session_id"])
    op.create_table(
        "webhook_events",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(255)),
        sa.Column("livemode", sa.Boolean, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("processed_at", sa.DateTime),
    )
    op.create_index("ix_webhook_events_session_id", "webhook_events", ["session_id"])
    op.create_index("ix_webhook_events_outcome", "webhook_events", ["outcome", "received_at"])


def downgrade() -> None:
    op.drop_table("webhook_events")
    op.drop_table("fulfillment_triggers")
    op.drop_table("fulfillment_items")
    op.drop_table("fulfillments")
