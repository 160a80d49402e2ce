"""The background worker's claim on an unprocessed webhook event: owner, lease, attempts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("lease_owner", sa.String(64)))
    op.add_column("webhook_events", sa.Column("lease_expires_at", sa.DateTime))
    op.add_column(
        "webhook_events",
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
