"""Reused transceivers (server/sfu/peer.py): a slot freed by a departure carries the next one.

aiortc's RTCRtpSender reads its track in one RTP loop (`RTCRtpSender._run_rtp`), started once
per sender, which ends for good when `recv()` raises MediaStreamError: a consumer's track
stopped when its publisher left would leave a sender that sends nothing, whichever track is put
on it later. Seen in Chromium: an expert who left and came back was neither seen nor heard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import av
import pytest

from server.sfu.encoded import EncodedFrame, FrameSink
from server.sfu.ice_policy import IcePolicy
from server.sfu.peer import Peer


class _Camera:
    """The few parts of an EncodedSource a consumer's track uses."""

    kind = "video"
    closed = False
    mime_type = "video/vp8"

    def __init__(self) -> None:
        self.sinks: list[FrameSink] = []

    def add_sink(self, sink: FrameSink) -> None:
        self.sinks.append(sink)

    def remove_sink(self, sink: FrameSink) -> None:
        self.sinks.remove(sink)

    def request_keyframe(self) -> None:
        return None

    def _count_forwarded(self, size: int) -> None:
        return None

    def send(self, data: bytes, timestamp: int) -> None:
        frame = EncodedFrame(data, timestamp, True, "video/vp8", 90000)
        for sink in list(self.sinks):
            sink.push_frame(self, frame)  # type: ignore[arg-type]


@pytest.fixture
async def teller() -> AsyncIterator[Peer]:
    async def send(message: dict[str, Any]) -> None:
        return None

    peer = Peer(None, "p_t", ("microphone", "camera", "screen"), send, [], IcePolicy([]), "VP8")
    yield peer
    await peer.close()


async def _next_packet(reading: asyncio.Task[Any]) -> av.Packet[Any]:
    packet: av.Packet[Any] = await asyncio.wait_for(reading, 1.0)
    return packet


async def test_the_next_expert_on_a_freed_slot_reaches_the_consumer(teller: Peer) -> None:
    first_camera, second_camera = _Camera(), _Camera()
    first = teller.forward("p_e1", "camera", SimpleNamespace(encoded=first_camera))  # type: ignore[arg-type]
    sender = next(t.sender for t in teller.pc.getTransceivers() if t.sender.track is first)
    first_camera.send(b"first", 1000)
    before = await _next_packet(asyncio.ensure_future(sender.track.recv()))
    # What the sender's RTP loop does: wait for the next frame.
    reading = asyncio.ensure_future(sender.track.recv())
    await asyncio.sleep(0)

    assert teller.stop_forwarding("p_e1")
    assert teller.forwarded("p_e1", "camera") is None
    second = teller.forward("p_e2", "camera", SimpleNamespace(encoded=second_camera))  # type: ignore[arg-type]
    assert teller.forwarded("p_e2", "camera") is second
    assert len(teller.pc.getTransceivers()) == 4  # microphone, camera, screen, the reused slot
    second_camera.send(b"second", 5)

    packet = await _next_packet(reading)
    assert bytes(packet) == b"second"
    # One RTP stream on the sender: its timestamps go on, not back to where the first began.
    assert before.pts is not None and packet.pts is not None and packet.pts > before.pts
