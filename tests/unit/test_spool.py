"""The durable spool: atomic, owner-only, ordered, and nothing half-written ever counts as stored.

The uploader is exercised here against a small in-memory target (order, rejection, backoff);
against the real MinIO in tests/integration/test_archive_store.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import stat
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recorder.store.s3 import ArchiveConflictError, ArchiveUnavailableError
from recorder.store.spool import Spool, SpoolCorruptError, UploaderStatus
from tests.support.archive import running_uploader

UNTIL = datetime.now(UTC) + timedelta(days=30)
REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_added_object_is_on_disk_owner_only_and_reads_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = await spool.add("archives/a/segment-000001", b"\x00ciphertext\xff" * 100, UNTIL)

    assert entry.path.exists()
    assert mode(entry.path) == 0o600
    for directory in ("", "pending", "tmp", "rejected"):
        assert mode(tmp_path / "spool" / directory) == 0o700
    assert spool.pending_count == 1
    assert spool.pending_bytes == entry.path.stat().st_size

    loaded, data = await spool.load(entry.path)
    assert data == b"\x00ciphertext\xff" * 100
    assert loaded.name == "archives/a/segment-000001"
    assert loaded.retain_until == UNTIL
    assert loaded.sha256 == entry.sha256

    await spool.remove(loaded)
    assert not entry.path.exists()
    assert spool.pending_count == 0
    assert spool.pending_bytes == 0


async def test_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    await Spool(directory).open()
    assert mode(directory) == 0o700


async def test_order_is_kept_within_and_across_processes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    names = [f"a/segment-{index:03d}" for index in range(12)]
    # Concurrent adds still land in call order.
    await asyncio.gather(*(spool.add(name, name.encode(), UNTIL) for name in names[:6]))
    reopened = Spool(tmp_path)  # a new process on the same directory continues the sequence
    for name in names[6:]:
        await reopened.add(name, name.encode(), UNTIL)
    assert reopened.pending_count == 12
    loaded = [(await reopened.load(path))[0].name for path in await reopened.paths()]
    assert loaded == names


@pytest.mark.parametrize("failing", ["fsync", "rename"])
async def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    real = getattr(os, failing)

    def broken(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError, match="Input/output"):
        await spool.add("a/segment", b"data", UNTIL)
    monkeypatch.setattr(os, failing, real)

    assert list((tmp_path / "pending").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert spool.pending_count == 0
    # The spool still works afterwards.
    await spool.add("a/segment", b"data", UNTIL)
    assert spool.pending_count == 1


async def test_unfinished_temporary_file_is_dropped_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.add("a/kept", b"kept", UNTIL)
    leftover = tmp_path / "tmp" / "000000000099-deadbeef.spool.part"
    leftover.write_bytes(b"VTSPOOL1\n{half a hea")

    restarted = Spool(tmp_path)
    await restarted.open()
    assert not leftover.exists()
    assert restarted.pending_count == 1
    assert [(await restarted.load(p))[0].name for p in await restarted.paths()] == ["a/kept"]


async def test_process_killed_while_writing_leaves_only_complete_objects(tmp_path: Path) -> None:
    # A real SIGKILL at an arbitrary moment of a stream of 2 MB writes: every file that made it
    # into pending/ must be complete and match its digest, and every acknowledged add must be there.
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from datetime import UTC, datetime, timedelta
        sys.path.insert(0, {str(REPO)!r})
        from recorder.store.spool import Spool

        async def main():
            spool = Spool({str(tmp_path)!r})
            until = datetime.now(UTC) + timedelta(days=1)
            index = 0
            while True:
                await spool.add(f"a/seg-{{index:05d}}", bytes([index % 256]) * 2_000_000, until)
                print(index, flush=True)
                index += 1

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    assert process.stdout is not None
    acknowledged = -1
    try:
        async with asyncio.timeout(30):
            while acknowledged < 5:
                acknowledged = int(await process.stdout.readline())
        await asyncio.sleep(0.037)  # land somewhere inside a later write
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    for line in (await process.stdout.read()).split():
        acknowledged = int(line)

    spool = Spool(tmp_path)
    paths = await spool.paths()
    assert list((tmp_path / "tmp").iterdir()) == []
    names = []
    for index, path in enumerate(paths):
        entry, data = await spool.load(path)  # raises SpoolCorruptError if torn
        assert entry.name == f"a/seg-{index:05d}"
        assert data == bytes([index % 256]) * 2_000_000
        names.append(entry.name)
    # Everything acknowledged is there; at most the one add in flight also completed.
    assert acknowledged + 1 <= len(names) <= acknowledged + 2


async def test_corrupt_file_is_detected_and_can_be_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = await spool.add("a/segment", b"x" * 1000, UNTIL)
    raw = bytearray(entry.path.read_bytes())
    raw[-1] ^= 0xFF
    entry.path.write_bytes(bytes(raw))

    with pytest.raises(SpoolCorruptError, match="sha256"):
        await spool.load(entry.path)
    target = await spool.reject(entry.path, "corrupt")
    assert target.parent.name == "rejected"
    assert target.with_name(target.name + ".reason").read_text().strip().endswith("corrupt")
    assert spool.pending_count == 0
    assert spool.rejected_count == 1
    assert Spool(tmp_path).rejected_count == 0  # counted at open()
    reopened = Spool(tmp_path)
    await reopened.open()
    assert reopened.rejected_count == 1


async def test_add_refuses_what_could_never_be_archived(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="timezone-aware"):
        await spool.add("a/b", b"", datetime(2099, 1, 1))
    with pytest.raises(ValueError, match="not in the future"):
        await spool.add("a/b", b"", datetime.now(UTC) - timedelta(seconds=1))
    for name in ("", "/abs", "a//b", "a/../b", "a\nb"):
        with pytest.raises(ValueError, match="name"):
            await spool.add(name, b"", UNTIL)
    assert spool.pending_count == 0


class MemoryTarget:
    """A stand-in store: records puts, can be made to fail or to hold conflicting bytes."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.order: list[str] = []
        self.down = False
        self.attempts = 0

    async def ensure_bucket(self) -> None:
        if self.down:
            raise ArchiveUnavailableError("archive store unreachable: connection refused")

    async def put(self, name: str, data: bytes, retain_until: datetime) -> object:
        self.attempts += 1
        if self.down:
            raise ArchiveUnavailableError("archive store unreachable: connection refused")
        if name in self.objects and self.objects[name] != data:
            raise ArchiveConflictError(f"{name} is already archived with different content")
        self.objects[name] = data
        self.order.append(name)
        return None


async def test_uploader_uploads_in_order_and_retries_with_backoff(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    target = MemoryTarget()
    target.down = True
    async with running_uploader(
        spool, target, backoff_min_seconds=0.02, backoff_max_seconds=0.08
    ) as uploader:
        for index in range(5):
            await spool.add(f"a/seg-{index}", bytes([index]) * 10, UNTIL)
        for _ in range(200):
            if uploader.status().consecutive_failures >= 4:
                break
            await asyncio.sleep(0.01)
        status = uploader.status()
        assert status.pending_count == 5
        assert status.last_error == "archive store unreachable: connection refused"
        assert status.describe().startswith("5 objects waiting for the archive store: ")
        assert target.objects == {}

        target.down = False
        status = await uploader.flush(5)
        assert status.pending_count == 0
        assert status.consecutive_failures == 0
        assert status.uploaded_count == 5
        assert status.last_success_at is not None
        assert target.order == [f"a/seg-{index}" for index in range(5)]
        assert status.describe() == "all objects are in the archive store"


async def test_conflicting_object_is_set_aside_and_the_rest_goes_through(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    target = MemoryTarget()
    target.objects["a/seg-1"] = b"something else"
    async with running_uploader(
        spool, target, backoff_min_seconds=0.02, backoff_max_seconds=0.08
    ) as uploader:
        for index in range(3):
            await spool.add(f"a/seg-{index}", b"ours", UNTIL)
        status = await uploader.flush(5)
    assert target.order == ["a/seg-0", "a/seg-2"]
    assert status.rejected_count == 1
    assert "different content" in (status.last_error or "")
    assert "1 refused by the archive store" in status.describe()
    assert len(list((tmp_path / "rejected").glob("*.spool"))) == 1


async def test_a_rejection_whose_move_failed_is_done_when_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    target = MemoryTarget()
    target.objects["a/seg-0"] = b"something else"
    rename = os.rename

    def rejected_dir_full_once(source: Path, destination: Path) -> None:
        if Path(destination).parent.name == "rejected" and not failed:
            failed.append(destination)
            raise OSError(errno.ENOSPC, "No space left on device")
        rename(source, destination)

    failed: list[Path] = []
    monkeypatch.setattr(os, "rename", rejected_dir_full_once)
    async with running_uploader(
        spool, target, backoff_min_seconds=0.01, backoff_max_seconds=0.02
    ) as uploader:
        for index in range(2):
            await spool.add(f"a/seg-{index}", b"ours", UNTIL)
        status = await uploader.flush(5)
    assert failed and target.order == ["a/seg-1"]
    assert status.rejected_count == 1 and status.pending_count == 0
    [reason] = (tmp_path / "rejected").glob("*.reason")
    assert "different content" in reason.read_text()
    assert not list((tmp_path / "rejected").glob(".*"))  # no temporary file left behind


async def test_flush_times_out_saying_what_waits(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    target = MemoryTarget()
    target.down = True
    async with running_uploader(
        spool, target, backoff_min_seconds=0.05, backoff_max_seconds=0.05
    ) as uploader:
        await spool.add("a/seg", b"x", UNTIL)
        with pytest.raises(TimeoutError, match=r"1 object waiting .*connection refused"):
            await uploader.flush(0.3)
    assert spool.pending_count == 1  # still safe on disk
    with pytest.raises(RuntimeError, match="not running"):
        await uploader.flush(1)


def test_status_sentence() -> None:
    now = datetime.now(UTC)
    status = UploaderStatus(
        running=True,
        pending_count=3,
        pending_bytes=3_000_000,
        rejected_count=0,
        uploaded_count=10,
        uploading=None,
        consecutive_failures=4,
        last_error="connection refused",
        last_error_at=now,
        last_success_at=now - timedelta(minutes=1),
        retry_at=now + timedelta(seconds=8.2),
    )
    assert status.describe() == (
        "3 objects waiting for the archive store: connection refused; retrying in 8 s"
    )
    assert not status.healthy
