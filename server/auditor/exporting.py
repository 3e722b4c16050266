"""The verifiable export package of an archive (recorder/export.py) as one ZIP download, the
spool directory packages are written to on their way out, and the single-use links they are
downloaded through."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from recorder.export import export_archive
from recorder.seal.signing import load_public_keys
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, S3Archive
from server.auth.tokens import new_token, same

log = structlog.get_logger(__name__)

# How long a written package waits for its download to begin: the page that asked for it starts
# the download as soon as it has the link.
DOWNLOAD_SECONDS = 60

# Taken by a claim while it creates and locks its directory, and by the sweep: a directory
# created but not yet locked must not look abandoned.
GUARD = ".guard"


@dataclass(frozen=True)
class PackageZip:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class SpoolClaim:
    """One export's directory, locked by this process until `release`."""

    path: Path
    _fd: int

    def release(self) -> None:
        """Delete the directory, then drop the lock (blocking)."""
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


class ExportSpool:
    """`{data_dir}/exports/`: a directory per export, holding its staging copy and its ZIP while
    the package is written and sent.

    Every worker sharing the data directory writes here. An export's process holds an exclusive
    flock on its directory for as long as the export runs, and the kernel drops the lock when the
    process dies: a directory nobody holds was left by a crash, and `sweep` may delete it without
    ever touching an export still running in this or another worker.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        guard = os.open(self.root / GUARD, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield
        finally:
            os.close(guard)

    def claim(self) -> SpoolClaim:
        """A new, empty directory for one export (blocking)."""
        with self._guarded():
            path = Path(tempfile.mkdtemp(dir=self.root))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        return SpoolClaim(path, fd)

    def sweep(self) -> int:
        """Delete what crashed exports left behind; returns how many entries went (blocking).

        Anything but a locked directory is left over, including the loose ZIPs and staging
        directories of the layout before the spool's. An entry that cannot be deleted is
        logged and left for the next start: the others go all the same."""
        swept = 0
        with self._guarded():
            for entry in self.root.iterdir():
                if entry.name == GUARD:
                    continue
                try:
                    swept += _sweep_entry(entry)
                except FileNotFoundError:
                    pass  # gone meanwhile: an export that ended, released outside the guard
                except OSError as exc:
                    log.warning("auditor_exports_entry_not_swept", entry=str(entry), error=str(exc))
        return swept


def _sweep_entry(entry: Path) -> int:
    """Delete `entry` unless an export holds it; 1 if it went."""
    if entry.is_symlink() or not entry.is_dir():
        entry.unlink()
        return 1
    fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # an export in progress
    else:
        shutil.rmtree(entry)
        return 1
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PackageDownload:
    """A written package waiting for its one download by the login that asked for it."""

    archive_id: str
    user_id: str
    # The CSRF token is one login's own: the link works in that login only, not in another
    # browser of the same user, nor after a logout.
    login_csrf: str
    claim: SpoolClaim
    package: PackageZip


class DownloadNotYours(Exception):
    """A download link that exists, but was given to another login (the message says whose,
    for the audit log: the one following it is told it does not exist)."""


class PackageDownloads:
    """Single-use download links of written packages (in this worker's memory, as playbacks are:
    a browser's requests go to one worker). A link is taken by its first download, and one not
    taken within `ttl_seconds` goes, with its package."""

    def __init__(self, ttl_seconds: float = DOWNLOAD_SECONDS) -> None:
        self._ttl = ttl_seconds
        self._waiting: dict[str, tuple[PackageDownload, asyncio.TimerHandle]] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    def offer(self, download: PackageDownload) -> str:
        """The token of a new link to `download`."""
        token = new_token()
        timer = asyncio.get_running_loop().call_later(self._ttl, self._expire, token)
        self._waiting[token] = (download, timer)
        return token

    def take(self, token: str, user_id: str, login_csrf: str) -> PackageDownload | None:
        """The download behind `token`, for its own login only, once (None: no such link, or
        used, or expired; DownloadNotYours: another login's); the caller releases its claim
        when sent."""
        waiting = self._waiting.get(token)
        if waiting is None:
            return None
        download, timer = waiting
        # Left in place either way: someone else's request does not spend the link.
        if download.user_id != user_id:
            raise DownloadNotYours(
                f"the download link of archive {download.archive_id} that another auditor "
                f"({download.user_id}) exported"
            )
        if not same(download.login_csrf, login_csrf):
            raise DownloadNotYours(
                f"the download link of archive {download.archive_id} that another login of "
                "the same auditor exported"
            )
        del self._waiting[token]
        timer.cancel()
        return download

    def _expire(self, token: str) -> None:
        download, _ = self._waiting.pop(token)
        task = asyncio.create_task(asyncio.to_thread(download.claim.release))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def close(self) -> None:
        """Delete every package still waiting (the worker stops)."""
        waiting, self._waiting = list(self._waiting.values()), {}
        for download, timer in waiting:
            timer.cancel()
            await asyncio.to_thread(download.claim.release)
        await asyncio.gather(*self._releasing)


def write_package_zip(
    bucket: ArchiveBucket, archive_id: str, public_keys_dir: Path, out: Path
) -> PackageZip:
    """Write the package for `archive_id` as a ZIP at `out`, in a claimed spool directory
    (blocking).

    The package holds only what the store holds (encrypted segments and attachments, signed
    manifest and reports) plus the public keys and a README: nothing decrypted is written.
    """
    pems = list(load_public_keys(public_keys_dir).values())
    # The staging copy goes as soon as it is zipped, not after the (maybe slow) download.
    with tempfile.TemporaryDirectory(prefix="staging-", dir=out.parent) as staging:
        package = export_archive(
            S3Archive(bucket, archive_prefix(archive_id)), Path(staging) / archive_id, pems
        )
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(package.rglob("*")):
                if file.is_file():
                    archive.write(file, f"{archive_id}/{file.relative_to(package).as_posix()}")
    digest = hashlib.sha256()
    with out.open("rb") as written:
        while chunk := written.read(1024 * 1024):
            digest.update(chunk)
    return PackageZip(out, out.stat().st_size, digest.hexdigest())
