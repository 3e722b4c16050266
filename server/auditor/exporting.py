"""The verifiable export package of an archive (recorder/export.py) as one ZIP download, and the
spool directory packages are written to on their way out."""

from __future__ import annotations

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

from recorder.export import export_archive
from recorder.seal.signing import load_public_keys
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, S3Archive

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
        directories of the layout before the spool's."""
        swept = 0
        with self._guarded():
            for entry in self.root.iterdir():
                if entry.name == GUARD:
                    continue
                if entry.is_symlink() or not entry.is_dir():
                    entry.unlink()
                    swept += 1
                    continue
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an export in progress
                else:
                    shutil.rmtree(entry)
                    swept += 1
                finally:
                    os.close(fd)
        return swept


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
