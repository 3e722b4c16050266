"""Browsers staff members have logged in with, throttled apart from other login attempts

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 15:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff_devices",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("staff_devices", schema=None) as batch_op:
        batch_op.create_index("ix_staff_devices_user_id", ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("staff_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_staff_devices_user_id")
    op.drop_table("staff_devices")
