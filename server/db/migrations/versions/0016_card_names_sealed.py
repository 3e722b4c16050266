"""Customer names read from ID cards: sealed and keyed-hashed in the auditor index, not in clear

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28 18:00:00.000000

The names already indexed are sealed here, in the migration's transaction, so that the clear
column is dropped in the same step: nowhere is there a schema that still holds names in clear
after the upgrade, nor one half converted after a failure (both databases roll DDL back:
server/db/engine.py, `migrate`). That
needs the deployment's keys (server/auditor/names.py: `names_for_migration` refuses, naming the
fix, without them or with keys other than those the deployment recorded); `vteller serve` and
`vteller db upgrade` pass them (server/db/engine.py, `migrate`). A database with no name indexed
yet (a new one, the tests') needs none.
"""

import sqlalchemy as sa
import structlog
from alembic import op

from server.auditor.names import names_for_migration
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


def upgrade() -> None:
    bind = op.get_bind()
    clear = bind.execute(
        sa.select(_index.c.session_id, _index.c.card_name).where(_index.c.card_name.is_not(None))
    ).all()
    # Keys first: a refusal says what to do before any work is done (and undone).
    names = names_for_migration() if clear else None
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
    names = names_for_migration() if sealed else None  # keys first, as in upgrade
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
