"""Archive store failures that matter for evidence reach the audit log (`archive.*`), once per
archive and kind on a worker, however often the uploader retries, and an audit log that cannot be
written never stops the uploads. Against a real MinIO, through `bash infra/test.sh`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.keyring import LocalKeyring
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket
from recorder.store.spool import Spool
from server.audit.incidents import (
    LEGAL_HOLD_UNVERIFIED,
    RECOVERED,
    RETENTION_UNVERIFIED,
    SEAL_FAILED,
    UPLOAD_FAILED,
    StorageIncidents,
)
from server.audit.log import AuditLog
from server.auditor.config import AuditorConfig
from server.auditor.service import Actor, AuditorPortal, PortalError
from server.auth.principal import Principal, Role
from server.db.engine import DbSession
from server.db.models import Archive, AuditEntry
from server.recording.manager import RecordingManager
from server.recording.room import RoomRecording
from tests.integration.test_archive_store import (
    bucket,
    place_under_governance,
    retain_for,
    set_compliance_bypassing_governance,
    store_settings,
    wait_until,
)
from tests.integration.test_recording_faults import (
    _Hiccups,
    _record,
    _worker_recorder,
    quick_retries,
)
from tests.support import server as support
from tests.support.archive import running_uploader
from tests.support.database import add_session, migrated_database
from tests.support.s3_gateway import StrippingS3Gateway
from tests.unit.test_access_denials import DownAudit

__all__ = ["bucket", "quick_retries", "store_settings"]  # fixtures


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        yield factory


async def entries(db: async_sessionmaker[DbSession], prefix: str = "archive.") -> list[AuditEntry]:
    async with db() as session:
        query = select(AuditEntry).where(AuditEntry.action.startswith(prefix))
        return list(await session.scalars(query.order_by(AuditEntry.seq)))


async def test_an_unverified_retention_is_audited_once_per_archive_and_its_recovery_too(
    bucket: ArchiveBucket,
    db: async_sessionmaker[DbSession],
    tmp_path: Path,
) -> None:
    names = ["archives/a_gov/segment-000000", "archives/a_gov/segment-000001"]
    for name in names:
        await place_under_governance(bucket, name, retain_for(0.5))
    incidents = StorageIncidents(AuditLog(db))
    spool = Spool(tmp_path / "spool")
    until = retain_for(2)
    async with running_uploader(spool, bucket) as uploader:
        uploader.observer = incidents
        for name in names:
            await spool.add(name, name.encode(), until)
        # Retried every fraction of a second: many refusals, one entry.
        await wait_until(
            lambda: uploader.status().retention_mismatches >= 5, 30, "the uploads to be retried"
        )
        logged = await entries(db)
        assert [(e.action, e.target, e.actor, e.actor_role) for e in logged] == [
            (RETENTION_UNVERIFIED, "a_gov", "system", "system")
        ]
        assert logged[0].detail["object"] == names[0]
        assert "GOVERNANCE retention until" in logged[0].detail["error"]
        assert uploader.status().pending_count == 2

        for name in names:  # an operator fixes the retention (mc retention set --bypass)
            await asyncio.to_thread(set_compliance_bypassing_governance, bucket, name, until)
        status = await uploader.flush(30)
    assert status.pending_count == 0
    logged = await entries(db)
    assert [e.action for e in logged] == [RETENTION_UNVERIFIED, RECOVERED]
    recovered = logged[1]
    assert recovered.target == "a_gov" and recovered.detail["failure"] == RETENTION_UNVERIFIED
    # Every refusal after the first was left out of the log, and counted in its recovery.
    assert recovered.detail["suppressed"] >= status.retention_mismatches - 1 >= 4
    assert recovered.detail["object"] in names


async def test_an_object_the_store_refuses_for_good_is_audited_once_per_archive(
    bucket: ArchiveBucket,
    db: async_sessionmaker[DbSession],
    tmp_path: Path,
) -> None:
    until = retain_for(1)
    taken = ["archives/a_clash/segment-000000", "archives/a_clash/segment-000001"]
    for name in taken:  # different bytes already archived under these names
        await bucket.put(name, b"already archived", until)
    incidents = StorageIncidents(AuditLog(db))
    spool = Spool(tmp_path / "spool")
    async with running_uploader(spool, bucket) as uploader:
        uploader.observer = incidents
        for name in taken:
            await spool.add(name, b"other bytes", until)
        await spool.add("archives/a_fine/segment-000000", b"fine", until)
        status = await uploader.flush(30)
    assert status.rejected_count == 2 and status.uploaded_count == 1
    logged = await entries(db)
    assert [(e.action, e.target) for e in logged] == [(UPLOAD_FAILED, "a_clash")]
    detail = logged[0].detail
    assert detail["object"] == taken[0] and detail["reason"] == "conflict"
    assert "different content" in detail["error"]
    assert (spool.rejected_directory / detail["spool_file"]).exists()


async def test_an_audit_log_that_cannot_be_written_does_not_stop_the_uploads(
    bucket: ArchiveBucket,
    tmp_path: Path,
) -> None:
    name = "archives/a_down/segment-000000"
    await place_under_governance(bucket, name, retain_for(0.5))
    audit = DownAudit()
    spool = Spool(tmp_path / "spool")
    until = retain_for(2)
    async with running_uploader(spool, bucket) as uploader:
        uploader.observer = StorageIncidents(audit)  # type: ignore[arg-type]
        await spool.add(name, name.encode(), until)
        await wait_until(
            lambda: uploader.status().retention_mismatches >= 3, 30, "the upload to be retried"
        )
        assert uploader.running and audit.tries == 1
        await asyncio.to_thread(set_compliance_bypassing_governance, bucket, name, until)
        status = await uploader.flush(30)
        assert uploader.running
    assert status.pending_count == 0 and status.uploaded_count == 1
    assert audit.tries == 2  # the recovery was tried too, and failed as quietly


async def test_a_recording_that_cannot_be_sealed_is_audited_once_and_its_late_seal_too(
    tmp_path: Path, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broadcast(message: dict[str, Any], audience: str) -> None:
        return None

    async with _worker_recorder(tmp_path, monkeypatch) as (manager, db):
        manager.audit_incidents(StorageIncidents(AuditLog(db)))
        working = manager.context
        # The manifest chain's database goes away for long, after the recording started.
        manager.context = dataclasses.replace(working, chain=_Hiccups(failures=10**6))
        room = RoomRecording(manager, "s1", "wealth", broadcast)
        await room.request_consent(customer_connected=True)
        await room.consent(True)
        recording = room._recording
        assert recording is not None
        _record(recording, 2)
        await room.stop(patience=0.2)
        assert room.state == "interrupted"  # left to the manager, which retries every 50 ms
        passes = manager.unsealed_count
        await asyncio.sleep(0.5)
        assert manager.unsealed_count == passes == 1
        logged = await entries(db)
        assert [(e.action, e.target) for e in logged] == [(SEAL_FAILED, recording.archive_id)]
        detail = logged[0].detail
        assert detail["session_id"] == "s1" and detail["stage"] == "stop"
        assert detail["error"] == "ConnectionError: database unavailable"

        manager.context = working  # the database is back
        async with asyncio.timeout(10):
            while manager.unsealed_count:  # noqa: ASYNC110 - the manager's retries seal it
                await asyncio.sleep(0.02)
        logged = await entries(db)
    assert [(e.action, e.target) for e in logged] == [
        (SEAL_FAILED, recording.archive_id),
        (RECOVERED, recording.archive_id),
    ]
    recovered = logged[1].detail
    assert recovered["failure"] == SEAL_FAILED and recovered["suppressed"] >= 3
    assert recovered["status"] == "complete" and len(recovered["manifest_sha256"]) == 64


async def test_a_journal_no_manifest_can_be_made_from_is_audited(
    tmp_path: Path, db: async_sessionmaker[DbSession]
) -> None:
    manager = RecordingManager(support.test_settings(tmp_path / "server"), db)
    manager.audit_incidents(StorageIncidents(AuditLog(db)))
    directory = manager.context.journal_dir
    directory.mkdir(parents=True)
    (directory / "a_headless.jsonl").write_text('{"kind":"mark","name":"x"}\n')
    await manager.start()
    await manager.stop()
    logged = await entries(db)
    assert [(e.action, e.target, e.detail["stage"]) for e in logged] == [
        (SEAL_FAILED, "a_headless", "unusable_journal")
    ]


async def test_a_legal_hold_the_store_does_not_keep_is_audited_once_and_its_recovery_too(
    store_settings: StoreSettings,
    bucket: ArchiveBucket,
    db: async_sessionmaker[DbSession],
    tmp_path: Path,
) -> None:
    archive_id = "a_held"
    for name in ("manifest.json", "segment-000000"):
        await bucket.put(f"archives/{archive_id}/{name}", name.encode(), retain_for(1))
    await add_session(db, "s1", archives=(archive_id,))
    async with db() as session, session.begin():
        await session.execute(
            update(Archive)
            .where(Archive.id == archive_id)
            .values(status="sealed", manifest_sha256="0" * 64, chain_index=0)
        )
    auditor = Actor(Principal(Role.AUDITOR, "a", "csrf", user_id="u_auditor"), None)
    secret = store_settings.secret_key.get_secret_value()
    gateway = StrippingS3Gateway(
        store_settings.endpoint, store_settings.access_key, secret, drop_legal_holds=True
    )
    with gateway:
        through = store_settings.model_copy(update={"endpoint": gateway.url})
        portal = AuditorPortal(
            AuditorConfig(),
            db,
            tmp_path / "data",
            ArchiveBucket.from_settings(through),
            LocalKeyring.open(tmp_path / "keyring.json", create=True),
            AuditLog(db),
        )
        portal.incidents = StorageIncidents(AuditLog(db))
        for _ in range(3):  # the auditor tries again: one entry all the same
            with pytest.raises(PortalError) as refused:
                await portal.set_hold(auditor, archive_id, True, "诉讼保全")
            assert (refused.value.status, refused.value.code) == (503, "store_unavailable")
        logged = await entries(db)
        assert [(e.action, e.target) for e in logged] == [(LEGAL_HOLD_UNVERIFIED, archive_id)]
        assert logged[0].detail["by"] == "u_auditor"
        assert "reads back as off" in logged[0].detail["error"]

        gateway.drop_legal_holds = False  # the store keeps holds again
        held = await portal.set_hold(auditor, archive_id, True, "诉讼保全")
    assert held["held"] is True and held["objects"] == 2
    logged = await entries(db)
    assert [e.action for e in logged] == [LEGAL_HOLD_UNVERIFIED, RECOVERED]
    assert logged[1].detail == {"failure": LEGAL_HOLD_UNVERIFIED, "suppressed": 2, "objects": 2}
