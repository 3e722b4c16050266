"""A recording loses nothing when the server is killed or the archive store goes away."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from recorder.playback import MediaInspector
from recorder.seal.keyring import LocalKeyring
from recorder.seal.signing import load_public_keys
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket, S3Archive
from recorder.verify import VerificationReport, verify_archive
from tests.support.bot import Bot
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
