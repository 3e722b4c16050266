"""The checkpoint writer on a real (SQLite) database: it signs the normal log, and refuses to sign a
log rewritten behind its back, however the checkpoints that would tell were removed."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from structlog.testing import capture_logs

from recorder.seal.signing import Signer
from server.audit.chain import CheckpointFields
from server.audit.log import SIGNED_HERE_FILE, AuditLog, CheckpointRefused
from server.db.engine import DbSession
from server.db.models import AuditCheckpoint, AuditEntry
from tests.support.audit import launder
from tests.support.database import migrated_database

SIGNER = Signer.from_seed(bytes(range(32)))
KEYS = {SIGNER.key_id: SIGNER.public_key_pem()}
EVERY = 3  # intervals 3..5, 6..8, ...: a few entries show what 100 would


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        yield factory


def _writer(db: async_sessionmaker[DbSession], data_dir: Path | None = None) -> AuditLog:
    return AuditLog(db, SIGNER, data_dir=data_dir, checkpoint_every=EVERY)


async def _append(log: AuditLog, count: int) -> None:
    for n in range(count):
        await log.append(
            "auth.login_failed",
            actor="anonymous",
            actor_role="anonymous",
            target=f"user{n}",
            detail={"reason": "invalid_credentials"},
        )


async def _signed_seqs(log: AuditLog) -> list[int]:
    return [c.seq for c in await log.checkpoints()]


async def test_the_writer_signs_each_interval_and_remembers_it(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    log = _writer(db, tmp_path)
    await _append(log, 7)
    assert await _signed_seqs(log) == [3, 6]
    record = tmp_path / SIGNED_HERE_FILE
    assert record.stat().st_mode & 0o777 == 0o600
    assert json.loads(record.read_text())["seq"] == 6
    checkpoint = await log.checkpoint()
    assert checkpoint is not None and checkpoint.seq == 7
    assert json.loads(record.read_text()) == {"seq": 7, "entry_hash": checkpoint.entry_hash}
    report = await log.verify(KEYS)
    assert report.ok, report.render()
    # A restarted worker picks up where the record is.
    restarted = _writer(db, tmp_path)
    await _append(restarted, 3)
    assert await _signed_seqs(restarted) == [3, 6, 7, 9]
    assert (await restarted.verify(KEYS)).ok


async def test_a_laundered_log_is_reported_and_never_signed(
    db: async_sessionmaker[DbSession],
) -> None:
    log = _writer(db)
    await _append(log, 7)
    await launder(db, 2)

    report = await log.verify(KEYS)
    assert report.problems == [
        "entries 1..7 are not signed, though the writer signs each time the log passes a "
        "multiple of 3 (checkpoints deleted?)"
    ]
    with pytest.raises(CheckpointRefused, match=r"entries 1\.\.7 are not signed"):
        await log.checkpoint()
    # The worker goes on logging (no request fails) but does not sign, and says why.
    with capture_logs() as logs:
        await _append(log, 3)
    assert await _signed_seqs(log) == []
    [refused] = [e for e in logs if e["event"] == "audit_checkpoint_refused"]
    assert refused["log_level"] == "error"
    assert "vteller audit verify" in refused["fix"]
    await log.stop()
    assert await _signed_seqs(log) == []


async def test_this_machines_record_catches_a_rewrite_too_short_to_show(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    log = _writer(db, tmp_path)
    await _append(log, 5)
    assert await _signed_seqs(log) == [3]
    await launder(db, 2)  # 5 entries without checkpoints: within what the spacing allows

    message = "entry 3 is not the one this machine signed (log rewritten?)"
    assert (await log.verify(KEYS)).problems == [message]
    with pytest.raises(CheckpointRefused, match=re.escape(message)):
        await log.checkpoint()
    with pytest.raises(CheckpointRefused, match=re.escape(message)):
        await _writer(db, tmp_path).checkpoint()  # after a restart as well
    assert await _signed_seqs(log) == []


async def test_deleting_only_the_newest_checkpoint_is_caught(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    log = _writer(db, tmp_path)
    await _append(log, 7)
    async with db() as session, session.begin():
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq == 6))
    message = "the checkpoint at 6 that this machine signed is missing (checkpoints deleted?)"
    assert (await log.verify(KEYS)).problems == [message]
    with pytest.raises(CheckpointRefused, match=re.escape(message)):
        await log.checkpoint()

    # Rewriting after the one left makes entry 6 differ from what was signed here.
    await launder(db, 5)
    with pytest.raises(CheckpointRefused, match="entry 6 is not the one this machine signed"):
        await log.checkpoint()


async def test_the_newest_checkpoint_must_hold(db: async_sessionmaker[DbSession]) -> None:
    log = _writer(db)
    await _append(log, 7)
    async with db() as session, session.begin():
        await session.execute(
            update(AuditCheckpoint).where(AuditCheckpoint.seq == 6).values(signature="00" * 64)
        )
    with pytest.raises(CheckpointRefused, match="checkpoint at 6: signature invalid"):
        await log.checkpoint()

    # A rewritten log "checkpointed" with a key of the attacker's own.
    await launder(db, 2)
    forger = Signer.from_seed(bytes(32))
    async with db() as session, session.begin():
        head = await session.get(AuditEntry, 7)
        assert head is not None
        fields = CheckpointFields(7, head.entry_hash, head.at, forger.key_id)
        session.add(
            AuditCheckpoint(
                seq=7,
                entry_hash=head.entry_hash,
                at=head.at,
                key_id=forger.key_id,
                signature=forger.sign(fields.canonical()).hex(),
            )
        )
    with pytest.raises(CheckpointRefused, match=f"signed by unknown key {forger.key_id}"):
        await log.checkpoint()


async def test_an_interval_started_from_the_command_line_is_signed_by_the_next_worker_entry(
    db: async_sessionmaker[DbSession],
) -> None:
    worker, command_line = _writer(db), AuditLog(db, checkpoint_every=EVERY)
    await _append(worker, 2)
    await _append(command_line, 1)  # entry 3: cannot sign
    assert await _signed_seqs(worker) == []
    await _append(worker, 4)  # 4 signs for interval 3..5; 6 starts the next
    assert await _signed_seqs(worker) == [4, 6]
    assert (await worker.verify(KEYS)).ok


async def test_an_operator_can_accept_a_gap_but_never_a_broken_chain(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    log = _writer(db, tmp_path)
    await _append(log, 7)
    # The database restored from a backup taken at entry 5: older than this machine's record.
    async with db() as session, session.begin():
        await session.execute(delete(AuditEntry).where(AuditEntry.seq > 5))
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq > 5))
    refused = "entry 6, which this machine signed, is missing (log truncated?)"
    with pytest.raises(CheckpointRefused, match=re.escape(refused)):
        await log.checkpoint()

    checkpoint = await log.checkpoint(accept_unsigned="restored from backup, INC-1")
    assert checkpoint is not None and checkpoint.seq == 6
    [forced] = await log.tail(1)
    assert (forced.action, forced.actor, forced.detail) == (
        "audit.checkpoint_forced",
        "system",
        {"reason": "restored from backup, INC-1", "refused": refused},
    )
    assert json.loads((tmp_path / SIGNED_HERE_FILE).read_text())["seq"] == 6
    assert (await log.verify(KEYS)).ok
    await _append(log, 3)
    assert await _signed_seqs(log) == [3, 6, 9]

    async with db() as session, session.begin():
        await session.execute(update(AuditEntry).where(AuditEntry.seq == 8).values(target="edited"))
        await session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq == 9))
    with pytest.raises(CheckpointRefused, match="entry 8: hash does not match its content"):
        await log.checkpoint(accept_unsigned="looked into it")
    assert [e.action for e in await log.tail(1)] == ["auth.login_failed"]


async def test_an_unreadable_record_refuses(
    db: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    log = _writer(db, tmp_path)
    await _append(log, 2)
    (tmp_path / SIGNED_HERE_FILE).write_text("{")
    with pytest.raises(CheckpointRefused, match="cannot read"):
        await log.checkpoint()
