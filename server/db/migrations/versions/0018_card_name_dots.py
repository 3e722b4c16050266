"""Card name hashes with every name dot folded to U+00B7

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-28 19:00:00.000000

A name's blind index now folds the dots OCR and keyboards give for the U+00B7 of a
transliterated name (server/auditor/idhash.py, `normalize_name`). A card read with another dot
(阿卜杜•热合曼) was hashed with it, and the auditor's search for the name as printed finds that
row only once its hash is computed again. Which rows have such a dot cannot be told from the
hash, so every sealed name is opened, in the migration's transaction, and its hash written anew
where it changed: like 0016, this needs the deployment's keys (`names_for_migration` refuses,
naming the fix, without them), and a database with no name indexed needs none.
"""

import sqlalchemy as sa
import structlog
from alembic import op

from server.auditor.names import names_for_migration
from server.crypto.rows import SealedRow

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

log = structlog.get_logger(__name__)

_index = sa.table(
    "archive_index",
    sa.column("session_id", sa.String),
    sa.column("name_hash", sa.String),
    sa.column("name_key_id", sa.String),
    sa.column("name_wrapped_key", sa.LargeBinary),
    sa.column("name_sealed", sa.LargeBinary),
)
_NEED = (
    "the auditor index holds customer name hashes that this version computes anew (name dots "
    "folded: docs/auditor.md section 2) from the names sealed with the deployment's keys"
)


def upgrade() -> None:
    bind = op.get_bind()
    sealed = bind.execute(
        sa.select(
            _index.c.session_id,
            _index.c.name_hash,
            _index.c.name_key_id,
            _index.c.name_wrapped_key,
            _index.c.name_sealed,
        ).where(_index.c.name_sealed.is_not(None))
    ).all()
    if not sealed:
        return
    names = names_for_migration(_NEED)
    changed = 0
    for session_id, old_hash, key_id, wrapped_key, blob in sealed:
        name_hash = names.hash(names.open(session_id, SealedRow(key_id, wrapped_key, blob)))
        if name_hash != old_hash:
            bind.execute(
                sa.update(_index)
                .where(_index.c.session_id == session_id)
                .values(name_hash=name_hash)
            )
            changed += 1
    log.info("auditor_card_name_hashes_folded", rows=len(sealed), changed=changed)


def downgrade() -> None:
    # Left folded: the older version then finds such a card by its printed spelling (U+00B7),
    # which is what an auditor types, and cannot compute the unfolded hashes itself.
    pass
