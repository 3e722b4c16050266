"""Dual recording through the real server into the real MinIO, verified as an auditor would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from recorder.playback import MediaInspector
from recorder.seal.keyring import LocalKeyring
from recorder.seal.manifest import parse_manifest
from recorder.seal.signing import load_public_keys
from recorder.store.s3 import ArchiveBucket, S3Archive
from recorder.verify import verify_archive
from tests.integration.test_call import _expert_bot, _teller_and_customer
from tests.support.bot import Bot
from tests.support.server import RunningServer


async def _record(server: RunningServer, teller: Bot, customer: Bot) -> dict[str, object]:
    await teller.send({"type": "recording_start"})
    await customer.expect("consent_request")
    await customer.send({"type": "consent", "granted": True})
    state = await teller.expect("recording")
    while state["state"] != "recording":
        state = await teller.expect("recording")
    assert "consent_request" not in teller.history  # only the customer is asked
    return state


async def _sealed(bot: Bot) -> dict[str, object]:
    while True:
        state = await bot.expect("recording", timeout=30)
        if state["state"] in ("sealed", "interrupted"):
            return state


async def _stored(server: RunningServer, archive_id: str) -> S3Archive:
    manager = server.services.rooms._recorder  # the worker's recorder
    await manager.uploader.flush(timeout=30)
    return S3Archive(ArchiveBucket.from_settings(server.settings.store), f"archives/{archive_id}")


async def _recorded(
    server: RunningServer,
    teller: Bot,
    customer: Bot,
    while_recording: Callable[[], Awaitable[None]],
    before: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Run `before`, record `while_recording`, and close both bots; the archive id once the
    sealed (not interrupted) archive is in the store."""
    try:
        if before is not None:
            await before()
        started = await _record(server, teller, customer)
        await while_recording()
        await teller.send({"type": "recording_stop"})
        sealed = await _sealed(teller)
        assert sealed["state"] == "sealed", sealed
    finally:
        await customer.close()
        await teller.close()
    archive_id = str(started["archive_id"])
    await _stored(server, archive_id)
    return archive_id


def _keys(server: RunningServer) -> tuple[dict[str, bytes], LocalKeyring]:
    keys = server.settings.data_dir / "keys"
    return load_public_keys(keys / "public"), LocalKeyring.open(keys / "keyring.json")


async def test_a_recorded_call_is_sealed_stored_and_verifies(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        started = await _record(server, teller, customer)
        archive_id = str(started["archive_id"])
        await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
        marked = await teller.expect("marked")
        assert marked["moment"] == "risk_disclosure" and marked["media_ms"] >= 0

        # An expert joins later: recorded from then on, in tracks of their own.
        expert = await _expert_bot(server, teller, session_id)
        await expert.join()
        await teller.wait_for_media(expert.participant_id, "camera")
        await asyncio.sleep(3)

        # The customer drops and comes back: the same recording continues, the gap is marked.
        await customer.close()
        await teller.expect("participant_left")
        customer = Bot(customer.client, session_id, colour="red")
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera", frames=30)
        await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "end"})
        await asyncio.sleep(2)
        await teller.send({"type": "recording_stop"})
        sealed = await _sealed(teller)
        assert sealed["state"] == "sealed" and sealed["archive_id"] == archive_id
    finally:
        await customer.close()
        await teller.close()

    archive = await _stored(server, archive_id)
    public_keys, keyring = _keys(server)
    inspector = MediaInspector()
    report = await asyncio.to_thread(
        verify_archive, archive, public_keys, keyring=keyring, inspector=inspector
    )
    assert report.ok, report.render()
    manifest = report.manifest
    assert manifest is not None and manifest.status == "complete"
    assert manifest.session_id == session_id
    assert manifest.marks[0].name == "consent.start"
    assert [m.name for m in manifest.marks[1:]] == ["risk_disclosure.start", "risk_disclosure.end"]
    assert {p.role for p in manifest.participants} == {"teller", "customer", "expert"}
    assert any("customer disconnected" in g.reason for g in manifest.gaps)
    recorded = {(t.participant_id, t.source) for t in manifest.tracks}
    assert (expert.participant_id, "camera") in recorded
    # The media plays: every party's camera and microphone hold packets over most of the time.
    assert inspector.summary is not None
    by_title = {s.title: s for s in inspector.summary.streams}
    for title in ("teller camera", "teller microphone", "customer camera", "expert1 camera"):
        assert by_title[title].packets > 10, (title, inspector.summary.describe())
    assert inspector.summary.duration_ms > 5000
    # Chained: the next archive names this one's manifest.
    chain_head = await server.services.rooms._recorder.chain.head()
    assert chain_head is not None


async def test_customer_can_decline_and_nothing_is_recorded(server: RunningServer) -> None:
    teller, customer, _ = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.send({"type": "recording_start"})
        await customer.expect("consent_request")
        await customer.send({"type": "consent", "granted": False})
        state = await teller.expect("recording")
        while state["state"] in ("idle", "awaiting_consent"):
            state = await teller.expect("recording")
        assert state["state"] == "declined" and state["archive_id"] is None
        # Marks need a running recording; the customer cannot start one.
        await teller.send({"type": "mark", "moment": "closing", "phase": "start"})
        assert (await teller.expect("error"))["code"] == "out_of_order"
        await customer.send({"type": "recording_start"})
        assert (await customer.expect("error"))["code"] == "forbidden"
    finally:
        await customer.close()
        await teller.close()


async def recorded_call(server: RunningServer, seconds: float) -> S3Archive:
    """A teller and a customer record for `seconds`; the sealed archive, once it is stored."""
    teller, customer, _ = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        started = await _record(server, teller, customer)
        await asyncio.sleep(seconds)
        await teller.send({"type": "recording_stop"})
        await _sealed(teller)
    finally:
        await customer.close()
        await teller.close()
    return await _stored(server, str(started["archive_id"]))


async def test_export_verifies_offline_and_tampering_is_named(
    server: RunningServer, tmp_path: Path
) -> None:
    archive = await recorded_call(server, 3)
    archive_id = archive.prefix.removeprefix("archives/").rstrip("/")
    data_dir = server.settings.data_dir
    package = tmp_path / "package"
    bucket = server.settings.store.bucket
    done = await _vteller(data_dir, "export", f"s3://{bucket}/archives/{archive_id}", str(package))
    assert done.returncode == 0, done.stderr
    ok = await _vteller(data_dir, "verify", str(package))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout

    # One flipped byte in a segment: verify fails and names the segment.
    segment = sorted(package.glob("seg-*.bin"))[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    bad = await _vteller(data_dir, "verify", str(package))
    assert bad.returncode == 1
    assert segment.name in bad.stdout
    manifest = parse_manifest((package / "manifest.json").read_bytes())
    assert manifest.archive_id == archive_id


async def _vteller(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command, as a separate process with this server's data directory."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server", *args],
        env=os.environ | {"VTELLER_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
