"""A recording loses nothing when the server is killed or the archive store goes away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder import journal as journal_module
from recorder import session as recording_session
from recorder.journal import Journal, UnknownRecord
from recorder.playback import MediaInspector
from recorder.seal.digest import sha256_hex
from recorder.seal.keyring import LocalKeyring
from recorder.seal.manifest import MANIFEST_OBJECT, SIGNATURE_OBJECT, Manifest, parse_manifest
from recorder.seal.signing import Signer, load_public_keys
from recorder.session import (
    ArchiveRecord,
    RecorderContext,
    RecordingSession,
    archive_prefix,
    recover,
)
from recorder.store.config import RetentionRules, StoreSettings
from recorder.store.s3 import ArchiveBucket, ArchiveUnavailableError, S3Archive
from recorder.store.spool import Spool, SpoolEntry
from recorder.verify import DirectoryArchive, VerificationReport, verify_archive
from server.db.engine import DbSession
from server.db.models import Archive
from server.recording import manager as manager_module
from server.recording.chain import ChainConflict, DatabaseChain
from server.recording.manager import RecordingManager
from server.recording.metrics import RecordingCollector
from server.recording.room import RoomRecording
from tests.support import server as support
from tests.support.bot import Bot
from tests.support.database import add_session, migrated_database
from tests.support.minio import PrivateMinio
from tests.support.process import ServerProcess
from tests.support.server import ApiClient


async def _call(server: ServerProcess) -> tuple[ApiClient, Bot, Bot, str]:
    teller_http, customer_http = ApiClient(server.url), ApiClient(server.url)
    await teller_http.login("teller1")
    created = await teller_http.call(
        "POST", "/api/v1/invitations", {"business": "wealth"}, expect=201
    )
    await customer_http.join_link(created["invitation_url"])
    session_id = created["session"]["id"]
    ws_url = created["session"]["ws_url"]
    teller = Bot(teller_http, session_id, colour="blue", ws_url=ws_url)
    customer = Bot(customer_http, session_id, colour="red", ws_url=ws_url)
    await teller.join()
    await customer.join()
    await teller.wait_for_media(customer.participant_id, "camera")
    await teller.send({"type": "recording_start"})
    await customer.expect("consent_request")
    await customer.send({"type": "consent", "granted": True})
    while (state := await teller.expect("recording"))["state"] != "recording":
        pass
    return teller_http, teller, customer, str(state["archive_id"])


async def _verify_when_stored(
    data_dir: Path, store: dict[str, str], archive_id: str
) -> VerificationReport:
    """Polls the archive store until the manifest is there, then verifies like an auditor."""
    settings = StoreSettings.from_environment(environ=store)
    archive = S3Archive(ArchiveBucket.from_settings(settings), f"archives/{archive_id}")
    async with asyncio.timeout(60):
        while "manifest.sig" not in await asyncio.to_thread(archive.list_names):  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.5)
    keys = data_dir / "keys"
    return await asyncio.to_thread(
        verify_archive,
        archive,
        load_public_keys(keys / "public"),
        keyring=LocalKeyring.open(keys / "keyring.json"),
        inspector=MediaInspector(),
    )


@pytest.fixture
async def minio(tmp_path: Path) -> AsyncIterator[PrivateMinio]:
    store = PrivateMinio(tmp_path / "minio")
    await asyncio.to_thread(store.start)
    try:
        yield store
    finally:
        await asyncio.to_thread(store.stop)


async def test_server_killed_mid_recording_finalizes_as_interrupted(
    tmp_path: Path, minio: PrivateMinio
) -> None:
    store = minio.environment()
    server = ServerProcess(tmp_path / "server", store=store)
    server.create_user("teller1", "teller")
    await server.start()
    teller_http, teller, customer, archive_id = await _call(server)
    try:
        await asyncio.sleep(5)  # a couple of sealed segments
        server.kill()
    finally:
        await teller.close()
        await customer.close()
        await teller_http.close()
        await customer.client.close()
    try:
        await server.start()  # the restarted worker finds the journal and finishes the archive
        report = await _verify_when_stored(tmp_path / "server", store, archive_id)
    finally:
        server.stop()
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "interrupted"
    assert report.manifest.segments, "segments sealed before the kill are kept"
    assert any("recorder stopped" in gap.reason for gap in report.manifest.gaps)
    # Who filled which track survives the kill too (the journal's track records).
    roles = {p.id: p.role for p in report.manifest.participants}
    recorded = {(roles[t.participant_id], t.kind) for t in report.manifest.tracks}
    assert {("teller", "video"), ("customer", "audio")} <= recorded


async def test_archive_store_down_mid_recording_loses_nothing(
    tmp_path: Path, minio: PrivateMinio
) -> None:
    store = minio.environment()
    server = ServerProcess(
        tmp_path / "server",
        VTELLER_STORE__RETRY_BACKOFF_MIN_SECONDS="0.2",
        VTELLER_STORE__RETRY_BACKOFF_MAX_SECONDS="1",
        store=store,
    )
    server.create_user("teller1", "teller")
    await server.start()
    try:
        teller_http, teller, customer, archive_id = await _call(server)
        try:
            await asyncio.sleep(2)
            await asyncio.to_thread(minio.stop)
            # The teller is told what is waiting and why.
            async with asyncio.timeout(30):
                while not (await teller.expect("recording"))["store"]["last_error"]:
                    pass
            await asyncio.sleep(3)
            await teller.send({"type": "recording_stop"})
            while (await teller.expect("recording", timeout=30))["state"] != "sealed":
                pass
        finally:
            await teller.close()
            await customer.close()
            await teller_http.close()
            await customer.client.close()
        spool = tmp_path / "server" / "archive-spool"
        assert any(spool.rglob("*")), "the spool holds what the store could not take"
        await asyncio.to_thread(minio.start)
        report = await _verify_when_stored(tmp_path / "server", store, archive_id)
    finally:
        server.stop()
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "complete"
    assert len(report.manifest.segments) >= 3
    assert os.environ.get("VTELLER_S3_ENDPOINT") != store["VTELLER_S3_ENDPOINT"]


async def test_without_an_archive_store_calls_record_and_say_why(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from recorder.store.config import StoreSettings as Store
    from tests.integration.test_call import _teller_and_customer
    from tests.support.server import running_server, test_settings

    unconfigured = Store(access_key="", secret_key=SecretStr(""))
    async with running_server(test_settings(tmp_path, store=unconfigured)) as server:
        teller, customer, _ = await _teller_and_customer(server)
        try:
            await teller.join()
            await customer.join()
            await teller.send({"type": "recording_start"})
            await customer.expect("consent_request")
            await customer.send({"type": "consent", "granted": True})
            async with asyncio.timeout(30):
                while not (error := (await teller.expect("recording"))["store"]["last_error"]):
                    pass
            assert "not configured" in error and "VTELLER_S3" in error
            # Nothing is lost meanwhile: the sealed segments wait in the spool.
            spool = server.services.rooms._recorder.spool
            async with asyncio.timeout(30):
                while spool.pending_count < 2:  # noqa: ASYNC110 - the recorder fills it
                    await asyncio.sleep(0.5)
        finally:
            await customer.close()
            await teller.close()


class _FullSpool(Spool):
    """A spool whose disk is full for its first `failures` writes."""

    def __init__(self, directory: Path, failures: int) -> None:
        super().__init__(directory)
        self.failures = failures

    async def add(self, name: str, data: bytes, retain_until: datetime) -> SpoolEntry:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return await super().add(name, data, retain_until)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool and journal writes retried within milliseconds, not seconds."""
    monkeypatch.setattr(recording_session, "STORE_RETRY_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(recording_session, "STORE_RETRY_MAX_SECONDS", 0.04)


class _OnlyChain:
    async def head(self) -> str | None:
        return None

    async def append(self, record: ArchiveRecord) -> bool:
        return True


class _Store:
    """The archive store's listing: what the uploader put there, or down when `objects` is None."""

    def __init__(self, objects: dict[str, bytes] | None) -> None:
        self.objects = objects

    async def list(self, prefix: str = "") -> list[str]:
        if self.objects is None:
            raise ArchiveUnavailableError("archive store unreachable: connection refused")
        return sorted(name for name in self.objects if name.startswith(prefix))


def _context(tmp_path: Path, spool: Spool) -> RecorderContext:
    keys = tmp_path / "keys"
    signer = Signer.open(keys / "signing-key.pem", create=True)
    signer.publish(keys / "public")
    return RecorderContext(
        keyring=LocalKeyring.open(keys / "keyring.json", create=True),
        signer=signer,
        spool=spool,
        archive=_Store({}),
        chain=_OnlyChain(),
        journal_dir=tmp_path / "journal",
        retention=RetentionRules(),
        segment_seconds=3600,  # cut by the tests, by hand
    )


def _record(recording: RecordingSession, segments: int, start_ms: int = 0) -> None:
    for index in range(segments):
        at = start_ms + index * 100
        recording._writer.packet(0, b"opus" * 10, at, True)
        recording._writer.cut(at + 50)


async def _archived(context: RecorderContext, store: dict[str, bytes], directory: Path) -> Path:
    """The archive as an auditor would find it: what the store holds, then what the uploader
    would still put there from the spool."""
    objects = dict(store)
    for path in await context.spool.paths():
        entry, data = await context.spool.load(path)
        objects[entry.name] = data
    for name, data in objects.items():
        target = directory / name.rsplit("/", 1)[1]
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
    return directory


def _verified(context: RecorderContext, directory: Path) -> VerificationReport:
    keys = {context.signer.key_id: context.signer.public_key_pem()}
    return verify_archive(DirectoryArchive(directory), keys, keyring=context.keyring)


async def _dies_once_journaled(
    recording: RecordingSession, journal: Journal, segments: int, end_ms: int
) -> None:
    """The process dies once `segments` are journaled: its tasks stop where they are."""
    async with asyncio.timeout(10):
        while len((await asyncio.to_thread(journal.read)).segments) < segments:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    for task in (recording._worker, recording._cutter):
        task.cancel()
    await asyncio.gather(recording._worker, recording._cutter, return_exceptions=True)
    await recording._writer.close(end_ms)


async def test_a_recording_does_its_disk_work_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    threads: dict[str, set[int]] = {}

    def spied(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads.setdefault(name, set()).add(threading.get_ident())
            return original(*args, **kwargs)

        return call

    # Creating the journal (file, fsync, directory fsync) and wrapping the data key (the
    # keyring is read from disk), then reading the journal anywhere while sealing.
    monkeypatch.setattr(Journal, "create", spied("create", Journal.create))
    monkeypatch.setattr(Journal, "read", spied("read", Journal.read))
    monkeypatch.setattr(LocalKeyring, "wrap", spied("wrap", LocalKeyring.wrap))
    context = _context(tmp_path, Spool(tmp_path / "spool"))
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    _record(recording, 2)
    record = await recording.stop()

    assert record.archive_id == recording.archive_id
    assert {"create", "wrap"} <= threads.keys()
    assert all(loop_thread not in used for used in threads.values()), threads
    report = _verified(context, await _archived(context, {}, tmp_path / "archive"))
    assert report.ok, report.render()


async def test_a_segment_is_journaled_before_it_is_spooled_and_recovery_drops_the_unstored(
    tmp_path: Path, quick_retries: None
) -> None:
    spool = _FullSpool(tmp_path / "spool", failures=0)
    context = _context(tmp_path, spool)
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
    _record(recording, 2)
    # The customer signs: the image is sealed into the archive beside the segments.
    image = b"\x89PNG a signature"
    await recording.bind_transaction("t-1", "0" * 64, sha256_hex(image), image)
    async with asyncio.timeout(10):
        while spool.pending_count < 3:  # noqa: ASYNC110 - the recorder fills it
            await asyncio.sleep(0.01)
    spool.failures = 10**9  # the spool disk fails for good, and the process dies
    _record(recording, 1, start_ms=1000)
    await _dies_once_journaled(recording, journal, segments=3, end_ms=2000)
    assert spool.pending_count == 3  # segment 2 journaled, never spooled

    # Restarted: the uploader had put segment 0 into the store; segment 1 waits in the spool.
    restarted = dataclasses.replace(context, spool=Spool(spool.directory), archive=_Store(None))
    store: dict[str, bytes] = {}
    spooled = [await restarted.spool.load(path) for path in await restarted.spool.paths()]
    entry, data = next(e for e in spooled if e[0].name.endswith("seg-000000.bin"))
    store[entry.name] = data
    await restarted.spool.remove(entry)
    assert entry.name == archive_prefix(recording.archive_id) + "seg-000000.bin"
    # A store that is down cannot say whether segment 2 is there: the journal waits.
    with pytest.raises(ArchiveUnavailableError):
        await recover(restarted, journal)
    assert not journal.read().sealed and len(await restarted.spool.paths()) == 2

    restarted = dataclasses.replace(restarted, archive=_Store(store))
    record = await recover(restarted, journal)

    assert record.status == "interrupted" and journal.read().sealed
    report = _verified(restarted, await _archived(restarted, store, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None
    assert [s.index for s in report.manifest.segments] == [0, 1]
    assert [a.object for a in report.manifest.attachments or []] == ["att-000000.bin"]
    assert "transaction t-1: signature image in att-000000.bin (image/png)" in report.notes
    cuts = journal.read().segment_cut_ms
    unstored, lost = report.manifest.gaps
    assert (unstored.start_ms, unstored.end_ms) == (cuts[1], cuts[2])
    assert "segments 2-2 were sealed but never stored" in unstored.reason
    assert lost.start_ms == cuts[2] and "recorder stopped" in lost.reason


async def test_a_full_spool_disk_holds_the_recording_back_and_loses_no_segment(
    tmp_path: Path, quick_retries: None
) -> None:
    spool = _FullSpool(tmp_path / "spool", failures=4)
    context = _context(tmp_path, spool)
    shown: list[str | None] = []
    recording = await RecordingSession.create(
        context, "s1", "wealth", lambda: shown.append(recording.last_store_error)
    )
    _record(recording, 3)
    await recording.stop()

    assert spool.failures == 0
    errors = [error for error in shown if error]
    assert errors and "No space left on device" in errors[0] and "free space" in errors[0]
    assert shown[-1] is None and recording.last_store_error is None
    # Everything spooled, as the uploader would put it in the store: a complete archive.
    report = _verified(context, await _archived(context, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "complete"
    assert len(report.manifest.segments) >= 3
    journal = Journal(tmp_path / "journal" / f"{recording.archive_id}.jsonl").read()
    assert journal.sealed
    assert [s["index"] for s in journal.segments] == [s.index for s in report.manifest.segments]


def test_track_records_of_older_journals_are_read(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "a1", {"archive_id": "a1"})
    track = {"id": "1", "kind": "video", "participant_id": "p1", "source": "camera"}
    with journal.path.open("ab") as fh:  # as written before 2026-11-28: the track's kind won
        fh.write(json.dumps({"kind": "track", **track}).encode() + b"\n")
    journal.append("track", {"track": track | {"id": "0", "kind": "audio"}})
    assert [t["id"] for t in Journal(journal.path).read().tracks] == ["1", "0"]
    with pytest.raises(ValueError, match="wrap it"):
        journal.append("track", track)


def test_a_torn_journal_line_hides_nothing_after_it(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "a1", {"archive_id": "a1"})
    first = {"name": "consent.start", "media_ms": 0, "wall_time": "2025-01-01T00:00:00Z"}
    journal.append("mark", first)
    with journal.path.open("ab") as fh:  # the disk filled up mid-line (and mid-character)
        fh.write('{"kind":"mark","name":"风'.encode()[:-1])
    later = {"name": "closing.start", "media_ms": 9, "wall_time": "2025-01-01T00:00:09Z"}
    reopened = Journal(journal.path)  # as the recording goes on, or a restarted worker
    reopened.append("mark", later)
    reopened.append("sealed", {"manifest_sha256": "0" * 64})
    state = Journal(journal.path).read()
    assert state.marks == [first, later]
    assert state.sealed


async def test_unusable_journals_are_set_aside_and_the_worker_starts(tmp_path: Path) -> None:
    settings = support.test_settings(tmp_path / "server")
    async with migrated_database(tmp_path / "db.sqlite") as db:
        manager = RecordingManager(settings, db)
        directory = manager.context.journal_dir
        directory.mkdir(parents=True)
        (directory / "empty.jsonl").write_bytes(b"")  # the disk was full at Journal.create
        (directory / "headless.jsonl").write_text('{"kind":"mark","name":"x"}\n')
        sealed = Journal.create(directory, "done", {"archive_id": "done"})
        sealed.append("sealed", {"manifest_sha256": "0" * 64})
        # A newer vteller's journal (rolled back to this one) waits for that version: sealed
        # here, it would leave out what the unknown record stands for.
        newer = Journal.create(directory, "newer", {"archive_id": "newer"})
        newer.append("hologram", {"index": 0})
        await manager.start()
        try:
            left = sorted(p.name for p in directory.iterdir())
        finally:
            await manager.stop()
    # The sealed one is gone: the manifest says all it did, and it would be read at every start.
    assert left == ["empty.jsonl.broken", "headless.jsonl.broken", "newer.jsonl"]
    with pytest.raises(UnknownRecord, match="'hologram' record"):
        newer.read()


class _Killed(BaseException):
    """The process dies here (not an Exception: nothing retries it)."""


class _DiesStoringTheManifest(Spool):
    async def add(self, name: str, data: bytes, retain_until: datetime) -> SpoolEntry:
        if name.endswith("/manifest.json"):
            raise _Killed
        return await super().add(name, data, retain_until)


async def test_a_seal_cut_short_after_the_chain_took_it_finishes_with_the_same_manifest(
    tmp_path: Path,
) -> None:
    async with migrated_database(tmp_path / "db.sqlite") as db:
        await add_session(db)
        chain = DatabaseChain(db)
        spool = _DiesStoringTheManifest(tmp_path / "spool")
        context = dataclasses.replace(_context(tmp_path, spool), chain=chain)
        recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
        await chain.started(recording.archive_id, "s1", "wealth")
        _record(recording, 2)
        with pytest.raises(_Killed):
            await recording.stop()  # chained, then died before the manifest was stored
        chained = await chain.head()
        journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
        assert not journal.read().sealed

        restarted = dataclasses.replace(context, spool=Spool(spool.directory))
        record = await recover(restarted, journal)
        # Another manifest for an archive already chained is refused, never given a second place.
        forged = dataclasses.replace(record, manifest_sha256="f" * 64, previous_sha256=chained)
        with pytest.raises(ChainConflict):
            await chain.append(forged)
        async with db() as session:
            rows = (await session.scalars(select(Archive))).all()

    # The manifest the chain took is the one stored: one place in the chain, its own status.
    assert record.manifest_sha256 == chained and record.status == "complete"
    assert [(a.chain_index, a.manifest_sha256) for a in rows] == [(0, chained)]
    report = _verified(restarted, await _archived(restarted, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "complete"


class _FullForTheSeal(Spool):
    """A spool whose disk is full once for the manifest and once for its signature."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.failing = {MANIFEST_OBJECT, SIGNATURE_OBJECT}

    async def add(self, name: str, data: bytes, retain_until: datetime) -> SpoolEntry:
        if (last := name.rsplit("/", 1)[1]) in self.failing:
            self.failing.discard(last)
            raise OSError(errno.ENOSPC, "No space left on device")
        return await super().add(name, data, retain_until)


class _Hiccups:
    """A chain whose database fails the first `failures` calls of head and of append."""

    def __init__(self, failures: int) -> None:
        self.failures = {"head": failures, "append": failures}
        self.chained: list[ArchiveRecord] = []

    def _call(self, what: str) -> None:
        if self.failures[what]:
            self.failures[what] -= 1
            raise ConnectionError("database unavailable")

    async def head(self) -> str | None:
        self._call("head")
        return None

    async def append(self, record: ArchiveRecord) -> bool:
        self._call("append")
        self.chained.append(record)
        return True


async def test_a_full_disk_or_a_database_hiccup_while_sealing_is_waited_out(
    tmp_path: Path, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _FullForTheSeal(tmp_path / "spool")
    chain = _Hiccups(failures=2)
    context = dataclasses.replace(_context(tmp_path, spool), chain=chain)
    failing_kinds = {"ended", "signed", "sealed"}
    append = Journal.append

    def journal_disk_full_once(journal: Journal, kind: str, record: dict[str, Any]) -> None:
        if kind in failing_kinds:
            failing_kinds.discard(kind)
            raise OSError(errno.ENOSPC, "No space left on device")
        append(journal, kind, record)

    monkeypatch.setattr(Journal, "append", journal_disk_full_once)
    shown: list[str | None] = []
    recording = await RecordingSession.create(
        context, "s1", "wealth", lambda: shown.append(recording.last_store_error)
    )
    _record(recording, 2)
    record = await recording.stop()

    assert recording.state == "sealed" and recording.stopped
    assert not failing_kinds and not spool.failing and not any(chain.failures.values())
    errors = [error for error in shown if error]
    for waited_for in ("reach the manifest chain in the database", "write to the spool"):
        assert any(error.startswith(f"cannot {waited_for}") for error in errors), errors
    assert any("write to the journal" in error for error in errors)
    assert shown[-1] is None
    # One manifest, chained once and stored: the chain names nothing the store lacks.
    assert [chained.manifest_sha256 for chained in chain.chained] == [record.manifest_sha256]
    assert Journal(context.journal_dir / f"{recording.archive_id}.jsonl").read().sealed
    report = _verified(context, await _archived(context, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "complete"


async def test_a_seal_the_database_keeps_refusing_is_left_to_the_manager_within_its_patience(
    tmp_path: Path, quick_retries: None
) -> None:
    """Sealing holds the room (its members wait): a database down for long must not hold it for
    as long. The stop gives up after its patience, and the journal is sealed later, complete."""
    down = _Hiccups(failures=10**6)
    context = dataclasses.replace(_context(tmp_path, Spool(tmp_path / "spool")), chain=down)
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    _record(recording, 2)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await recording.stop(patience=0.3)
    assert time.monotonic() - started < 5
    assert recording.stopped
    journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
    assert not journal.read().sealed

    back = dataclasses.replace(context, chain=_OnlyChain())
    record = await recover(back, journal)
    assert record.status == "complete"  # what the stop journaled, not "interrupted"
    report = _verified(back, await _archived(back, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.gaps == []


async def test_a_conflicting_chain_is_not_waited_for(tmp_path: Path, quick_retries: None) -> None:
    class _Conflict(_OnlyChain):
        async def head(self) -> str | None:
            raise RuntimeError("chain conflict: two heads")

    context = dataclasses.replace(_context(tmp_path, Spool(tmp_path / "spool")), chain=_Conflict())
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    _record(recording, 1)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="two heads"):
        await recording.stop(patience=30)
    assert time.monotonic() - started < 5


class _DiesAskingTheChain(_OnlyChain):
    async def head(self) -> str | None:
        raise _Killed  # the database is down, and the worker is restarted meanwhile


async def test_a_worker_restarted_before_signing_seals_what_the_recording_ended_with(
    tmp_path: Path,
) -> None:
    context = dataclasses.replace(
        _context(tmp_path, Spool(tmp_path / "spool")), chain=_DiesAskingTheChain()
    )
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    _record(recording, 2)
    with pytest.raises(_Killed):
        await recording.stop()
    journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
    assert journal.read().signed is None

    restarted = dataclasses.replace(
        context, spool=Spool(context.spool.directory), chain=_OnlyChain()
    )
    record = await recover(restarted, journal)

    assert record.status == "complete"
    report = _verified(restarted, await _archived(restarted, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "complete"
    assert report.manifest.gaps == [] and len(report.manifest.segments) == 3


async def test_a_binding_is_journaled_before_its_archive_id_is_given(
    tmp_path: Path, quick_retries: None
) -> None:
    spool = _FullSpool(tmp_path / "spool", failures=10**9)  # full from the first segment on
    context = _context(tmp_path, spool)
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
    _record(recording, 1)
    async with asyncio.timeout(10):
        while not (await asyncio.to_thread(journal.read)).segments:  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.01)
    # Segment 0's spool write is being retried, holding back every task queued behind it.
    image = b"\x89PNG a signature"
    async with asyncio.timeout(10):
        await recording.bind_transaction("t-1", "0" * 64, sha256_hex(image), image)
    assert list(journal.read().transactions) == ["t-1"]

    # The service records the archive id; the process dies before the spool disk has room.
    for task in (recording._worker, recording._cutter):
        task.cancel()
    await asyncio.gather(recording._worker, recording._cutter, return_exceptions=True)
    await recording._writer.close(1000)
    restarted = dataclasses.replace(context, spool=Spool(spool.directory))
    await recover(restarted, journal)
    report = _verified(restarted, await _archived(restarted, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None
    assert [binding.id for binding in report.manifest.transactions or []] == ["t-1"]


async def test_a_journal_line_written_again_after_a_failed_fsync_is_listed_once(
    tmp_path: Path, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = _context(tmp_path, Spool(tmp_path / "spool"))
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    fsyncs = 0

    def fsync_fails_once(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        if fsyncs == 1:  # segment 0's line is in the file; the write is retried
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    journal_os = SimpleNamespace(SEEK_END=os.SEEK_END, fsync=fsync_fails_once)
    monkeypatch.setattr(journal_module, "os", journal_os)
    _record(recording, 3)
    journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
    await _dies_once_journaled(recording, journal, segments=3, end_ms=1000)
    lines = journal.path.read_text().splitlines()
    assert sum('"index":0,' in line for line in lines) == 2
    assert [segment["index"] for segment in journal.read().segments] == [0, 1, 2]

    restarted = dataclasses.replace(context, spool=Spool(context.spool.directory))
    await recover(restarted, journal)
    report = _verified(restarted, await _archived(restarted, {}, tmp_path / "archive"))
    assert report.ok, report.render()

    # Two different lines for one segment cannot both be listed: the journal is refused.
    other = json.loads(lines[1]) | {"media_ms": 7}
    with journal.path.open("a") as fh:
        fh.write(json.dumps(other) + "\n")
    with pytest.raises(ValueError, match="two different segment records for index 0"):
        journal.read()


async def test_a_participant_away_when_the_recorder_stopped_has_a_gap(tmp_path: Path) -> None:
    context = _context(tmp_path, Spool(tmp_path / "spool"))
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    recording.presence("c1", "customer", "C", "joined")
    recording.presence("t1", "teller", "T", "joined")
    recording.presence("t1", "teller", "T", "disconnected")
    recording.presence("t1", "teller", "T", "rejoined")  # its gap is journaled at the rejoin
    await asyncio.sleep(0.2)
    recording.presence("c1", "customer", "C", "disconnected")
    _record(recording, 3, start_ms=700)  # the teller's media goes on
    journal = Journal(context.journal_dir / f"{recording.archive_id}.jsonl")
    async with asyncio.timeout(10):
        while len((await asyncio.to_thread(journal.read)).segments) < 3:  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.01)
    for task in (recording._worker, recording._cutter):  # killed while the customer is away
        task.cancel()
    await asyncio.gather(recording._worker, recording._cutter, return_exceptions=True)
    await recording._writer.close(2000)
    state = journal.read()
    [away_ms] = [p["media_ms"] for p in state.presence if p["participant_id"] == "c1"][1:]

    await recover(dataclasses.replace(context, spool=Spool(context.spool.directory)), journal)
    report = _verified(context, await _archived(context, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None
    gaps = [(gap.start_ms, gap.end_ms, gap.reason) for gap in report.manifest.gaps]
    assert [reason for *_, reason in gaps[:-1]] == ["teller disconnected", "customer disconnected"]
    assert gaps[1][:2] == (away_ms, state.segment_cut_ms[-1])
    assert gaps[-1][2].startswith("recorder stopped")


class _DatabaseDown(DatabaseChain):
    down = True

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("database unavailable")

    async def started(self, archive_id: str, session_id: str, business: str) -> None:
        self._check()
        await super().started(archive_id, session_id, business)

    async def head(self) -> str | None:
        self._check()
        return await super().head()

    async def append(self, record: ArchiveRecord) -> bool:
        self._check()
        return await super().append(record)


@contextlib.asynccontextmanager
async def _worker_recorder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RecordingManager, async_sessionmaker[DbSession]]]:
    """A worker's recorder manager, started, on a database holding session s1; it retries every
    50 ms, with no archive store: what is sealed stays in the spool, where the test reads it."""
    monkeypatch.setattr(manager_module, "FINISH_RETRY_SECONDS", 0.05)
    unconfigured = StoreSettings(access_key="", secret_key=SecretStr(""))
    settings = support.test_settings(tmp_path / "server", store=unconfigured)
    async with migrated_database(tmp_path / "db.sqlite") as db:
        await add_session(db)
        manager = RecordingManager(settings, db)
        await manager.start()
        try:
            yield manager, db
        finally:
            await manager.stop()


async def test_a_recording_the_database_cannot_register_is_stopped_and_sealed_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _worker_recorder(tmp_path, monkeypatch) as (manager, db):
        manager.chain = manager.context.chain = chain = _DatabaseDown(db)
        writers = {t for t in threading.enumerate() if t.name == "recorder"}
        for _ in range(2):  # the customer consents again
            with pytest.raises(ConnectionError):
                await manager.new_recording("s1", "wealth", lambda: None)
        # Stopped, not left recording unowned.
        assert {t for t in threading.enumerate() if t.name == "recorder"} <= writers
        journals = [Journal(p) for p in sorted(manager.context.journal_dir.glob("*.jsonl"))]
        assert len(journals) == 2
        await asyncio.sleep(0.2)  # tried again meanwhile, in vain
        assert not any(journal.read().sealed for journal in journals)
        chain.down = False
        # Sealed, then removed: the manifest holds what the journals said.
        async with asyncio.timeout(10):
            while any(journal.path.exists() for journal in journals):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        async with db() as session:
            statuses = (await session.scalars(select(Archive.status))).all()

    assert statuses == ["interrupted", "interrupted"]
    archive_id = journals[0].path.stem
    directory = tmp_path / "archive"
    directory.mkdir()
    for path in await manager.spool.paths():
        entry, data = await manager.spool.load(path)
        if entry.name.startswith(archive_prefix(archive_id)):
            (directory / entry.name.rsplit("/", 1)[1]).write_bytes(data)
    report = _verified(manager.context, directory)
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "interrupted"
    assert "could not be registered in the database" in report.manifest.gaps[0].reason


async def test_a_sealed_recordings_journal_is_deleted_by_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journals of sealed recordings would pile up and be read at every start, for ever."""
    async with _worker_recorder(tmp_path, monkeypatch) as (manager, _):
        recording = await manager.new_recording("s1", "wealth", lambda: None)
        _record(recording, 2)
        await recording.stop()
        assert recording.journal.read().sealed
        async with asyncio.timeout(10):
            while recording.journal.path.exists():  # noqa: ASYNC110 - the manager's pass
                await asyncio.sleep(0.05)
        assert list(manager.context.journal_dir.iterdir()) == []
        # What it said is in the spooled manifest.
        names = [(await manager.spool.load(p))[0].name for p in await manager.spool.paths()]
        assert any(name.endswith("/" + MANIFEST_OBJECT) for name in names), names


async def _metrics(server: support.RunningServer) -> dict[str, float]:
    token = (server.settings.data_dir / "metrics.token").read_text().strip()
    response = await server.client().http.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in (await response.text()).splitlines()
        if line and not line.startswith("#")
    }


async def test_a_recording_is_refused_before_the_customer_is_asked_when_its_disk_is_nearly_full(
    tmp_path: Path,
) -> None:
    from tests.integration.test_call import _teller_and_customer

    # More free space than any disk has: the disk counts as nearly full.
    store = StoreSettings(min_free_mb=10**9)
    async with support.running_server(support.test_settings(tmp_path, store=store)) as server:
        teller, customer, _ = await _teller_and_customer(server)
        try:
            await teller.join()
            await customer.join()
            await teller.send({"type": "recording_start"})
            refused = await teller.expect("error")
            assert (refused["code"], refused["ref"]) == ("storage_unavailable", "recording_start")
            spool = server.services.rooms._recorder.spool
            assert str(spool.directory) in refused["message"], refused
            assert "store.min_free_mb" in refused["message"], refused
            await customer.send({"type": "ping"})
            await customer.expect("pong")
            assert "consent_request" not in customer.history
            # The operator can alert on it.
            free = (await _metrics(server))["vteller_recording_disk_free_bytes"]
            assert 0 < free < 10**9 * 2**20
        finally:
            await customer.close()
            await teller.close()


async def test_a_journal_disk_that_fails_once_the_customer_was_asked_records_nothing_and_says_so(
    tmp_path: Path,
) -> None:
    from tests.integration.test_call import _teller_and_customer

    async with support.running_server(support.test_settings(tmp_path)) as server:
        teller, customer, _ = await _teller_and_customer(server)
        try:
            await teller.join()
            await customer.join()
            await teller.send({"type": "recording_start"})
            await customer.expect("consent_request")
            # A file where the journals' directory goes: unwritable, even for root.
            journal_dir = server.services.rooms._recorder.context.journal_dir
            journal_dir.parent.mkdir(parents=True, exist_ok=True)
            journal_dir.write_bytes(b"")
            await customer.send({"type": "consent", "granted": True})
            answered = await customer.expect("error")
            assert answered["code"] == "storage_unavailable", answered
            assert str(journal_dir) not in answered["message"]  # the server's, not the customer's
            told = await teller.expect("error")
            assert told["code"] == "storage_unavailable", told
            assert str(journal_dir) in told["message"] and "permissions" in told["message"]
            while (await teller.expect("recording"))["state"] != "idle":
                pass
            # Once the operator fixed it, the teller asks again and it records.
            journal_dir.unlink()
            await teller.send({"type": "recording_start"})
            await customer.expect("consent_request")
            await customer.send({"type": "consent", "granted": True})
            while (await teller.expect("recording"))["state"] != "recording":
                pass
        finally:
            await customer.close()
            await teller.close()


def _in_order(manifest: Manifest) -> None:
    """Every wall time of `manifest` between its creation and its finalization, stays in order."""
    times = [manifest.created_at]
    times += [m.wall_time for m in manifest.marks]
    for participant in manifest.participants:
        for span in participant.presence:
            times += [span.joined_at] + ([span.left_at] if span.left_at else [])
            assert span.joined_at <= (span.left_at or span.joined_at), span
    assert all(manifest.created_at <= t <= manifest.finalized_at for t in times), (
        manifest.created_at,
        times,
        manifest.finalized_at,
    )


async def test_an_ntp_step_backwards_during_a_call_leaves_the_manifests_times_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stepped(datetime):
        """The system's wall clock, which NTP may step back by `back`."""

        back = timedelta(0)

        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Stepped:
            return cls.fromtimestamp((datetime.now(tz) - cls.back).timestamp(), tz)

    monkeypatch.setattr(recording_session, "datetime", Stepped)
    context = _context(tmp_path, Spool(tmp_path / "spool"))

    # A recording sealed at its end.
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)
    recording.presence("p1", "customer", "李女士", "joined")
    _record(recording, 1)
    Stepped.back = timedelta(hours=1)
    recording.mark("risk", "start")
    recording.presence("p1", "customer", "李女士", "left")
    _record(recording, 1, start_ms=100)
    await recording.stop()
    signed = recording.journal.read().signed
    assert signed is not None
    _in_order(parse_manifest(signed[0]))
    report = _verified(context, await _archived(context, {}, tmp_path / "archive"))
    assert report.ok, report.render()

    # A recording whose worker died, recovered after the clock was stepped back again.
    Stepped.back = timedelta(0)
    recording = await RecordingSession.create(context, "s2", "wealth", lambda: None)
    recording.presence("p1", "customer", "李女士", "joined")
    _record(recording, 1)
    await _dies_once_journaled(recording, recording.journal, 1, 100)
    Stepped.back = timedelta(hours=1)
    await recover(context, recording.journal)
    signed = recording.journal.read().signed
    assert signed is not None
    _in_order(parse_manifest(signed[0]))


async def test_a_long_full_disk_pauses_the_recording_so_its_memory_stays_bounded(
    tmp_path: Path, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording_session, "MAX_BACKLOG_BYTES", 4000, raising=False)
    spool = _FullSpool(tmp_path / "spool", failures=10**9)  # full until an operator frees it
    context = _context(tmp_path, spool)
    recording = await RecordingSession.create(context, "s1", "wealth", lambda: None)

    async def speak(segments: int, start_ms: int) -> None:
        for index in range(segments):
            at = start_ms + index * 100
            recording._writer.packet(0, bytes(800), at, True)
            recording._writer.cut(at + 50)
            await asyncio.sleep(0.02)  # each segment is handed over before the next is spoken

    await speak(40, 0)
    # Held in memory: about the bound, not the 40 segments of the call so far.
    assert len(recording._sealer.segments) < 10
    assert recording._backlog_bytes < 4000 + 2000
    assert recording.last_store_error is not None and "paused" in recording.last_store_error

    spool.failures = 0  # space freed
    async with asyncio.timeout(10):
        while recording._paused_since_ms is not None:  # noqa: ASYNC110 - the retries drain it
            await asyncio.sleep(0.02)
    await speak(3, 10_000)
    record = await recording.stop()
    assert record.status == "complete"
    state = recording.journal.read()
    assert state.signed is not None
    gaps = parse_manifest(state.signed[0]).gaps
    assert [g.reason for g in gaps] == [recording_session._PAUSED_REASON], gaps
    report = _verified(context, await _archived(context, {}, tmp_path / "archive"))
    assert report.ok, report.render()


async def test_a_recording_stopped_while_its_disk_is_full_stops_at_once_and_is_sealed_later(
    tmp_path: Path, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[dict[str, Any]] = []
    sealed: list[str] = []

    async def broadcast(message: dict[str, Any], audience: str) -> None:
        shown.append(message)

    async def on_sealed(archive_id: str, session_id: str) -> None:
        sealed.append(archive_id)

    async with _worker_recorder(tmp_path, monkeypatch) as (manager, _):
        spool = _FullSpool(manager.spool.directory, failures=0)
        manager.spool = manager.context.spool = spool
        manager.on_sealed = on_sealed
        room = RoomRecording(manager, "s1", "wealth", broadcast)
        await room.request_consent(customer_connected=True)
        await room.consent(True)
        recording = room._recording
        assert recording is not None
        spool.failures = 10**9  # the disk fills during the call
        _record(recording, 3)
        async with asyncio.timeout(10):
            while recording.last_store_error is None:  # noqa: ASYNC110 - the retries set it
                await asyncio.sleep(0.01)

        # The teller stops (or the call ends): answered at once, not when the disk has room.
        async with asyncio.timeout(5):
            await room.stop()
        assert room.state == "sealing"
        told = shown[-1]["store"]["last_error"]
        assert told.startswith("cannot write to the spool") and "free space" in told, told
        assert "No space left on device" in told and "stopped and is kept on this server" in told
        assert manager.unsealed_count == 1
        metrics = {m.name: m.samples[0].value for m in RecordingCollector(manager).collect()}
        assert metrics["vteller_recordings_unsealed"] == 1
        assert not sealed

        spool.failures = 0  # an operator freed space: sealed as the teller ended it
        async with asyncio.timeout(10):
            while room.state == "sealing":  # noqa: ASYNC110 - the seal finishes by itself
                await asyncio.sleep(0.02)
        assert room.state == "sealed" and sealed == [recording.archive_id]
        assert shown[-1]["state"] == "sealed" and recording.last_store_error is None
        assert manager.unsealed_count == 0

    report = _verified(manager.context, await _archived(manager.context, {}, tmp_path / "archive"))
    assert report.ok, report.render()
    assert report.manifest is not None and report.manifest.status == "complete"
    assert len(report.manifest.segments) >= 3 and report.manifest.gaps == []
