"""When Stripe was last asked about a session waiting for its payment.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fulfillments") as batch:
        batch.add_column(sa.Column("checked_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("fulfillments") as batch:
        batch.drop_column("checked_at")
