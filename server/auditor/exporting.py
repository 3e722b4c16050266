"""The verifiable export package of an archive (recorder/export.py) as one ZIP download."""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recorder.export import export_archive
from recorder.seal.signing import load_public_keys
from recorder.session import archive_prefix
from recorder.store.s3 import ArchiveBucket, S3Archive


@dataclass(frozen=True)
class PackageZip:
    path: Path
    size: int
    sha256: str


def write_package_zip(
    bucket: ArchiveBucket, archive_id: str, public_keys_dir: Path, out: Path
) -> PackageZip:
    """Write the package for `archive_id` as a ZIP at `out` (blocking).

    The package holds only what the store holds (encrypted segments and attachments, signed
    manifest and reports) plus the public keys and a README: nothing decrypted is written.
    """
    pems = list(load_public_keys(public_keys_dir).values())
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vteller-export-", dir=out.parent) as staging:
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
