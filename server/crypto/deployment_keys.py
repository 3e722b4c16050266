"""Every machine of a deployment holds the same keys (docs/deployment.md, "the keys").

Each key's check value (recorder.seal.keyring.key_check_value: equal for equal keys, revealing
nothing of them) is recorded in the shared database by the first worker that holds it. A worker
refuses to start when it holds a key of the same file and id with another check value, or lacks
one recorded there: it would write what the other machines cannot read, sign what they cannot
verify, or fail to read what they wrote, and nobody would notice until an auditor opened a
recording. Keys new to the database (the first start, a keyring rotation) are recorded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.keyring import LocalKeyring, key_check_value
from server.auditor.idhash import KEY_FILE as ID_INDEX_KEY_FILE
from server.db.engine import DbSession
from server.db.models import DeploymentKey
from server.errors import StartRefused

log = structlog.get_logger(__name__)

# The keyrings (one key per id) and single secrets that the service's data depends on. The
# signing key is compared by its public key id: the manifests of every machine must verify with
# the keys the auditors were given.
IDENTITY_KEYRING = "identity-keyring.json"
KEYRINGS = ("keyring.json", IDENTITY_KEYRING, "signature-keyring.json", "queue-keyring.json")
SIGNING_KEY = "signing-key.pem"
WEBHOOK_SECRET = "webhook-secret"
# Held only by machines that relay browsers through TURN; one without TURN has nothing to compare.
TURN_SECRET = "turn-secret"

KeyName = tuple[str, str]  # (file, key id inside it; "" for a file of one key)


class DeploymentKeysDiffer(StartRefused):
    """This machine's keys are not the deployment's; the message names the fix."""


class RecordedKey(Protocol):
    """A row of deployment_keys (the model, or a migration's plain row)."""

    @property
    def file(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def check_value(self) -> str: ...
    @property
    def hostname(self) -> str: ...
    @property
    def recorded_at(self) -> datetime: ...


def keyring_check_values(keys_dir: Path, name: str) -> dict[KeyName, str]:
    """The check values of the keyring file `name` (reads it: call off the event loop)."""
    keyring = LocalKeyring.open(keys_dir / name)
    return {(name, key_id): value for key_id, value in keyring.check_values().items()}


def id_index_check_value(keys_dir: Path) -> dict[KeyName, str]:
    index_key = (keys_dir / ID_INDEX_KEY_FILE).read_text(encoding="ascii").strip()
    return {(ID_INDEX_KEY_FILE, ""): key_check_value(bytes.fromhex(index_key))}


def local_check_values(
    keys_dir: Path, signing_key_id: str, webhook_secret: str, turn_secret: str | None = None
) -> dict[KeyName, str]:
    """The check values of the keys this worker uses (reads files: call off the event loop)."""
    values: dict[KeyName, str] = {}
    for name in KEYRINGS:
        values |= keyring_check_values(keys_dir, name)
    values[(SIGNING_KEY, "")] = signing_key_id
    # The secret actually used: a configured webhook secret rather than the generated file.
    values[(WEBHOOK_SECRET, "")] = key_check_value(webhook_secret.encode())
    values |= id_index_check_value(keys_dir)
    if turn_secret is not None:
        values[(TURN_SECRET, "")] = key_check_value(turn_secret.encode())
    return values


async def check_deployment_keys(
    db: async_sessionmaker[DbSession], keys_dir: Path, local: dict[KeyName, str]
) -> None:
    """Raise DeploymentKeysDiffer unless `local` agrees with the deployment's recorded keys;
    record the keys the database does not know yet."""
    hostname = socket.gethostname()
    for _ in range(3):
        async with db() as session:
            recorded = list(await session.scalars(select(DeploymentKey)))
        refuse_other_keys(keys_dir, recorded, local)
        known = {(row.file, row.key_id) for row in recorded}
        new = [name for name in local if name not in known]
        if not new:
            return
        try:
            async with db() as session, session.begin():
                session.add_all(
                    DeploymentKey(
                        file=file,
                        key_id=key_id,
                        check_value=local[(file, key_id)],
                        hostname=hostname,
                    )
                    for file, key_id in new
                )
        except IntegrityError:
            # Another machine recorded its keys at the same moment: compare with those.
            await asyncio.sleep(0.1)
            continue
        log.info("deployment_keys_recorded", keys=[f"{f}:{k}" if k else f for f, k in new])
        return
    raise DeploymentKeysDiffer(
        "the deployment's keys kept changing while this worker compared its own; start it again"
    )


def refuse_other_keys(
    keys_dir: Path, recorded: Sequence[RecordedKey], local: dict[KeyName, str]
) -> None:
    """Raise DeploymentKeysDiffer if a key of `recorded` is another one, or missing, in `local`."""
    problems = [
        _problem(row, local.get((row.file, row.key_id)))
        for row in recorded
        if local.get((row.file, row.key_id)) != row.check_value
        and not (row.file == TURN_SECRET and (row.file, row.key_id) not in local)
    ]
    if problems:
        raise DeploymentKeysDiffer(_message(keys_dir, problems, recorded))


def _problem(row: RecordedKey, mine: str | None) -> str:
    what = f"{row.file} key {row.key_id}" if row.key_id else row.file
    if mine is None:
        return f"{what} is missing here"
    return f"{what} is another key here than on {row.hostname}"


def _message(keys_dir: Path, problems: list[str], recorded: Sequence[RecordedKey]) -> str:
    first = min(recorded, key=lambda row: row.recorded_at).hostname
    return (
        f"this machine's keys in {keys_dir} are not the deployment's ({'; '.join(problems)}). "
        f"Every machine sharing this database must hold the same keys: copy the keys directory "
        f"from {first} (or restore it from the key backup) to {keys_dir}, owner-only (0600), "
        "and start again (docs/deployment.md)"
    )
