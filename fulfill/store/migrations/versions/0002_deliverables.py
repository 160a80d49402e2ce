"""What the built-in actions deliver: download grants, access grants, licence keys, shipments.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "download_grants",
        sa.Column("session_id", sa.String(255), primary_key=True),
        sa.Column("line_item_id", sa.String(255), primary_key=True),
        sa.Column("file_name", sa.String(255), primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("label", sa.Text),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "access_grants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("line_item_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("customer_name", sa.Text),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("product_id", sa.String(255)),
        sa.Column("price_id", sa.String(255)),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("livemode", sa.Boolean, nullable=False),
        sa.Column("starts_at", sa.DateTime, nullable=False),
        sa.Column("ends_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("session_id", "line_item_id", name="uq_access_grants_item"),
    )
    op.create_index("ix_access_grants_email_service", "access_grants", ["email", "service"])
    op.create_table(
        "license_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("line_item_id", sa.String(255), nullable=False),
        sa.Column("unit", sa.Integer, nullable=False),
        sa.Column("product", sa.Text),
        sa.Column("email", sa.String(320)),
        sa.Column("livemode", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("key", name="uq_license_keys_key"),
        sa.UniqueConstraint(
            "session_id", "line_item_id", "unit", name="uq_license_keys_item_unit"
        ),
    )
    op.create_table(
        "shipments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("line_item_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("name", sa.Text),
        sa.Column("phone", sa.String(64)),
        sa.Column("address", sa.JSON, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("product_id", sa.String(255)),
        sa.Column("price_id", sa.String(255)),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("livemode", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("session_id", "line_item_id", name="uq_shipments_item"),
    )
    op.create_index("ix_shipments_status_created", "shipments", ["status", "created_at"])


def downgrade() -> None:
    op.drop_table("shipments")
    op.drop_table("license_keys")
    op.drop_table("access_grants")
    op.drop_table("download_grants")
