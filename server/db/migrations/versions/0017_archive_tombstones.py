"""Tombstones of archives deleted at the end of their retention (`vteller archive purge`), and
the retain-until it last read from the store

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archives", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retained_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "archive_tombstones",
        sa.Column("archive_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("previous_sha256", sa.String(length=64), nullable=True),
        sa.Column("chain_index", sa.Integer(), nullable=True),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_by", sa.String(length=64), nullable=False),
        sa.Column("objects", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("archive_id"),
    )
    op.create_index(
        "ix_archive_tombstones_session_id", "archive_tombstones", ["session_id"], unique=False
    )
    op.create_index(
        "ix_archive_tombstones_manifest_sha256",
        "archive_tombstones",
        ["manifest_sha256"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_archive_tombstones_manifest_sha256", table_name="archive_tombstones")
    op.drop_index("ix_archive_tombstones_session_id", table_name="archive_tombstones")
    op.drop_table("archive_tombstones")
    with op.batch_alter_table("archives", schema=None) as batch_op:
        batch_op.drop_column("retained_until")
