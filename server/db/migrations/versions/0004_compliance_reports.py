"""Compliance reports (the after-call analysis jobs) and the review queue

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 23:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compliance_reports",
        sa.Column("archive_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("report_object", sa.String(length=32), nullable=True),
        sa.Column("report_sha256", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["archive_id"], ["archives.id"]),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("archive_id"),
    )
    with op.batch_alter_table("compliance_reports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_compliance_reports_session_id"), ["session_id"], unique=False
        )
    op.create_table(
        "compliance_reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("archive_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("moment", sa.String(length=64), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["archive_id"], ["archives.id"]),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("compliance_reviews", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_compliance_reviews_archive_id"), ["archive_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("compliance_reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compliance_reviews_archive_id"))
    op.drop_table("compliance_reviews")
    with op.batch_alter_table("compliance_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compliance_reports_session_id"))
    op.drop_table("compliance_reports")
