"""The archive store against a real MinIO: Object Lock, COMPLIANCE retention, legal hold, the spool.

Run through `bash infra/test.sh`, which starts a throwaway MinIO and exports VTELLER_S3_ENDPOINT,
VTELLER_S3_ACCESS_KEY and VTELLER_S3_SECRET_KEY. Without them these tests fail (not skip): an
archive store that was never tested against S3 must not look green. Each test uses its own bucket;
the outage test starts a second, private MinIO that it can stop and start.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
import shutil
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio.commonconfig import COMPLIANCE, GOVERNANCE
from minio.error import S3Error
from minio.helpers import md5sum_hash
from minio.objectlockconfig import DAYS, ObjectLockConfig
from minio.retention import Retention
from minio.xml import marshal
from pydantic import SecretStr

from bench.media import free_port
from recorder.store.config import S3_ENVIRONMENT, StoreSettings
from recorder.store.s3 import (
    ArchiveBucket,
    ArchiveConflictError,
    ArchiveIntegrityError,
    ArchiveNotFoundError,
    ObjectLockMissingError,
    S3Archive,
)
from recorder.store.spool import Spool
from recorder.verify import ArchiveReader
from tests.support.archive import running_uploader
from tests.support.s3_gateway import StrippingS3Gateway

REPO = Path(__file__).resolve().parents[2]
MINIO_SH = REPO / "infra" / "minio.sh"


def retain_for(days: float) -> datetime:
    # Whole seconds: stores keep retention dates with second (or millisecond) precision.
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


@pytest.fixture
def store_settings() -> StoreSettings:
    missing = [name for name in S3_ENVIRONMENT if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: these tests need a real MinIO. Run them via "
            "`bash infra/test.sh tests/integration/test_archive_store.py` (it starts one), or "
            'start one with infra/minio.sh and eval "$(bash infra/minio.sh env ...)"',
            pytrace=False,
        )
    return StoreSettings.from_environment(
        bucket=f"vteller-test-{secrets.token_hex(5)}",
        retry_backoff_min_seconds=0.05,
        retry_backoff_max_seconds=0.5,
    )


@pytest.fixture
async def bucket(store_settings: StoreSettings) -> ArchiveBucket:
    archive = ArchiveBucket.from_settings(store_settings)
    await archive.ensure_bucket()
    return archive


def versions(bucket: ArchiveBucket, name: str) -> list[str]:
    return [
        str(item.version_id)
        for item in bucket.client.list_objects(bucket.name, prefix=name, include_version=True)
        if item.object_name == name and not item.is_delete_marker
    ]


async def test_bucket_is_created_with_object_lock(bucket: ArchiveBucket) -> None:
    client = bucket.client
    assert await asyncio.to_thread(client.bucket_exists, bucket.name)
    await asyncio.to_thread(client.get_object_lock_config, bucket.name)  # raises without a lock
    versioning = await asyncio.to_thread(client.get_bucket_versioning, bucket.name)
    assert versioning.status == "Enabled"
    await bucket.ensure_bucket()  # idempotent


async def test_existing_bucket_without_object_lock_is_refused(
    store_settings: StoreSettings,
) -> None:
    plain = ArchiveBucket.from_settings(store_settings)
    await asyncio.to_thread(plain.client.make_bucket, plain.name)
    with pytest.raises(ObjectLockMissingError, match=r"has no Object Lock.*another bucket name"):
        await plain.ensure_bucket()


async def test_put_get_under_compliance_retention(bucket: ArchiveBucket) -> None:
    until = retain_for(2)
    data = secrets.token_bytes(300_000)
    result = await bucket.put("archives/a1/segment-000001", data, until)
    assert result.created
    assert result.version_id
    # What the store holds, read back after the upload.
    assert (result.retention_mode, result.retain_until) == (COMPLIANCE, until)
    await bucket.put("archives/a1/manifest.json", b"{}", until)
    await bucket.put("archives/a2/segment-000001", b"other archive", until)

    assert await bucket.get("archives/a1/segment-000001") == data
    assert await bucket.list("archives/a1/") == [
        "archives/a1/manifest.json",
        "archives/a1/segment-000001",
    ]
    retention = await asyncio.to_thread(
        bucket.client.get_object_retention, bucket.name, "archives/a1/segment-000001"
    )
    assert retention is not None
    assert retention.mode == COMPLIANCE
    assert retention.retain_until_date == until
    assert await bucket.retention("archives/a1/segment-000001") == until

    archive: ArchiveReader = S3Archive(bucket, "archives/a1")  # what recorder/verify.py reads
    assert archive.list_names() == ["manifest.json", "segment-000001"]
    assert archive.read("segment-000001") == data
    with pytest.raises(ArchiveNotFoundError):
        await bucket.get("archives/a1/segment-999999")


async def test_locked_version_cannot_be_deleted(bucket: ArchiveBucket) -> None:
    result = await bucket.put("a/locked", b"evidence", retain_for(1))
    client = bucket.client
    with pytest.raises(S3Error) as refused:
        await asyncio.to_thread(client.remove_object, bucket.name, "a/locked", result.version_id)
    # MinIO answers InvalidRequest ("Object is WORM protected and cannot be overwritten"), AWS
    # AccessDenied: either way the version is still there.
    assert refused.value.code in ("AccessDenied", "InvalidRequest"), refused.value
    assert await bucket.get("a/locked", version_id=result.version_id) == b"evidence"

    # A plain DELETE only adds a delete marker; the locked version is untouched.
    await asyncio.to_thread(client.remove_object, bucket.name, "a/locked")
    with pytest.raises(ArchiveNotFoundError):
        await bucket.get("a/locked")
    assert await bucket.get("a/locked", version_id=result.version_id) == b"evidence"
    # ... and ArchiveBucket will not put other bytes under the name the marker hides.
    with pytest.raises(ArchiveConflictError, match="delete marker"):
        await bucket.put("a/locked", b"replacement", retain_for(1))
    assert versions(bucket, "a/locked") == [result.version_id]


async def test_overwrite_is_refused_and_cannot_remove_the_locked_version(
    bucket: ArchiveBucket,
) -> None:
    original = await bucket.put("a/segment", b"original bytes", retain_for(1))
    with pytest.raises(ArchiveConflictError, match="different content"):
        await bucket.put("a/segment", b"tampered bytes", retain_for(1))
    assert await bucket.get("a/segment") == b"original bytes"
    assert versions(bucket, "a/segment") == [original.version_id]

    # Bypassing ArchiveBucket, a raw PUT creates a newer version, but the original stays.
    client = bucket.client
    newer = await asyncio.to_thread(
        client.put_object, bucket.name, "a/segment", io.BytesIO(b"tampered"), 8
    )
    assert newer.version_id != original.version_id
    assert await bucket.get("a/segment") == b"tampered"
    assert await bucket.get("a/segment", version_id=original.version_id) == b"original bytes"
    with pytest.raises(S3Error):
        await asyncio.to_thread(client.remove_object, bucket.name, "a/segment", original.version_id)
    assert await bucket.get("a/segment", version_id=original.version_id) == b"original bytes"
    # ... and ArchiveBucket still refuses to call the tampered bytes ours.
    with pytest.raises(ArchiveConflictError):
        await bucket.put("a/segment", b"original bytes", retain_for(1))


async def test_compliance_retention_cannot_be_shortened_only_extended(
    bucket: ArchiveBucket,
) -> None:
    until = retain_for(3)
    result = await bucket.put("a/retained", b"x", until)
    client = bucket.client
    for shorter in (Retention(COMPLIANCE, retain_for(1)), Retention(GOVERNANCE, retain_for(1))):
        with pytest.raises(S3Error):
            await asyncio.to_thread(
                client.set_object_retention, bucket.name, "a/retained", shorter, result.version_id
            )
    assert await bucket.retention("a/retained") == until

    # Re-putting the same bytes with a later date extends the retention (never shortens it).
    later = retain_for(5)
    again = await bucket.put("a/retained", b"x", later)
    assert not again.created
    assert await bucket.retention("a/retained") == later
    again = await bucket.put("a/retained", b"x", until)
    assert await bucket.retention("a/retained") == later


async def test_legal_hold_set_and_clear(bucket: ArchiveBucket) -> None:
    await bucket.put("a/held", b"x", retain_for(1))
    assert not (await bucket.legal_hold("a/held")).on

    await bucket.set_legal_hold("a/held", True, reason="诉讼保全 case #2026-17 & appeal")
    hold = await bucket.legal_hold("a/held")
    assert hold.on
    assert hold.reason == "诉讼保全 case #2026-17 & appeal"
    assert hold.since is not None
    assert await asyncio.to_thread(
        bucket.client.is_object_legal_hold_enabled, bucket.name, "a/held"
    )

    await bucket.set_legal_hold("a/held", True, reason="court order 17")
    assert (await bucket.legal_hold("a/held")).reason == "court order 17"

    await bucket.set_legal_hold("a/held", False)
    hold = await bucket.legal_hold("a/held")
    assert not hold.on
    assert hold.reason is None
    assert not await asyncio.to_thread(
        bucket.client.is_object_legal_hold_enabled, bucket.name, "a/held"
    )


async def test_reput_of_the_same_bytes_is_a_no_op(bucket: ArchiveBucket) -> None:
    until = retain_for(1)
    first = await bucket.put("a/segment", b"same bytes", until)
    second = await bucket.put("a/segment", b"same bytes", until)
    assert first.created
    assert not second.created
    assert second.version_id == first.version_id
    assert second.sha256 == first.sha256
    assert versions(bucket, "a/segment") == [first.version_id]


async def test_get_detects_bytes_that_do_not_match_their_digest(bucket: ArchiveBucket) -> None:
    await asyncio.to_thread(
        bucket.client.put_object,
        bucket.name,
        "a/forged",
        io.BytesIO(b"forged"),
        6,
        metadata={"sha256": "0" * 64},
    )
    with pytest.raises(ArchiveIntegrityError):
        await bucket.get("a/forged")


# --- outages and crashes ----------------------------------------------------------------------


async def minio_sh(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(MINIO_SH),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, f"minio.sh {' '.join(args)} failed:\n{text}"
    return text


@pytest.fixture
async def private_minio(store_settings: StoreSettings, tmp_path: Path) -> AsyncIterator[list[str]]:
    """A MinIO of this test's own (stoppable), on free ports; yields minio.sh's options."""
    options = [
        "--data-dir",
        str(tmp_path / "minio"),
        "--port",
        str(free_port()),
        "--console-port",
        str(free_port()),
    ]
    await minio_sh("start", *options)
    try:
        yield options
    finally:
        await minio_sh("stop", *options)


def settings_for(options: list[str]) -> StoreSettings:
    directory = Path(options[1])
    environ = dict(
        line.split("=", 1)
        for line in (directory / "minio.env").read_text().splitlines()
        if "=" in line
    )
    return StoreSettings(
        endpoint=f"http://127.0.0.1:{options[3]}",
        access_key=environ["MINIO_ROOT_USER"],
        secret_key=SecretStr(environ["MINIO_ROOT_PASSWORD"]),
        bucket=f"vteller-test-{secrets.token_hex(5)}",
        retry_backoff_min_seconds=0.05,
        retry_backoff_max_seconds=0.5,
        connect_timeout_seconds=1,
    )


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 -- polls state owned by the code under test
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"waited {timeout} s for {what}")


async def test_uploads_survive_minio_going_down(
    store_settings: StoreSettings, private_minio: list[str], tmp_path: Path
) -> None:
    # store_settings only for its check: like the others, this test runs via infra/test.sh.
    settings = settings_for(private_minio)
    bucket = ArchiveBucket.from_settings(settings)
    spool = Spool(tmp_path / "spool")
    until = retain_for(1)
    payloads = {
        f"archives/x/segment-{index:06d}": secrets.token_bytes(200_000) for index in range(12)
    }
    names = list(payloads)
    async with running_uploader(spool, bucket) as uploader:
        for name in names[:3]:
            await spool.add(name, payloads[name], until)
        await uploader.flush(15)

        # MinIO goes away in the middle of a stream of segments.
        for name in names[3:5]:
            await spool.add(name, payloads[name], until)
        await minio_sh("stop", *private_minio)
        for name in names[5:]:
            await spool.add(name, payloads[name], until)  # accepted: the spool has them

        # Sampled while waiting between attempts (not during one), so retry_at is set.
        await wait_until(
            lambda: (
                uploader.status().consecutive_failures >= 2
                and uploader.status().retry_at is not None
            ),
            20,
            "uploads to fail",
        )
        status = uploader.status()
        assert status.pending_count >= len(names) - 5
        assert status.last_error == "connection refused"
        assert status.retry_at is not None
        sentence = status.describe()
        assert "objects waiting for the archive store: connection refused; retrying in" in sentence
        with pytest.raises(TimeoutError, match="waiting for the archive store"):
            await uploader.flush(0.5)

        await minio_sh("start", *private_minio)
        status = await uploader.flush(30)
        assert status.pending_count == 0
        assert status.consecutive_failures == 0
        assert status.rejected_count == 0

    assert await bucket.list("archives/x/") == names
    for name, data in payloads.items():
        assert await bucket.get(name) == data
        assert await bucket.retention(name) == until
        assert len(versions(bucket, name)) == 1
    assert list((tmp_path / "spool" / "pending").iterdir()) == []


async def test_a_store_back_without_its_bucket_gets_it_again_with_object_lock(
    store_settings: StoreSettings, private_minio: list[str], tmp_path: Path
) -> None:
    # MinIO restored empty (a new disk, a rebuilt deployment): the bucket the uploader checked at
    # its start is gone. It must be made again with Object Lock, not waited for forever; and one
    # made again by hand without Object Lock must be refused by name, nothing stored unlocked.
    settings = settings_for(private_minio)
    bucket = ArchiveBucket.from_settings(settings)
    spool = Spool(tmp_path / "spool")
    until = retain_for(1)
    async with running_uploader(spool, bucket) as uploader:
        await spool.add("archives/w/segment-000000", b"before", until)
        await uploader.flush(15)

        await minio_sh("stop", *private_minio)
        shutil.rmtree(Path(private_minio[1]) / "data")
        await minio_sh("start", *private_minio)
        await spool.add("archives/w/segment-000001", b"after", until)
        await uploader.flush(30)
        assert await bucket.list("archives/w/") == ["archives/w/segment-000001"]
        assert await bucket.retention("archives/w/segment-000001") == until

        await minio_sh("stop", *private_minio)
        shutil.rmtree(Path(private_minio[1]) / "data")
        await minio_sh("start", *private_minio)
        await asyncio.to_thread(bucket.client.make_bucket, bucket.name)  # no Object Lock
        await spool.add("archives/w/segment-000002", b"unlocked?", until)
        await wait_until(
            lambda: "has no Object Lock" in (uploader.status().last_error or ""),
            30,
            "the bucket without Object Lock to be refused by name",
        )
        assert uploader.status().pending_count == 1
        assert await bucket.list("archives/w/") == []


async def test_a_killed_process_loses_nothing(bucket: ArchiveBucket, tmp_path: Path) -> None:
    # A separate process spools segments and starts uploading them slowly; it is SIGKILLed after
    # the first ones reached MinIO. A new Spool + Uploader on the same directory finishes the job.
    spool_dir = tmp_path / "spool"
    count = 8
    until = retain_for(1)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from datetime import datetime
        sys.path.insert(0, {str(REPO)!r})
        from recorder.store.config import StoreSettings
        from recorder.store.s3 import ArchiveBucket
        from recorder.store.spool import Spool, Uploader

        class Slow:
            # The real bucket, slowed down so that the kill lands mid-way through the uploads.
            def __init__(self, bucket):
                self.bucket = bucket
            async def ensure_bucket(self):
                await self.bucket.ensure_bucket()
            async def put(self, name, data, retain_until):
                await asyncio.sleep(0.3)
                return await self.bucket.put(name, data, retain_until)

        async def main():
            settings = StoreSettings.from_environment(bucket={bucket.name!r})
            spool = Spool({str(spool_dir)!r})
            until = datetime.fromisoformat({until.isoformat()!r})
            for index in range({count}):
                data = bytes([index]) * 100_000
                await spool.add(f"archives/k/segment-{{index:06d}}", data, until)
            print("spooled", flush=True)
            await Uploader(spool, Slow(ArchiveBucket.from_settings(settings))).start()
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        if line.strip() != b"spooled":
            await process.wait()
            pytest.fail(f"the spooling process failed:\n{(await process.stderr.read()).decode()}")
        # Killed once a first upload has finished (stored, its retention read back and its
        # spool file removed), not as soon as its object shows in MinIO: the read-back between
        # the two let the kill land before any upload was done.
        pending = spool_dir / "pending"
        async with asyncio.timeout(20):
            while len(list(pending.iterdir())) == count:  # noqa: ASYNC110 -- polls the spool
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()

    left = list((spool_dir / "pending").iterdir())
    assert 0 < len(left) < count, "the kill should land while uploads are in progress"

    async with running_uploader(Spool(spool_dir), bucket) as uploader:
        status = await uploader.flush(20)
    assert status.pending_count == 0
    assert status.rejected_count == 0
    names = [f"archives/k/segment-{index:06d}" for index in range(count)]
    assert await bucket.list("archives/k/") == names
    for index, name in enumerate(names):
        assert await bucket.get(name) == bytes([index]) * 100_000
        assert await bucket.retention(name) == until
        assert len(versions(bucket, name)) == 1


def set_compliance_bypassing_governance(bucket: ArchiveBucket, name: str, until: datetime) -> None:
    """What an operator allowed to bypass governance does (`mc retention set --bypass`); the SDK
    has no call for the bypass header."""
    body = marshal(Retention(COMPLIANCE, until))
    bucket.client._execute(
        "PUT",
        bucket.name,
        name,
        body=body,
        headers={
            "Content-MD5": str(md5sum_hash(body)),
            "x-amz-bypass-governance-retention": "true",
        },
        query_params={"retention": ""},
    )


async def place_under_governance(bucket: ArchiveBucket, name: str, until: datetime) -> None:
    """An object whose bytes are its name, put in the bucket under GOVERNANCE retention until
    `until`, bypassing ArchiveBucket: what an upload whose headers a proxy stripped leaves."""
    data = name.encode()
    await asyncio.to_thread(
        bucket.client.put_object,
        bucket.name,
        name,
        io.BytesIO(data),
        len(data),
        metadata={"sha256": hashlib.sha256(data).hexdigest()},
        retention=Retention(GOVERNANCE, until),
    )


async def test_an_object_the_store_holds_under_governance_is_not_counted_as_archived(
    bucket: ArchiveBucket, tmp_path: Path
) -> None:
    # The same bytes already in the bucket under GOVERNANCE retention (a bucket default applied
    # to an upload whose headers a proxy stripped, a restore by mirroring): deletable by anyone
    # allowed to bypass governance, whatever the date. A re-upload after a crash finds them.
    longer, shorter, until = retain_for(30), retain_for(0.5), retain_for(2)
    placed = {"archives/g/segment-000000": longer, "archives/g/segment-000001": shorter}
    for name, governance_until in placed.items():
        await place_under_governance(bucket, name, governance_until)
    spool = Spool(tmp_path / "spool")
    async with running_uploader(spool, bucket) as uploader:
        for name in placed:
            await spool.add(name, name.encode(), until)
        await wait_until(
            lambda: uploader.status().consecutive_failures >= 2, 20, "the uploads to fail"
        )
        status = uploader.status()
        # Kept in the spool, nothing reported archived, and the fix named.
        assert status.pending_count == 2 and status.uploaded_count == 0
        assert status.retention_mismatches >= 2
        error = status.last_error or ""
        assert "GOVERNANCE retention until" in error and "COMPLIANCE until" in error, error
        assert "could be deleted" in error and "mc retention set --bypass" in error, error
        assert not status.healthy

        for name in placed:
            await asyncio.to_thread(set_compliance_bypassing_governance, bucket, name, until)
        status = await uploader.flush(20)
    assert status.pending_count == 0 and status.uploaded_count == 2
    for name in placed:
        retention = await asyncio.to_thread(bucket.client.get_object_retention, bucket.name, name)
        assert retention is not None and retention.mode == COMPLIANCE
        assert retention.retain_until_date == until
        assert len(versions(bucket, name)) == 1


async def test_an_upload_whose_retention_a_proxy_strips_is_kept_in_the_spool(
    store_settings: StoreSettings, tmp_path: Path
) -> None:
    direct = ArchiveBucket.from_settings(store_settings)
    await direct.ensure_bucket()
    # What an upload without Object Lock headers gets in this bucket: a day of GOVERNANCE.
    await asyncio.to_thread(
        direct.client.set_object_lock_config, direct.name, ObjectLockConfig(GOVERNANCE, 1, DAYS)
    )
    name = "archives/p/segment-000000"
    secret = store_settings.secret_key.get_secret_value()
    with StrippingS3Gateway(store_settings.endpoint, store_settings.access_key, secret) as gateway:
        proxied = ArchiveBucket.from_settings(
            store_settings.model_copy(update={"endpoint": gateway.url})
        )
        spool = Spool(tmp_path / "spool")
        async with running_uploader(spool, proxied) as uploader:
            await spool.add(name, b"through the proxy", retain_for(30))
            await wait_until(
                lambda: uploader.status().consecutive_failures >= 2 or spool.pending_count == 0,
                20,
                "the upload to be done or refused",
            )
            status = uploader.status()
    # Not reported archived: the store holds it deletable (GOVERNANCE, a day), not as asked.
    assert status.pending_count == 1 and status.uploaded_count == 0
    assert status.retention_mismatches >= 2
    error = status.last_error or ""
    assert "GOVERNANCE retention until" in error and "no proxy in front of it strips" in error
    retention = await asyncio.to_thread(direct.client.get_object_retention, direct.name, name)
    assert retention is not None and retention.mode == GOVERNANCE
