"""A durable local spool in front of the archive store, and the task that empties it into S3.

A recording segment counts as stored once `Spool.add` returns: it is then on local disk, fsync'ed,
under its final name. The `Uploader` copies spooled objects to the archive bucket in the order
they were added and deletes each from the spool only after the store confirmed it. When the store
is unreachable it retries with capped exponential backoff, and its `status()` says what is
waiting and why, for the UI. A process killed at any point loses nothing: a half-written spool
file is a temporary file that never counted as stored (and is removed at the next start); an
object uploaded but not yet deleted from the spool is uploaded again, which the bucket treats as a
no-op (same SHA-256).

Layout of the spool directory (0700; files 0600):

    pending/<seq>-<random>.spool   one object each, oldest first by name
    tmp/                           files being written (removed at start: never acknowledged)
    rejected/                      objects the store refused for good (different bytes already
                                   archived under the name, or a corrupt spool file), with a
                                   .reason file each; kept for an operator, never deleted

A spool file is `VTSPOOL1\\n`, one line of JSON (name, retain_until, sha256, size), then the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import structlog

from recorder.seal.files import create_private_file, replace_private_file
from recorder.store.config import StoreSettings
from recorder.store.s3 import (
    ArchiveConflictError,
    ArchiveStoreError,
    RetentionNotVerifiedError,
    StoreConfigError,
    check_object_name,
    describe_error,
)

log = structlog.get_logger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_MAGIC = b"VTSPOOL1\n"
_SUFFIX = ".spool"
_MAX_HEADER = 8192  # name ≤ 1024 bytes UTF-8 (JSON-escaped at most 6x) plus a few fields


class SpoolError(Exception):
    """A spool operation failed."""


class SpoolCorruptError(SpoolError):
    """A spool file cannot be read back as it was written (disk fault or a hand edit)."""


@dataclass(frozen=True)
class SpoolEntry:
    """One object waiting in the spool."""

    path: Path
    name: str
    retain_until: datetime
    sha256: str
    size: int


def _fsync_dir(path: Path) -> None:
    # A rename or a new file is durable only once its directory is synced: without this, a power
    # loss after `add` returned could lose the new name even though the data blocks are on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory: the spool holds
    # (encrypted) recordings and their names, so make it owner-only either way.
    if path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        path.chmod(PRIVATE_DIR_MODE)


def _parse_header(path: Path, raw: bytes) -> tuple[SpoolEntry, int]:
    """The entry a spool file's header describes, and where its content starts in `raw`."""
    if not raw.startswith(_MAGIC):
        raise SpoolCorruptError(f"{path.name}: not a spool file (bad magic)")
    end = raw.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        raise SpoolCorruptError(f"{path.name}: header missing or too long")
    try:
        header = json.loads(raw[len(_MAGIC) : end])
        entry = SpoolEntry(
            path=path,
            name=str(header["name"]),
            retain_until=datetime.fromisoformat(header["retain_until"]),
            sha256=str(header["sha256"]),
            size=int(header["size"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolCorruptError(f"{path.name}: unreadable header ({exc})") from exc
    return entry, end + 1


def _parse(path: Path, raw: bytes) -> tuple[SpoolEntry, bytes]:
    entry, start = _parse_header(path, raw)
    data = raw[start:]
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise SpoolCorruptError(
            f"{path.name} ({entry.name}): content does not match its size and sha256"
        )
    return entry, data


class Spool:
    """Objects on local disk, waiting for the archive store. One directory per server process.

    All disk work runs in threads. The directory is created (or tightened to 0700) on first use.
    """

    def __init__(self, directory: Path | str) -> None:
        self._dir = Path(directory)
        self._pending = self._dir / "pending"
        self._tmp = self._dir / "tmp"
        self._rejected = self._dir / "rejected"
        self._open_lock = asyncio.Lock()
        # Serialises adds so that sequence order is also the order in which files appear: the
        # uploader never sees segment n+1 before segment n.
        self._add_lock = asyncio.Lock()
        self._opened = False
        self._next_seq = 0
        self._sizes: dict[str, int] = {}  # pending file name -> bytes on disk
        self._rejected_count = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def rejected_directory(self) -> Path:
        return self._rejected

    @property
    def pending_count(self) -> int:
        """Objects waiting (as known to this process; an up-to-date count needs `open()`)."""
        return len(self._sizes)

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk of the waiting objects (content plus a small header each)."""
        return sum(self._sizes.values())

    @property
    def rejected_count(self) -> int:
        return self._rejected_count

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (in the event loop) after each `add`."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    async def open(self) -> None:
        """Create the directories, drop unfinished temporary files, count what is pending.

        Idempotent; `add`, `paths` and `Uploader.start` call it.
        """
        async with self._open_lock:
            if self._opened:
                return
            next_seq, sizes, rejected = await asyncio.to_thread(self._open_sync)
            self._next_seq, self._sizes, self._rejected_count = next_seq, sizes, rejected
            self._opened = True
        if sizes:
            log.info(
                "archive spool has objects from an earlier run",
                directory=str(self._dir),
                pending=len(sizes),
                bytes=sum(sizes.values()),
            )

    def _open_sync(self) -> tuple[int, dict[str, int], int]:
        for directory in (self._dir, self._pending, self._tmp, self._rejected):
            _private_dir(directory)
        _fsync_dir(self._dir)
        for leftover in self._tmp.iterdir():
            # A temporary file is from an add() that did not return (crash mid-write): it was
            # never acknowledged as stored, and its writer is gone.
            log.warning("removing unfinished spool file", path=str(leftover))
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        sizes: dict[str, int] = {}
        next_seq = 0
        for path in self._pending_paths():
            with contextlib.suppress(FileNotFoundError):
                sizes[path.name] = path.stat().st_size
            with contextlib.suppress(ValueError):
                next_seq = max(next_seq, int(path.name.split("-", 1)[0]) + 1)
        rejected = sum(1 for path in self._rejected.glob(f"*{_SUFFIX}"))
        return next_seq, sizes, rejected

    async def add(self, name: str, data: bytes, retain_until: datetime) -> SpoolEntry:
        """Store `data` durably for upload as `name`; when this returns, it survives a crash."""
        check_object_name(name)
        if retain_until.tzinfo is None or retain_until.utcoffset() is None:
            raise ValueError("retain_until must be timezone-aware")
        if retain_until <= datetime.now(UTC):
            raise ValueError(f"retain_until {retain_until.isoformat()} is not in the future")
        await self.open()
        async with self._add_lock:
            seq = self._next_seq
            self._next_seq += 1
            entry, file_size = await asyncio.to_thread(
                self._add_sync, seq, name, data, retain_until.astimezone(UTC)
            )
            self._sizes[entry.path.name] = file_size
        for callback in list(self._listeners):
            callback()
        return entry

    def _add_sync(
        self, seq: int, name: str, data: bytes, retain_until: datetime
    ) -> tuple[SpoolEntry, int]:
        digest = hashlib.sha256(data).hexdigest()
        header = json.dumps(
            {
                "name": name,
                "retain_until": retain_until.isoformat(),
                "sha256": digest,
                "size": len(data),
            },
            ensure_ascii=True,
        ).encode()
        file_name = f"{seq:012d}-{secrets.token_hex(4)}{_SUFFIX}"
        temporary = self._tmp / f"{file_name}.part"
        final = self._pending / file_name
        # Write + fsync under a temporary name, then rename: the pending/ name exists only for a
        # complete, durable file, so the uploader (or a later process) never sees half of one.
        create_private_file(temporary, b"".join((_MAGIC, header, b"\n", data)))
        try:
            os.rename(temporary, final)
            _fsync_dir(self._pending)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        size = len(_MAGIC) + len(header) + 1 + len(data)
        return SpoolEntry(final, name, retain_until, digest, len(data)), size

    async def paths(self) -> list[Path]:
        """Pending spool files, oldest first (also those another process left behind)."""
        await self.open()
        return await asyncio.to_thread(self._pending_paths)

    async def names(self) -> set[str]:
        """The object names waiting (also another process's), read from the headers alone."""
        await self.open()
        return await asyncio.to_thread(self._names_sync)

    def _pending_paths(self) -> list[Path]:
        return sorted(self._pending.glob(f"*{_SUFFIX}"))

    def _names_sync(self) -> set[str]:
        names: set[str] = set()
        for path in self._pending_paths():
            try:
                with path.open("rb") as fh:
                    head = fh.read(len(_MAGIC) + _MAX_HEADER)
                names.add(_parse_header(path, head)[0].name)
            except FileNotFoundError:
                continue  # uploaded meanwhile, so in the store
            except SpoolCorruptError:
                continue  # the uploader sets it aside: it never reaches the store
        return names

    async def load(self, path: Path) -> tuple[SpoolEntry, bytes]:
        """Read one pending file back, checked against its SHA-256 (SpoolCorruptError if not)."""

        def read() -> tuple[SpoolEntry, bytes, int]:
            raw = path.read_bytes()
            return (*_parse(path, raw), len(raw))

        entry, data, file_size = await asyncio.to_thread(read)
        # A file this process did not count at open() (put there by another process sharing the
        # directory) is counted now, so that the counts stay right when it is removed.
        self._sizes.setdefault(path.name, file_size)
        return entry, data

    async def remove(self, entry: SpoolEntry) -> None:
        """Delete an object the store has confirmed.

        No directory fsync: if a crash forgets this deletion, the object is uploaded again and
        the bucket recognises its own bytes.
        """
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(entry.path.unlink)
        self._sizes.pop(entry.path.name, None)

    async def reject(self, path: Path, reason: str) -> Path:
        """Move a file the store will never accept to rejected/, with the reason beside it."""

        def move() -> Path:
            target = self._rejected / path.name
            # The reason first, so that no rejected file is ever without one; replaced, not
            # created anew, since a move that failed after it (a full disk) is tried again.
            replace_private_file(
                self._rejected / f"{path.name}.reason",
                f"{datetime.now(UTC).isoformat()} {reason}\n".encode(),
            )
            os.rename(path, target)
            _fsync_dir(self._rejected)
            _fsync_dir(self._pending)
            return target

        target = await asyncio.to_thread(move)
        self._sizes.pop(path.name, None)
        self._rejected_count += 1
        return target


class UploadObserver(Protocol):
    """Who is told of uploads that matter for evidence (the server's audit log). Its failures
    are logged and ignored: they must never stop the uploader."""

    async def retention_unverified(self, name: str, error: str) -> None:
        """`name` was stored, but its retention read back is not what was asked for (kept in
        the spool and tried again)."""

    async def stored(self, name: str) -> None:
        """`name` is in the store under the retention asked for (read back)."""

    async def set_aside(self, name: str | None, reason: str, error: str, spool_file: str) -> None:
        """An object (`name`, None when its spool file cannot say) will never be uploaded: moved
        to rejected/; `reason`: conflict or corrupt."""


class UploadTarget(Protocol):
    """What the uploader needs from the store (ArchiveBucket)."""

    async def ensure_bucket(self) -> None: ...

    async def put(self, name: str, data: bytes, retain_until: datetime) -> object: ...


@dataclass(frozen=True)
class UploaderStatus:
    """A snapshot of the uploader, for the UI and health checks."""

    running: bool
    pending_count: int
    pending_bytes: int
    rejected_count: int
    uploaded_count: int
    """Objects uploaded by this uploader since it started."""
    uploading: str | None
    consecutive_failures: int
    last_error: str | None
    last_error_at: datetime | None
    last_success_at: datetime | None
    retry_at: datetime | None
    """When the next attempt is due, while waiting after a failure."""
    retention_mismatches: int = 0
    """Uploads whose retention read back was not the COMPLIANCE retention asked for, since the
    uploader started (each kept in the spool)."""

    @property
    def retry_in_seconds(self) -> float | None:
        if self.retry_at is None:
            return None
        return max(0.0, (self.retry_at - datetime.now(UTC)).total_seconds())

    @property
    def healthy(self) -> bool:
        return self.running and self.consecutive_failures == 0 and self.rejected_count == 0

    def describe(self) -> str:
        """One English sentence, e.g. '3 objects waiting for the archive store: connection
        refused; retrying in 8 s'. Objects, not segments: a signature attachment waits too."""
        count = self.pending_count
        noun = "object" if count == 1 else "objects"
        if count == 0:
            text = "all objects are in the archive store"
        elif self.consecutive_failures:
            text = f"{count} {noun} waiting for the archive store"
        else:
            text = f"{count} {noun} being uploaded to the archive store"
        if self.consecutive_failures and self.last_error:
            text += f": {self.last_error}"
            retry_in = self.retry_in_seconds
            if retry_in is not None and self.running:
                text += f"; retrying in {max(1, round(retry_in))} s"
        if not self.running and count:
            text += " (uploader stopped)"
        if self.rejected_count:
            text += (
                f"; {self.rejected_count} refused by the archive store and kept in the spool's "
                "rejected/ directory"
            )
        return text


class Uploader:
    """Uploads what is in a `Spool` to the archive bucket, in order, until stopped.

    `start()` resumes whatever an earlier process left in the spool. The bucket is created (or
    checked for Object Lock) before the first upload, retried like uploads, so a server can start
    while the store is down.
    """

    def __init__(
        self,
        spool: Spool,
        bucket: UploadTarget,
        *,
        backoff_min_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        observer: UploadObserver | None = None,
    ) -> None:
        if not 0 < backoff_min_seconds <= backoff_max_seconds:
            raise ValueError("need 0 < backoff_min_seconds <= backoff_max_seconds")
        self._spool = spool
        self._bucket = bucket
        self._backoff_min = backoff_min_seconds
        self._backoff_max = backoff_max_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()  # something was spooled, or stop/retry_now
        self._kick = asyncio.Event()  # cut a backoff short: stop, retry_now, flush
        self._progress = asyncio.Event()  # an upload finished or failed: flush() re-checks
        self._uploading: str | None = None
        self._uploaded_count = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._last_success_at: datetime | None = None
        self._retry_at: datetime | None = None
        self._retention_mismatches = 0
        # Settable after construction: the server's audit log is made after its recorder.
        self.observer = observer

    @classmethod
    def from_settings(cls, spool: Spool, bucket: UploadTarget, settings: StoreSettings) -> Uploader:
        return cls(
            spool,
            bucket,
            backoff_min_seconds=settings.retry_backoff_min_seconds,
            backoff_max_seconds=settings.retry_backoff_max_seconds,
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        await self._spool.open()
        self._stopping = False
        self._spool.add_listener(self._wake.set)
        self._task = asyncio.create_task(self._run(), name="archive-uploader")

    # A plain `timeout` argument (ASYNC109) because callers shut down with a bound, not a scope.
    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop after the upload in progress (or cancel it after `timeout` seconds).

        Whatever is not uploaded stays in the spool for the next start.
        """
        task = self._task
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        self._kick.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            # The SDK call in its thread cannot be interrupted; cancelling abandons it. Its object
            # is still in the spool and is uploaded again (idempotently) next time.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._spool.remove_listener(self._wake.set)
            self._task = None
            self._retry_at = None
            self._progress.set()

    def retry_now(self) -> None:
        """End a backoff wait early (e.g. an operator clicked "retry")."""
        self._wake.set()
        self._kick.set()

    async def flush(self, timeout: float) -> UploaderStatus:  # noqa: ASYNC109
        """Wait until the spool is empty; TimeoutError (saying what is waiting) after `timeout` s.

        Retries immediately if the uploader was waiting after a failure.
        """
        if not self.running:
            raise RuntimeError("the uploader is not running: start() it before flush()")
        self.retry_now()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._progress.clear()
                    if self._spool.pending_count == 0 and self._uploading is None:
                        return self.status()
                    if not self.running:
                        raise RuntimeError(f"the uploader stopped: {self.status().describe()}")
                    await self._progress.wait()
        except TimeoutError:
            raise TimeoutError(
                f"archive uploads not finished after {timeout} s: {self.status().describe()}"
            ) from None

    def status(self) -> UploaderStatus:
        return UploaderStatus(
            running=self.running,
            pending_count=self._spool.pending_count,
            pending_bytes=self._spool.pending_bytes,
            rejected_count=self._spool.rejected_count,
            uploaded_count=self._uploaded_count,
            uploading=self._uploading,
            consecutive_failures=self._failures,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            last_success_at=self._last_success_at,
            retry_at=self._retry_at,
            retention_mismatches=self._retention_mismatches,
        )

    # --- the task ------------------------------------------------------------------------------

    async def _run(self) -> None:
        bucket_ready = False
        while not self._stopping:
            self._wake.clear()
            try:
                if not bucket_ready:
                    await self._bucket.ensure_bucket()
                    bucket_ready = True
                paths = await self._spool.paths()
                for path in paths:
                    if self._stopping:
                        break
                    await self._upload(path)
            except Exception as exc:
                # Anything but a refusal of one object (handled in _upload) is retried: the store
                # down or misconfigured, a full disk. Recordings stay safe in the spool meanwhile.
                if isinstance(exc, RetentionNotVerifiedError):
                    self._retention_mismatches += 1
                if isinstance(exc, StoreConfigError):
                    # The bucket is gone or changed since it was checked (a store restored empty,
                    # a bucket made again by hand): checked again before the next upload, so it
                    # is made again with Object Lock, or refused by name if it has none.
                    bucket_ready = False
                await self._back_off(exc)
                continue
            if self._failures:
                self._failures = 0
            self._progress.set()
            if not paths:
                await self._wake.wait()

    async def _upload(self, path: Path) -> None:
        try:
            entry, data = await self._spool.load(path)
        except FileNotFoundError:
            return  # removed meanwhile (another uploader on the same directory)
        except SpoolCorruptError as exc:
            await self._reject(path, str(exc), None, "corrupt")
            return
        self._uploading = entry.name
        try:
            await self._bucket.put(entry.name, data, entry.retain_until)
        except ArchiveConflictError as exc:
            # Retrying cannot help and overwriting is impossible by design: keep the bytes aside
            # for an operator and let the segments behind this one through.
            await self._reject(path, str(exc), entry.name, "conflict")
            return
        except RetentionNotVerifiedError as exc:
            if self.observer is not None:
                await self._tell(self.observer.retention_unverified(entry.name, str(exc)))
            raise  # retried with the rest, by _run
        finally:
            self._uploading = None
        if self.observer is not None:
            await self._tell(self.observer.stored(entry.name))
        await self._spool.remove(entry)
        self._uploaded_count += 1
        self._failures = 0
        self._last_success_at = datetime.now(UTC)
        self._progress.set()
        log.debug("archived", name=entry.name, bytes=entry.size)

    async def _reject(self, path: Path, reason: str, name: str | None, kind: str) -> None:
        target = await self._spool.reject(path, reason)
        self._last_error, self._last_error_at = reason, datetime.now(UTC)
        self._progress.set()
        log.error("archive store refused an object; kept aside", path=str(target), reason=reason)
        if self.observer is not None:
            await self._tell(self.observer.set_aside(name, kind, reason, path.name))

    @staticmethod
    async def _tell(report: Awaitable[None]) -> None:
        try:
            await report
        except Exception:
            # The observer (an audit log whose database is away) must not turn an upload that
            # worked into a retry, nor stop the retries of one that did not.
            log.exception("archive upload observer failed")

    async def _back_off(self, exc: Exception) -> None:
        self._failures += 1
        delay = min(self._backoff_max, self._backoff_min * 2 ** min(self._failures - 1, 30))
        now = datetime.now(UTC)
        self._last_error, self._last_error_at = describe_error(exc), now
        self._retry_at = now + timedelta(seconds=delay)
        self._progress.set()
        # A bucket without Object Lock (or none) waits for an operator, not for the network.
        report = log.error if isinstance(exc, StoreConfigError) else log.warning
        report(
            "archive upload failed; will retry",
            error=self._last_error,
            pending=self._spool.pending_count,
            attempt=self._failures,
            retry_in_seconds=round(delay, 2),
            exc_info=not isinstance(exc, OSError | ArchiveStoreError),
        )
        self._kick.clear()
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)
        self._retry_at = None
