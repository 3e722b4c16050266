"""Timing in the recording: lip-sync, and keyframes where a player needs them.

Lip-sync: a flash and a beep made at the same instant land together. The customer's camera
turns from black to red and its microphone from silence to a tone at the same moment; the
recording is decrypted and decoded, and the two onsets are compared. The measured offset is
printed (see docs/archive-format.md, "Timing").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from recorder.seal.keyring import LocalKeyring
from recorder.seal.manifest import Manifest, SegmentEntry
from recorder.seal.signing import load_public_keys
from recorder.store.s3 import S3Archive
from recorder.verify import verify_archive
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_recording import _recorded, _stored
from tests.support import server as support
from tests.support.bot import Bot
from tests.support.server import RunningServer

MAX_OFFSET_MS = 120


class _KeepPlaintext:
    def __init__(self) -> None:
        self.data = bytearray()

    def begin_segment(self, segment: SegmentEntry) -> None:
        return None

    def write(self, plaintext: bytes) -> None:
        self.data += plaintext

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]:
        return []

    def end_archive(self, manifest: Manifest) -> list[str]:
        return []


def _onsets(path: str) -> tuple[float, float]:
    """(video ms, audio ms) of the first bright frame and the first loud sample."""
    video_ms = audio_ms = None
    with av.open(path) as container:
        camera = next(
            s for s in container.streams.video if s.metadata.get("title") == "customer camera"
        )
        for picture in container.decode(camera):
            if picture.to_ndarray(format="gray").mean() > 40:
                video_ms = _ms(picture.pts, picture.time_base)
                break
    with av.open(path) as container:
        microphone = next(
            s for s in container.streams.audio if s.metadata.get("title") == "customer microphone"
        )
        for sound in container.decode(microphone):
            samples = np.abs(sound.to_ndarray()).max(axis=0)
            loud = np.flatnonzero(samples > 0.05)
            if loud.size:
                audio_ms = _ms(sound.pts, sound.time_base) + loud[0] * 1000 / 48000
                break
    assert video_ms is not None and audio_ms is not None
    return video_ms, audio_ms


async def decrypt(server: RunningServer, archive: S3Archive) -> bytes:
    """A stored archive, verified and decrypted: the recording's WebM bytes."""
    keys = server.settings.data_dir / "keys"
    plaintext = _KeepPlaintext()
    report = await asyncio.to_thread(
        verify_archive,
        archive,
        load_public_keys(keys / "public"),
        keyring=LocalKeyring.open(keys / "keyring.json"),
        inspector=plaintext,
    )
    assert report.ok, report.render()
    return bytes(plaintext.data)


async def _decrypted(server: RunningServer, archive_id: str) -> Path:
    """The stored archive, verified and decrypted into a WebM file."""
    recording = server.settings.data_dir / f"{archive_id}.webm"
    recording.write_bytes(await decrypt(server, await _stored(server, archive_id)))
    return recording


def _ms(pts: int | None, time_base: Fraction | None) -> float:
    assert pts is not None and time_base is not None, "a decoded frame without a timestamp"
    return float(pts * time_base * 1000)


def _keyframes_ms(path: Path, title: str) -> list[int]:
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.metadata.get("title") == title)
        return [
            int(_ms(packet.pts, packet.time_base))
            for packet in container.demux(stream)
            if packet.size and packet.is_keyframe
        ]


async def test_audio_and_video_of_one_participant_stay_in_sync(server: RunningServer) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    customer = Bot(customer.client, session_id, colour="red", flash_at=time.monotonic() + 6)

    async def joined() -> None:
        await teller.join()
        await customer.join()

    # The flash is at 6 s, after a few sender reports.
    archive_id = await _recorded(server, teller, customer, lambda: asyncio.sleep(8), joined)
    recording = await _decrypted(server, archive_id)
    video_ms, audio_ms = await asyncio.to_thread(_onsets, str(recording))
    offset = video_ms - audio_ms
    print(f"lip-sync: video {video_ms:.0f} ms, audio {audio_ms:.0f} ms, offset {offset:+.0f} ms")
    assert abs(offset) <= MAX_OFFSET_MS


async def test_cameras_send_keyframes_regularly_and_when_a_moment_starts(tmp_path: Path) -> None:
    """So that playback and the face analysis reach any moment by decoding seconds, not the
    whole call (docs/archive-format.md, "Timing")."""
    settings = support.test_settings(tmp_path, recording_keyframe_seconds=2.0)
    async with support.running_server(settings) as server:
        teller, customer, _session_id = await _teller_and_customer(server)
        marks: list[int] = []

        async def joined() -> None:
            await teller.join()
            await customer.join()

        async def moment_after_5_s() -> None:
            await asyncio.sleep(5.3)
            await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
            marks.append(int((await teller.expect("marked"))["media_ms"]))
            await asyncio.sleep(2.5)

        archive_id = await _recorded(server, teller, customer, moment_after_5_s, joined)
        recording = await _decrypted(server, archive_id)
        marked_ms = marks[0]
        for camera in ("teller camera", "customer camera"):
            keyframes = _keyframes_ms(recording, camera)
            gaps = [b - a for a, b in itertools.pairwise(keyframes)]
            print(f"{camera}: keyframes at {keyframes} ms, mark at {marked_ms} ms")
            assert len(keyframes) >= 4 and max(gaps) < 3000, keyframes
            assert any(marked_ms <= ms < marked_ms + 1000 for ms in keyframes), keyframes
