"""The export spool's sweep, one entry at a time, and the single-use download links of written
packages."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.auditor.exporting import (
    GUARD,
    DownloadNotYours,
    ExportSpool,
    PackageDownload,
    PackageDownloads,
    PackageZip,
)


def test_the_sweep_goes_on_past_an_entry_that_vanished_or_cannot_be_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = ExportSpool(tmp_path / "exports")
    spool.root.mkdir()
    for name in ("gone", "stuck", "left-1", "left-2"):
        (spool.root / name).mkdir()
        (spool.root / name / "package.zip").write_bytes(b"PK")
    rmtree: Callable[..., Any] = shutil.rmtree

    def flaky(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.name == "gone":  # another worker's export ended and deleted it just now
            rmtree(path)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if path.name == "stuck":
            raise PermissionError(13, "Permission denied", str(path))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", flaky)
    assert spool.sweep() == 2
    assert sorted(p.name for p in spool.root.iterdir()) == sorted([GUARD, "stuck"])


def _written(spool: ExportSpool, user_id: str = "u_1", login: str = "csrf-1") -> PackageDownload:
    claim = spool.claim()
    (claim.path / "package.zip").write_bytes(b"PK")
    package = PackageZip(claim.path / "package.zip", 2, "00" * 32)
    return PackageDownload("archive-1", user_id, login, claim, package)


async def test_a_link_is_taken_once_and_only_by_the_login_that_exported(tmp_path: Path) -> None:
    spool = ExportSpool(tmp_path / "exports")
    downloads = PackageDownloads()
    written = _written(spool)
    token = downloads.offer(written)
    # Another user, and the same user in another login: refused (answered as a link that does
    # not exist, audited as what it is), and the link stays for its own login.
    with pytest.raises(DownloadNotYours, match="another auditor"):
        downloads.take(token, "u_2", "csrf-1")
    with pytest.raises(DownloadNotYours, match="another login of the same auditor"):
        downloads.take(token, "u_1", "csrf-other-login")
    assert downloads.take("not-a-token", "u_1", "csrf-1") is None
    assert downloads.take(token, "u_1", "csrf-1") is written
    assert downloads.take(token, "u_1", "csrf-1") is None  # spent
    written.claim.release()
    await downloads.close()


async def test_a_package_whose_link_is_not_followed_goes(tmp_path: Path) -> None:
    spool = ExportSpool(tmp_path / "exports")
    downloads = PackageDownloads(ttl_seconds=0.05)
    expiring = _written(spool)
    token = downloads.offer(expiring)
    await asyncio.sleep(0.3)
    assert downloads.take(token, "u_1", "csrf-1") is None
    assert not expiring.claim.path.exists()
    # A worker that stops deletes what still waits.
    waiting = _written(spool)
    downloads = PackageDownloads()
    downloads.offer(waiting)
    await downloads.close()
    assert not waiting.claim.path.exists()
    assert list(spool.root.iterdir()) == [spool.root / GUARD]
