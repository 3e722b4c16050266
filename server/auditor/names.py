"""The customer's name as read from the ID card: sealed in the search index, found by keyed hash.

The product promises ID data encrypted at rest, so a copy of the database must not be a list of
customers' legal names tied to their recordings. The index row holds the name sealed under the
identity records' keyring (a data key per row, server/crypto/rows.py), which the portal opens to
show it to an auditor, and `name_hash`, its blind index (idhash.py), which finds an exact name
without opening any row. Finding a name by a part of it would mean opening every row: the portal
searches exact names only (docs/auditor.md section 2).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from recorder.seal.keyring import KeyringError
from server.auditor.idhash import KEY_FILE, CardNameError, IdNumberHasher
from server.crypto.deployment_keys import (
    IDENTITY_KEYRING,
    RecordedKey,
    id_index_check_value,
    keyring_check_values,
    refuse_other_keys,
)
from server.crypto.rows import RowSealer, SealedRow
from server.errors import StartRefused

# The same length the column had in clear: what OCR reads from a card is far shorter.
MAX_CHARS = 64
# The deployment_keys table as migrations see it (not the ORM model, which follows the newest
# schema): the keys the deployment recorded, compared with the keys a migration is given.
_DEPLOYMENT_KEYS = sa.table(
    "deployment_keys",
    sa.column("file", sa.String),
    sa.column("key_id", sa.String),
    sa.column("check_value", sa.String),
    sa.column("hostname", sa.String),
    sa.column("recorded_at", sa.String),  # only ordered, to name the first machine
)
# Row ids for key wrapping, derived from the session id (the row's key) under a namespace of
# our own, so that a sealed name moved to another session's row does not open.
_ROW_NAMESPACE = uuid.UUID("6f0c2f57-38a4-4d0e-9b83-3c5b0f0e7a51")


@dataclass(frozen=True)
class SealedName:
    hash: str
    row: SealedRow


def _row_id(session_id: str) -> uuid.UUID:
    return uuid.uuid5(_ROW_NAMESPACE, session_id)


def _aad(session_id: str) -> bytes:
    return f"vteller/card-name/v1\x00{session_id}".encode()


class CardNames:
    def __init__(self, keys_dir: Path, hasher: IdNumberHasher, *, create: bool = True) -> None:
        self._sealer = RowSealer(keys_dir / IDENTITY_KEYRING, create=create)
        self._hasher = hasher

    def hash(self, raw: str) -> str:
        """Raises CardNameError for a name of nothing but whitespace."""
        return self._hasher.hash_name(raw)

    def seal(self, session_id: str, name: str) -> SealedName | None:
        """CPU work: call it from a thread. None for a name of nothing but whitespace."""
        name = name[:MAX_CHARS]
        try:
            name_hash = self._hasher.hash_name(name)
        except CardNameError:
            return None
        row = self._sealer.seal(_row_id(session_id), _aad(session_id), name.encode("utf-8"))
        return SealedName(name_hash, row)

    def open(self, session_id: str, row: SealedRow) -> str:
        """CPU work: call it from a thread. Raises on a wrong key, row or tampered bytes."""
        return self._sealer.open(_row_id(session_id), _aad(session_id), row).decode("utf-8")


class MigrationKeysMissing(StartRefused):
    """A migration must seal or re-hash names, and cannot reach the keys to do it."""


IN_CLEAR = (
    "the auditor index holds customer names in clear, which this version seals with the "
    "deployment's keys"
)


def names_for_migration(need: str = IN_CLEAR) -> CardNames:
    """The deployment's CardNames, for the running migration converting rows: from the keys
    directory `migrate()` handed over, keys that exist (never made here, as a new key would seal
    names no other machine can open) and that are the keys the deployment recorded (its
    deployment_keys rows), else an error naming the fix. `need` says why the migration needs
    them, as the start of that error."""
    keys_dir: Path | None = context.config.attributes.get("keys_dir")
    recorded: list[Any] = list(op.get_bind().execute(sa.select(_DEPLOYMENT_KEYS)).all())
    return _names_from(keys_dir, recorded, need)


def _names_from(keys_dir: Path | None, recorded: Sequence[RecordedKey], need: str) -> CardNames:
    if keys_dir is None:
        raise MigrationKeysMissing(
            f"{need}, and this migration was not given them: run `vteller db upgrade` "
            "(or `vteller serve`) with the deployment's data directory (VTELLER_DATA_DIR), as "
            "the user that owns its keys/"
        )
    missing = [name for name in (IDENTITY_KEYRING, KEY_FILE) if not (keys_dir / name).exists()]
    if missing:
        raise MigrationKeysMissing(
            f"{need}, and {', '.join(missing)} is missing in {keys_dir}: restore the "
            "keys directory from the key backup (or copy it from another machine of the "
            "deployment, docs/deployment.md) and run the upgrade again"
        )
    try:
        local = keyring_check_values(keys_dir, IDENTITY_KEYRING) | id_index_check_value(keys_dir)
        names = CardNames(keys_dir, IdNumberHasher.open(keys_dir), create=False)
    except (KeyringError, OSError, ValueError) as exc:
        raise MigrationKeysMissing(
            f"{need}, and the keys in {keys_dir} cannot be used ({exc}): fix that and "
            "run the upgrade again"
        ) from exc
    used = [row for row in recorded if row.file in (IDENTITY_KEYRING, KEY_FILE)]
    refuse_other_keys(keys_dir, used, local)
    return names
