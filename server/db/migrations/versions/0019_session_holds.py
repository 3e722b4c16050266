"""Legal holds on sessions that were never recorded (server/auditor/holds.py, `SessionHolds`)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-28 21:45:00.000000

A session without a sealed archive has nothing in the store to put under Object Lock: its
evidence (identity records, the customer's data) is only in the database, and `vteller archive
purge` erases it identity.unrecorded_retention_days after the session ended unless a row here
holds it. Plain DDL, the same on SQLite and PostgreSQL.
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_holds",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("session_id"),
    )
    with op.batch_alter_table("session_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_holds_held"), ["held"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("session_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_holds_held"))
    op.drop_table("session_holds")
