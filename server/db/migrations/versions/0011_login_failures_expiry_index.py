"""An index for the expiry of failed logins (every failure deletes those older than the window)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 21:20:00.000000
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Under a password-guessing burst the table holds a window's worth of failures, and the
    # delete would scan all of them at every new one.
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index("ix_login_failures_at", ["failed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_login_failures_at")
