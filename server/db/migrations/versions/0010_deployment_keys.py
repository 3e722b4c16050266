"""The keys every machine of a deployment must share, by check value (server/crypto)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 21:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_keys",
        sa.Column("file", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("check_value", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("file", "key_id"),
    )


def downgrade() -> None:
    op.drop_table("deployment_keys")
