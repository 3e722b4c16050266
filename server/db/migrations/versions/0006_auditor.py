"""Auditor portal: archive search index and legal holds (server/auditor)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 01:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archive_index",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("card_name", sa.String(length=64), nullable=True),
        sa.Column("id_hash", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("session_id"),
    )
    with op.batch_alter_table("archive_index", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_archive_index_id_hash"), ["id_hash"], unique=False)
    op.create_table(
        "archive_products",
        sa.Column("archive_id", sa.String(length=36), nullable=False),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["archive_id"], ["archives.id"]),
        sa.PrimaryKeyConstraint("archive_id"),
    )
    with op.batch_alter_table("archive_products", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_archive_products_product"), ["product"], unique=False)
    op.create_table(
        "legal_holds",
        sa.Column("archive_id", sa.String(length=36), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("objects", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["archive_id"], ["archives.id"]),
        sa.PrimaryKeyConstraint("archive_id"),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_legal_holds_held"), ["held"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_legal_holds_held"))
    op.drop_table("legal_holds")
    with op.batch_alter_table("archive_products", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_archive_products_product"))
    op.drop_table("archive_products")
    with op.batch_alter_table("archive_index", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_archive_index_id_hash"))
    op.drop_table("archive_index")
