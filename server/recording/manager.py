"""The recorder of one worker: keys, spool, uploader, and finishing what a crash left behind."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.journal import Journal
from recorder.seal.keyring import LocalKeyring
from recorder.seal.signing import Signer
from recorder.session import RecorderContext, RecordingSession, recover
from recorder.store.s3 import ArchiveBucket, ArchiveUnavailableError, StoreConfigError
from recorder.store.spool import Spool, Uploader, UploaderStatus
from server.audit.incidents import SEAL_FAILED, StorageIncidents
from server.background import cancel_and_wait
from server.db.engine import DbSession
from server.recording.chain import DatabaseChain
from server.settings import Settings

log = structlog.get_logger(__name__)

# How often journals left unsealed (a recovery that failed, a recording whose seal failed or
# that was abandoned) are tried again: the database or a disk may be back by then.
FINISH_RETRY_SECONDS = 60.0
_MB = 1024 * 1024


def _describe(error: BaseException) -> str:
    """An error as an audit entry may hold it: its kind and a bounded message."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


class StorageUnavailable(Exception):
    """A recording cannot start: the spool's or the journals' disk is full or not writable.
    The message names the directory and the fix."""


def _free_bytes(directory: Path) -> int:
    # The directory may not exist before the first recording: its nearest existing parent is
    # on the disk it will be made on.
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return shutil.disk_usage(directory).free


class _Unconfigured:
    """The archive store when none is configured: every attempt says so."""

    def __init__(self, reason: str) -> None:
        self._reason = f"archive store not configured: {reason}"

    async def ensure_bucket(self) -> None:
        raise ArchiveUnavailableError(self._reason)

    async def put(self, name: str, data: bytes, retain_until: datetime) -> object:
        raise ArchiveUnavailableError(self._reason)

    async def list(self, prefix: str = "") -> list[str]:
        raise ArchiveUnavailableError(self._reason)


class RecordingManager:
    def __init__(self, settings: Settings, db: async_sessionmaker[DbSession]) -> None:
        keys = settings.data_dir / "keys"
        # Keys are created at first run (0600) and never overwritten; see docs/archive-format.md.
        self.signer = Signer.open(keys / "signing-key.pem", create=True)
        self.signer.publish(keys / "public")
        self.keyring = LocalKeyring.open(keys / "keyring.json", create=True)
        # Each worker (by port) has its own spool and journals: a worker that restarts finishes
        # its own recordings, never a live one of a neighbour.
        worker = f"worker-{settings.port}"
        self.spool = Spool(settings.store.spool_path(settings.data_dir) / worker)
        try:
            self.bucket: ArchiveBucket | _Unconfigured = ArchiveBucket.from_settings(settings.store)
        except StoreConfigError as exc:
            # Calls and recordings go on: segments wait in the spool, and the teller's page
            # shows why, until the store is configured and the worker restarted.
            log.error("archive_store_not_configured", error=str(exc))
            self.bucket = _Unconfigured(str(exc))
        self.uploader = Uploader.from_settings(self.spool, self.bucket, settings.store)
        self.chain = DatabaseChain(db)
        # Who wants to know when an archive is sealed (the compliance analysis).
        self.on_sealed: Callable[[str, str], Awaitable[None]] | None = None
        # Where failures that matter for evidence are audited (set with `audit_incidents`: the
        # audit log is made after the recorder, whose signing key it uses).
        self._incidents: StorageIncidents | None = None
        # The recordings this process runs, until they stop; then their journal is checked.
        self._recordings: set[RecordingSession] = set()
        self._unfinished: dict[Path, Journal] = {}
        self._retrying: asyncio.Task[None] | None = None
        self._min_free_bytes = settings.store.min_free_mb * _MB
        # The least free space of the spool's and the journals' disks when last measured (at
        # each recording start and every minute), for the metrics.
        self.free_bytes: int | None = None
        self.context = RecorderContext(
            keyring=self.keyring,
            signer=self.signer,
            spool=self.spool,
            archive=self.bucket,
            chain=self.chain,
            journal_dir=settings.data_dir / "journal" / worker,
            retention=settings.store.retention,
            segment_seconds=settings.recording_segment_seconds,
            keyframe_seconds=settings.recording_keyframe_seconds,
        )

    def audit_incidents(self, incidents: StorageIncidents) -> None:
        """Audit the uploader's and the seals' failures that matter for evidence."""
        self._incidents = incidents
        self.uploader.observer = incidents

    async def seal_failed(
        self, archive_id: str, session_id: str | None, error: BaseException, stage: str
    ) -> None:
        """A recording could not be sealed (`stage`: stop, retry or unusable_journal); never
        raises."""
        if self._incidents is not None:
            detail = {"session_id": session_id, "error": _describe(error), "stage": stage}
            await self._incidents.failed(SEAL_FAILED, archive_id, detail)

    async def sealed(self, archive_id: str, session_id: str) -> None:
        """A recording was sealed (by its room, or recovered after a crash)."""
        if self.on_sealed is not None:
            await self.on_sealed(archive_id, session_id)

    async def start(self) -> None:
        await self.uploader.start()
        for journal in await asyncio.to_thread(Journal.found, self.context.journal_dir):
            self._unfinished[journal.path] = journal
        await self._finish_unfinished()
        self._retrying = asyncio.create_task(self._finish_regularly())

    async def _finish_regularly(self) -> None:
        while True:
            await asyncio.sleep(FINISH_RETRY_SECONDS)
            try:
                await self.storage_problem()  # keeps the free-space metric current
                await self._finish_unfinished()
            except Exception:
                # One bad pass must not end the retries for the life of the process.
                log.exception("recording_retry_pass_failed")

    async def _finish_unfinished(self) -> None:
        for recording in [r for r in self._recordings if r.stopped]:
            self._recordings.discard(recording)
            self._unfinished[recording.journal.path] = recording.journal
        for path, journal in list(self._unfinished.items()):
            if await self._finish(journal):
                del self._unfinished[path]

    async def _finish(self, journal: Journal) -> bool:
        """Seal the recording a crashed process (or a failed seal) left: as interrupted, or with
        the manifest it had signed or ended with. One bad journal never keeps the worker (and
        every other recovery) from starting. False when it is to be tried again."""
        try:
            state = await asyncio.to_thread(journal.read)
            if state.sealed:
                await self._forget(journal)
                return True
            record = await recover(self.context, journal)
        except (KeyError, TypeError, ValueError) as exc:
            # What the journal holds cannot make a manifest (no header, a record that is not
            # the journal's): retrying at every start would fail the same way.
            await self.seal_failed(journal.path.stem, None, exc, "unusable_journal")
            broken = await asyncio.to_thread(journal.set_aside)
            log.error(
                "recording_journal_unusable",
                path=str(journal.path),
                moved_to=str(broken),
                error=str(exc),
                fix="the recording's segments stay in the spool and the archive store, but no "
                "manifest can be made from this journal; repair it and rename it back to .jsonl "
                "to have it finished at the next start",
            )
            return True
        except Exception as exc:
            # The database, the spool disk, the journal's permissions, an archive store that
            # cannot say which segments it holds: all can be fixed, and the journal is left in
            # place to be tried again.
            await self.seal_failed(journal.path.stem, None, exc, "retry")
            log.exception(
                "recording_recovery_failed",
                path=str(journal.path),
                fix=f"fix the cause named here; it is tried again every "
                f"{FINISH_RETRY_SECONDS:.0f} s",
            )
            return False
        try:
            await self.sealed(record.archive_id, record.session_id)
        except Exception:
            # Sealed and chained all the same: only its analysis was not queued (the database
            # away just then); the auditor and `vteller compliance analyze` still reach it.
            log.exception("recording_sealed_hook_failed", archive_id=record.archive_id)
        if self._incidents is not None:
            await self._incidents.recovered(
                SEAL_FAILED,
                record.archive_id,
                {"status": record.status, "manifest_sha256": record.manifest_sha256},
            )
        log.warning(
            # "complete" when the process died while sealing a recording that had ended.
            "recording_recovered",
            archive_id=record.archive_id,
            session_id=record.session_id,
            status=record.status,
        )
        await self._forget(journal)
        return True

    @staticmethod
    async def _forget(journal: Journal) -> None:
        try:
            await asyncio.to_thread(journal.remove)
        except OSError as exc:
            # Harmless: a sealed journal is only read again at the next start, and skipped.
            log.warning("sealed_journal_not_removed", path=str(journal.path), error=str(exc))

    async def stop(self) -> None:
        await cancel_and_wait(self._retrying)
        await self.uploader.stop()

    async def storage_problem(self) -> str | None:
        """Why no recording may start now (too little free space where it would be spooled or
        journaled; logged as an error for the operator), or None."""
        directories = (self.spool.directory, self.context.journal_dir)
        free = await asyncio.to_thread(lambda: [_free_bytes(d) for d in directories])
        self.free_bytes = min(free)
        short = [(d, f) for d, f in zip(directories, free, strict=True) if f < self._min_free_bytes]
        if not short:
            return None
        where = ", ".join(f"{f // _MB} MB on {d}" for d, f in short)
        problem = (
            f"a recording cannot start: only {where} free, and at least "
            f"{self._min_free_bytes // _MB} MB are needed (store.min_free_mb); free space there"
        )
        log.error("recording_refused_disk_full", error=problem)
        return problem

    @property
    def unsealed_count(self) -> int:
        """Recordings stopped or recovered but not sealed yet: those the manager retries, and
        those whose stop still waits for their disk (or is sealing just now)."""
        return len(self._unfinished) + sum(1 for r in self._recordings if r.state == "sealing")

    @property
    def retrying_count(self) -> int:
        """Live recordings whose spool, journal or chain write is being retried (a full disk,
        the database away): they hold back their media until it succeeds."""
        return sum(1 for r in self._recordings if r.last_store_error is not None)

    async def new_recording(
        self, session_id: str, business: str, on_change: Callable[[], None]
    ) -> RecordingSession:
        """StorageUnavailable when the disk it would be written to is too full or not
        writable: nothing has been recorded then."""
        problem = await self.storage_problem()
        if problem is not None:
            raise StorageUnavailable(problem)
        try:
            recording = await RecordingSession.create(self.context, session_id, business, on_change)
        except OSError as exc:
            # Most likely its journal (exc.filename says which file, a key's too).
            problem = (
                f"a recording cannot start: {exc.filename or self.context.journal_dir}: "
                f"{exc.strerror or exc}; free space there or fix its permissions"
            )
            log.error("recording_refused_journal_unwritable", error=problem)
            raise StorageUnavailable(problem) from exc
        self._recordings.add(recording)
        try:
            await self.chain.started(recording.archive_id, session_id, business)
        except Exception:
            # The customer consented and the recording has begun: its journal (and perhaps a
            # segment, soon under retention) exist. Stopped here rather than left running
            # unowned; sealed as interrupted, saying why, once the database is back.
            await recording.abandon(
                "the recording could not be registered in the database, so it stopped at once; "
                "nothing of the call was recorded"
            )
            raise
        return recording

    def store_status(self) -> UploaderStatus:
        return self.uploader.status()
