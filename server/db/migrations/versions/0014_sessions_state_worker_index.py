"""An index for counting open sessions per worker (placement, heartbeats)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 16:15:00.000000
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Placement and each worker's heartbeat count the open sessions per worker; without it both
    # scan every session the bank ever had.
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_state_worker", ["state", "worker_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_state_worker")
