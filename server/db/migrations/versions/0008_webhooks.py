"""Webhook deliveries of approved transactions to the core bank (server/workflow/webhooks.py)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 01:30:00.000000
"""

from alembic import op  # noqa: F401

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
