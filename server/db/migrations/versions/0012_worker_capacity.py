"""Each worker's capacity in open sessions, so that placement never chooses a full worker

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 14:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0: no limit, what the rows of workers of an earlier version (still running during a
    # rolling upgrade) mean.
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_sessions", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("max_sessions")
