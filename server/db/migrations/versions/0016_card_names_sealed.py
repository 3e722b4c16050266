"""Customer names read from ID cards: sealed and keyed-hashed in the auditor index, not in clear

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28 18:00:00.000000

The names already indexed are sealed here, in the migration's transaction, so that the clear
column is dropped in the same step: nowhere is there a schema that still holds names in clear
after the upgrade, nor one half converted after a failure (PostgreSQL rolls the DDL back; for
SQLite, whose driver commits an ALTER TABLE at once, the keys are checked before any DDL). That
needs the deployment's keys (server/auditor/names.py: `names_for_migration` refuses, naming the
fix, without them or with keys other than those the deployment recorded); `vteller serve` and
`vteller db upgrade` pass them (server/db/engine.py, `migrate`). A database with no name indexed
yet (a new one, the tests') needs none.
"""

from typing import Any

import sqlalchemy as sa
import structlog
from alembic import context, op

from server.auditor.names import CardNames, names_for_migration
from server.crypto.rows import SealedRow

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

log = structlog.get_logger(__name__)

_index = sa.table(
    "archive_index",
    sa.column("session_id", sa.String),
    sa.column("card_name", sa.String),
    sa.column("name_hash", sa.String),
    sa.column("name_key_id", sa.String),
    sa.column("name_wrapped_key", sa.LargeBinary),
    sa.column("name_sealed", sa.LargeBinary),
)
_deployment_keys = sa.table(
    "deployment_keys",
    sa.column("file", sa.String),
    sa.column("key_id", sa.String),
    sa.column("check_value", sa.String),
    sa.column("hostname", sa.String),
    sa.column("recorded_at", sa.String),  # only ordered, to name the first machine
)


def _names() -> CardNames:
    recorded: list[Any] = list(op.get_bind().execute(sa.select(_deployment_keys)).all())
    return names_for_migration(context.config.attributes.get("keys_dir"), recorded)


def upgrade() -> None:
    bind = op.get_bind()
    clear = bind.execute(
        sa.select(_index.c.session_id, _index.c.card_name).where(_index.c.card_name.is_not(None))
    ).all()
    # Keys first, before any DDL: SQLite's driver commits an ALTER TABLE at once, so a refusal
    # after it would leave a schema the next attempt cannot migrate.
    names = _names() if clear else None
    with op.batch_alter_table("archive_index", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("name_key_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("name_wrapped_key", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("name_sealed", sa.LargeBinary(), nullable=True))
        batch_op.create_index(batch_op.f("ix_archive_index_name_hash"), ["name_hash"], unique=False)
    if names is not None:
        for session_id, card_name in clear:
            # A name of nothing but whitespace finds nothing and shows nothing: dropped with it.
            sealed = names.seal(session_id, card_name)
            if sealed is not None:
                bind.execute(
                    sa.update(_index)
                    .where(_index.c.session_id == session_id)
                    .values(
                        name_hash=sealed.hash,
                        name_key_id=sealed.row.key_id,
                        name_wrapped_key=sealed.row.wrapped_key,
                        name_sealed=sealed.row.sealed,
                    )
                )
        log.info("auditor_card_names_sealed", rows=len(clear))
    with op.batch_alter_table("archive_index", schema=None) as batch_op:
        batch_op.drop_column("card_name")


def downgrade() -> None:
    bind = op.get_bind()
    sealed = bind.execute(
        sa.select(
            _index.c.session_id,
            _index.c.name_key_id,
            _index.c.name_wrapped_key,
            _index.c.name_sealed,
        ).where(_index.c.name_sealed.is_not(None))
    ).all()
    names = _names() if sealed else None  # before any DDL, as in upgrade
    with op.batch_alter_table("archive_index", schema=None) as batch_op:
        batch_op.add_column(sa.Column("card_name", sa.String(length=64), nullable=True))
    if names is not None:
        for session_id, key_id, wrapped_key, blob in sealed:
            name = names.open(session_id, SealedRow(key_id, wrapped_key, blob))
            bind.execute(
                sa.update(_index).where(_index.c.session_id == session_id).values(card_name=name)
            )
    with op.batch_alter_table("archive_index", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_archive_index_name_hash"))
        batch_op.drop_column("name_sealed")
        batch_op.drop_column("name_wrapped_key")
        batch_op.drop_column("name_key_id")
        batch_op.drop_column("name_hash")
