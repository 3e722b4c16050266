"""Encoded forwarding (server/sfu/encoded.py): no transcoding, exact bitstream, keyframes.

Real aiortc peers in this process, on loopback only: host candidates are restricted to
127.0.0.1 and no ICE servers are configured, and every SDP exchanged is checked to carry
loopback candidates only. Topology: publisher pc (aiortc encodes VP8 + Opus) -> SFU pc
(tap_receiver) -> SFU pc (EncodedTrack + bind_sender) -> consumer pc (tapped too, so that the
test sees exactly the encoded frames that arrived).
"""

from __future__ import annotations

import asyncio
import fractions
import importlib.util
import itertools
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import aioice.ice
import aiortc
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc import clock as aiortc_clock
from aiortc.codecs.h264 import H264Encoder, h264_depayload
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket

from bench.loadgen import LayeredVp8Packetizer
from server.sfu import encoded
from server.sfu.encoded import (
    AIORTC_VERSION,
    AiortcVersionError,
    EncodedFrame,
    EncodedSource,
    EncodedTrack,
    bind_sender,
    check_aiortc_version,
    tap_receiver,
)

VIDEO_CLOCK = 90000
FPS = 20


def is_vp8_keyframe(data: bytes) -> bool:
    return len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice leaves out 127.0.0.1 and offers every interface: nothing may leave loopback.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@dataclass
class CodecSpy:
    """Who created encoders/decoders, and which encoder method ran how often."""

    decoders: int = 0
    encoders: list[tuple[Any, Any]] = field(default_factory=list)  # (sender, encoder)
    encode_calls: dict[int, int] = field(default_factory=dict)  # id(encoder) -> count
    pack_calls: dict[int, int] = field(default_factory=dict)
    # What the publishers' encoders produced: id(encoder) -> [(frame bytes, timestamp)]
    produced: dict[int, list[tuple[bytes, int]]] = field(default_factory=dict)

    def encoders_of(self, pc: RTCPeerConnection) -> list[Any]:
        senders = pc.getSenders()
        return [enc for snd, enc in self.encoders if any(snd is s for s in senders)]

    def produced_by(self, pc: RTCPeerConnection, kind: str) -> list[tuple[bytes, int]]:
        for snd, enc in self.encoders:
            if snd.kind == kind and any(snd is s for s in pc.getSenders()):
                return self.produced.get(id(enc), [])
        return []


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> CodecSpy:
    spy = CodecSpy()
    real_get_encoder = aiortc.rtcrtpsender.get_encoder  # type: ignore[attr-defined]
    real_get_decoder = aiortc.rtcrtpreceiver.get_decoder  # type: ignore[attr-defined]

    def get_encoder(codec: RTCRtpCodecParameters) -> Any:
        encoder = real_get_encoder(codec)
        caller = sys._getframe(1).f_locals.get("self")  # the RTCRtpSender asking
        assert isinstance(caller, RTCRtpSender)
        spy.encoders.append((caller, encoder))
        return encoder

    def get_decoder(codec: RTCRtpCodecParameters) -> Any:
        spy.decoders += 1
        return real_get_decoder(codec)

    def wrap(
        cls: type, name: str, counts: dict[int, int], depayload: Callable[[bytes], bytes]
    ) -> None:
        real = getattr(cls, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts[id(self)] = counts.get(id(self), 0) + 1
            payloads, timestamp = real(self, *args, **kwargs)
            if name == "encode" and payloads:
                # what a receiver's jitter buffer re-assembles: the depayloaded RTP payloads
                frame = b"".join(depayload(p) for p in payloads)
                spy.produced.setdefault(id(self), []).append((frame, timestamp))
            return payloads, timestamp

        monkeypatch.setattr(cls, name, method)

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", get_decoder)
    encoders = ((Vp8Encoder, vp8_depayload), (H264Encoder, h264_depayload), (OpusEncoder, bytes))
    for cls, depayload in encoders:
        wrap(cls, "encode", spy.encode_calls, depayload)
        wrap(cls, "pack", spy.pack_calls, depayload)
    return spy


# -- media and peers ------------------------------------------------------------------------


class PatternTrack(MediaStreamTrack):
    """Moving yuv420p pattern at FPS; aiortc's VP8 encoder makes a keyframe only at the start
    and on PLI/FIR (gop 3000), so keyframes after the first prove keyframe forwarding."""

    kind = "video"

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.width, self.height = width, height
        self._start: float | None = None
        self._n = 0
        yy, xx = np.mgrid[0 : height * 3 // 2, 0:width]
        self._base = (xx + yy).astype(np.uint8)

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._n += 1
            wait = self._start + self._n / FPS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.VideoFrame.from_ndarray(self._base + np.uint8(self._n * 3), format="yuv420p")
        frame.pts = self._n * VIDEO_CLOCK // FPS
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def assert_loopback_only(sdp: str) -> None:
    candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
    assert candidates
    for line in candidates:
        assert line.split()[4] == "127.0.0.1", line


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    assert_loopback_only(offerer.localDescription.sdp)
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    assert_loopback_only(answerer.localDescription.sdp)
    await offerer.setRemoteDescription(answerer.localDescription)


def receiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpReceiver:
    return next(r for r in pc.getReceivers() if r.track is track)


def sender_of(pc: RTCPeerConnection, kind: str) -> RTCRtpSender:
    return next(s for s in pc.getSenders() if s.kind == kind)


@dataclass
class Recorder:
    """FrameSink that records what a tapped consumer receiver re-assembled."""

    frames: list[tuple[EncodedFrame, float]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def push_frame(self, source: EncodedSource, frame: EncodedFrame) -> None:
        self.frames.append((frame, time.monotonic()))
        self.arrived.set()

    def source_closed(self, source: EncodedSource) -> None:
        pass

    def data(self) -> list[bytes]:
        return [f.data for f, _ in self.frames]

    def timestamps(self) -> list[int]:
        return [f.timestamp for f, _ in self.frames]


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Publisher:
    pc: RTCPeerConnection
    sfu_in: RTCPeerConnection
    sources: dict[str, EncodedSource]


def only(mime_type: str) -> list[RTCRtpCodecCapability]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in caps if c.mimeType in (mime_type, "video/rtx")]


async def publish(video: PatternTrack, audio: bool = True, codec: str | None = None) -> Publisher:
    """publisher pc -> SFU pc whose receivers are tapped."""
    pc, sfu_in = new_pc(), new_pc()
    transceiver = pc.addTransceiver(video, direction="sendonly")
    if codec is not None:
        transceiver.setCodecPreferences(only(codec))
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    sources: dict[str, EncodedSource] = {}

    @sfu_in.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        sources[track.kind] = tap_receiver(receiver_of(sfu_in, track), track)

    await negotiate(pc, sfu_in)
    assert set(sources) == ({"video", "audio"} if audio else {"video"})
    return Publisher(pc, sfu_in, sources)


@dataclass
class Consumer:
    sfu_out: RTCPeerConnection
    pc: RTCPeerConnection
    tracks: dict[str, EncodedTrack]
    recorders: dict[str, Recorder]
    sources: dict[str, EncodedSource]


async def consume(
    sources: dict[str, EncodedSource],
    before_connect: Callable[[RTCPeerConnection], Awaitable[None]] | None = None,
    codec: str | None = None,
) -> Consumer:
    """SFU pc sending EncodedTracks -> consumer pc whose receivers are tapped and recorded."""
    sfu_out, pc = new_pc(), new_pc()
    tracks: dict[str, EncodedTrack] = {}
    for kind, source in sources.items():
        track = source.subscribe()
        transceiver = sfu_out.addTransceiver(track, direction="sendonly")
        if codec is not None and kind == "video":
            # The consumer's leg must negotiate the publisher's codec: the sender only packs.
            transceiver.setCodecPreferences(only(codec))
        bind_sender(transceiver.sender, track)
        tracks[kind] = track
    recorders: dict[str, Recorder] = {}
    consumer_sources: dict[str, EncodedSource] = {}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        source = tap_receiver(receiver_of(pc, track), track)
        recorders[track.kind] = Recorder()
        source.add_sink(recorders[track.kind])
        consumer_sources[track.kind] = source

    await negotiate(sfu_out, pc)
    if before_connect is not None:
        await before_connect(sfu_out)
    return Consumer(sfu_out, pc, tracks, recorders, consumer_sources)


async def close_all(*pcs: RTCPeerConnection) -> None:
    await asyncio.gather(*(pc.close() for pc in pcs))


def find_run(sent: list[tuple[bytes, int]], got: list[bytes]) -> int:
    """Index k such that got == sent[k : k + len(got)] (bytes), or fail."""
    sent_data = [d for d, _ in sent]
    for k in range(len(sent_data) - len(got) + 1):
        if sent_data[k : k + len(got)] == got:
            return k
    raise AssertionError(f"{len(got)} received frames are not a contiguous run of those sent")


def decode_vp8(frames: list[bytes]) -> list[tuple[int, int]]:
    """Decode like a consumer would; returns the size of every decoded picture."""
    codec = av.CodecContext.create("libvpx", "r")
    sizes = []
    for data in frames:
        for picture in codec.decode(av.Packet(data)):
            sizes.append((picture.width, picture.height))
    return sizes


# -- end to end over loopback ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_forwards_exact_bitstream_without_transcoding_and_repairs_loss(
    spy: CodecSpy,
) -> None:
    pub = await publish(PatternTrack(320, 240))
    dropped: set[int] = set()
    seen: set[int] = set()
    retransmitted = 0

    async def lossy_video_leg(sfu_out: RTCPeerConnection) -> None:
        # Drop some first transmissions on the SFU -> consumer leg only: the consumer must get
        # them back by NACK from the SFU's sender (RTX), without the publisher's help.
        sender = sender_of(sfu_out, "video")
        transport: Any = sender.transport
        send_rtp = transport._send_rtp

        async def _send_rtp(data: bytes) -> None:
            nonlocal retransmitted
            if len(data) >= 12 and not 192 <= data[1] <= 208:  # RTP, not RTCP
                ssrc = int.from_bytes(data[8:12], "big")
                seq = int.from_bytes(data[2:4], "big")
                if ssrc == sender._rtx_ssrc:
                    retransmitted += 1
                elif ssrc == sender._ssrc and seq not in seen:
                    seen.add(seq)
                    if len(seen) % 13 == 7:
                        dropped.add(seq)
                        return
            await send_rtp(data)

        transport._send_rtp = _send_rtp

    con = await consume(pub.sources, before_connect=lossy_video_leg)
    try:
        await until(
            lambda: "video" in con.recorders and len(con.recorders["video"].frames) >= 50,
            timeout=15,
            what="50 forwarded video frames",
        )
        await asyncio.sleep(0.2)  # let audio catch up too

        # (1) no transcoding on the SFU: no decoder anywhere (every receiver is tapped), the
        # SFU's senders got aiortc encoder objects but only ever called pack().
        assert spy.decoders == 0
        sfu_encoders = spy.encoders_of(con.sfu_out)
        assert len(sfu_encoders) == 2
        for enc in sfu_encoders:
            assert spy.encode_calls.get(id(enc), 0) == 0
            assert spy.pack_calls.get(id(enc), 0) > 10
        vp8 = next(enc for enc in sfu_encoders if isinstance(enc, Vp8Encoder))
        assert vp8.codec is None  # libvpx was never even opened
        pub_encoders = spy.encoders_of(pub.pc)
        assert len(pub_encoders) == 2
        assert all(spy.encode_calls.get(id(enc), 0) > 10 for enc in pub_encoders)

        # (2) the consumer got exactly the publisher's frames, with the same timestamp spacing.
        for kind in ("video", "audio"):
            sent = spy.produced_by(pub.pc, kind)
            got = con.recorders[kind]
            k = find_run(sent, got.data())
            sent_ts = [ts for _, ts in sent[k : k + len(got.frames)]]
            got_ts = got.timestamps()
            assert [t - got_ts[0] for t in got_ts] == [t - sent_ts[0] for t in sent_ts], kind
        video = con.recorders["video"].data()
        assert is_vp8_keyframe(video[0])
        assert decode_vp8(video)[-1] == (320, 240)

        # NACK/RTX on the SFU -> consumer leg repaired the dropped packets (a packet dropped a
        # moment ago is repaired a round trip later).
        assert len(dropped) >= 3
        repaired = len(dropped)
        await until(
            lambda: retransmitted >= repaired, timeout=5, what="retransmissions of dropped packets"
        )

        # counters
        source = pub.sources["video"]
        assert source.packets_forwarded >= 50
        assert source.bytes_forwarded >= sum(len(d) for d in video)
        assert con.tracks["video"].frames_dropped == 0
    finally:
        await close_all(pub.pc, pub.sfu_in, con.sfu_out, con.pc)


@pytest.mark.asyncio
async def test_late_joiner_gets_keyframe_within_one_second(spy: CodecSpy) -> None:
    pub = await publish(PatternTrack(320, 240), audio=False)
    pli_at_publisher = 0
    pub_sender: Any = sender_of(pub.pc, "video")
    real_send_keyframe = pub_sender._send_keyframe

    def count_pli() -> None:
        nonlocal pli_at_publisher
        pli_at_publisher += 1
        real_send_keyframe()

    pub_sender._send_keyframe = count_pli
    source = pub.sources["video"]
    try:
        await until(lambda: source.frames_received >= 50, timeout=15, what="2.5 s of video")
        # aiortc's encoder makes keyframes only at start, on PLI/FIR, and when a REMB changes
        # the bitrate by >10 %: the joiner's keyframe must be a fresh one, made on request.
        sent_before_join = len(spy.produced_by(pub.pc, "video"))
        plis_before_join = pli_at_publisher

        t0 = time.monotonic()
        con = await consume({"video": source})
        t_negotiated = time.monotonic()
        await until(
            lambda: "video" in con.recorders and bool(con.recorders["video"].frames), 5, "video"
        )
        first, t_first = con.recorders["video"].frames[0]
        await until(lambda: len(con.recorders["video"].frames) >= 5, 5, "5 frames")
        decoded = decode_vp8(con.recorders["video"].data())
        t_total = t_first - t0
        print(f"late joiner: negotiated {t_negotiated - t0:.3f} s, first keyframe {t_total:.3f} s")

        assert first.keyframe and is_vp8_keyframe(first.data)
        assert decoded and decoded[0] == (320, 240)
        # From subscribe() (which includes this consumer's ICE + DTLS setup) to a picture.
        assert t_total < 1.0
        assert source.keyframe_requests >= 1
        assert pli_at_publisher > plis_before_join
        k = find_run(spy.produced_by(pub.pc, "video"), con.recorders["video"].data())
        assert k >= sent_before_join

        # A PLI from the consumer reaches the publisher through bind_sender (rate-limited).
        await asyncio.sleep(encoded.KEYFRAME_MIN_INTERVAL + 0.05)
        keyframes_before = sum(f.keyframe for f, _ in con.recorders["video"].frames)
        requests_before = source.keyframe_requests
        consumer_receiver: Any = next(r for r in con.pc.getReceivers() if r.track.kind == "video")
        await consumer_receiver._send_rtcp_pli(sender_of(con.sfu_out, "video")._ssrc)
        await until(
            lambda: sum(f.keyframe for f, _ in con.recorders["video"].frames) > keyframes_before,
            timeout=1.0,
            what="a keyframe after the consumer's PLI",
        )
        assert source.keyframe_requests == requests_before + 1
        assert spy.decoders == 0
        await close_all(con.sfu_out, con.pc)
    finally:
        await close_all(pub.pc, pub.sfu_in)


@pytest.mark.asyncio
async def test_switch_source_continues_with_keyframe_and_monotonic_timestamps(
    spy: CodecSpy,
) -> None:
    pub1 = await publish(PatternTrack(320, 240))
    pub2 = await publish(PatternTrack(240, 160))
    con = await consume(pub1.sources)
    try:

        def rec(kind: str) -> Recorder:
            return con.recorders[kind]

        await until(
            lambda: "video" in con.recorders and len(rec("video").frames) >= 20, 15, "video"
        )
        track = con.tracks["video"]
        # Publisher 1 "drops out": pause without ending, then continue from publisher 2.
        track.switch_source(None)
        con.tracks["audio"].switch_source(pub2.sources["audio"])
        paused_at = len(rec("video").frames)
        await asyncio.sleep(0.5)
        assert track.readyState == "live"
        # The consumer's jitter buffer releases a frame when the next one starts, so the last
        # frame of publisher 1 may still be held there: nothing else arrived during the pause.
        assert len(rec("video").frames) <= paused_at + 1
        track.switch_source(pub2.sources["video"])
        await until(lambda: len(rec("video").frames) >= paused_at + 15, 5, "frames of pub2")
        await asyncio.sleep(0.1)

        sent1 = spy.produced_by(pub1.pc, "video")
        sent2 = spy.produced_by(pub2.pc, "video")
        got = rec("video").data()
        from_pub2 = {d for d, _ in sent2}
        n_before = next(i for i, d in enumerate(got) if d in from_pub2)
        before, after = got[:n_before], got[n_before:]
        assert n_before >= paused_at
        find_run(sent1, before)
        k2 = find_run(sent2, after)
        assert is_vp8_keyframe(after[0]) and k2 > 0  # a requested keyframe, not pub2's first
        sizes = decode_vp8(got)  # one decoder over the whole stream, as a consumer would
        assert sizes[0] == (320, 240) and sizes[-1] == (240, 160)

        for kind in ("video", "audio"):
            ts = rec(kind).timestamps()
            steps = [b - a for a, b in itertools.pairwise(ts)]
            # The consumer's receiver would unwrap a backward jump into ~2**32.
            assert all(0 < s < 3 * VIDEO_CLOCK for s in steps), (kind, steps)
        video_ts = rec("video").timestamps()
        gap = video_ts[n_before] - video_ts[n_before - 1]
        assert 0.4 * VIDEO_CLOCK < gap < 2.5 * VIDEO_CLOCK  # the pause, in RTP time
        assert spy.decoders == 0
        assert all(spy.encode_calls.get(id(e), 0) == 0 for e in spy.encoders_of(con.sfu_out))
    finally:
        await close_all(pub1.pc, pub1.sfu_in, pub2.pc, pub2.sfu_in, con.sfu_out, con.pc)


@pytest.mark.asyncio
async def test_h264_when_negotiated(spy: CodecSpy) -> None:
    pub = await publish(PatternTrack(320, 240), audio=False, codec="video/H264")
    try:
        source = pub.sources["video"]
        await until(lambda: source.frames_received >= 20, 10, "1 s of H.264")
        assert source.mime_type == "video/h264"
        con = await consume({"video": source}, codec="video/H264")
        await until(
            lambda: "video" in con.recorders and len(con.recorders["video"].frames) >= 10, 5, "h264"
        )
        got = con.recorders["video"].data()
        k = find_run(spy.produced_by(pub.pc, "video"), got)
        assert k > 0 and con.recorders["video"].frames[0][0].keyframe  # an IDR made on request
        decoder = av.CodecContext.create("h264", "r")
        sizes = [(p.width, p.height) for d in got for p in decoder.decode(av.Packet(d))]
        assert sizes and sizes[0] == (320, 240)
        sfu_encoders = spy.encoders_of(con.sfu_out)
        assert [type(e) for e in sfu_encoders] == [H264Encoder]
        assert spy.encode_calls.get(id(sfu_encoders[0]), 0) == 0
        assert spy.decoders == 0
        await close_all(con.sfu_out, con.pc)
    finally:
        await close_all(pub.pc, pub.sfu_in)


@pytest.mark.asyncio
async def test_tap_after_the_receiver_started_decoding() -> None:
    # tap_receiver is meant for pc.on("track"), but a late tap must still work: the running
    # decoder thread exits, frames flow to the source, and closing does not hang.
    pc, sfu_in = new_pc(), new_pc()
    pc.addTrack(PatternTrack(320, 240))
    remote: list[MediaStreamTrack] = []
    sfu_in.on("track", remote.append)
    try:
        await negotiate(pc, sfu_in)
        await until(
            lambda: any(t.name == "video-decoder" for t in threading.enumerate()), 5, "decoder"
        )
        await asyncio.sleep(0.5)
        source = tap_receiver(receiver_of(sfu_in, remote[0]), remote[0])
        track = source.subscribe()
        first = await asyncio.wait_for(track.recv(), 2)
        assert first.is_keyframe and is_vp8_keyframe(bytes(first))
        assert source.keyframe_requests >= 1
        assert not any(t.name == "video-decoder" for t in threading.enumerate())
    finally:
        await asyncio.wait_for(close_all(pc, sfu_in), 5)


# -- version guard --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_version_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    assert aiortc.__version__ == AIORTC_VERSION
    check_aiortc_version()
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with pytest.raises(AiortcVersionError, match=r"1\.16\.0.*1\.17\.0"):
        check_aiortc_version()
    with pytest.raises(AiortcVersionError):
        tap_receiver(cast(Any, None), cast(Any, None))
    with pytest.raises(AiortcVersionError):
        bind_sender(cast(Any, None), cast(Any, None))
    # Importing the module fails too.
    spec = importlib.util.spec_from_file_location("encoded_copy", encoded.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(RuntimeError, match=r"aiortc 1\.16\.0 internals but aiortc 1\.17\.0"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.asyncio
async def test_missing_internal_fails_loudly() -> None:
    receiver = RTCRtpReceiver("video", cast(Any, SimpleNamespace(state="new")))
    track = RemoteStreamTrack(kind="video")
    receiver._track = track
    del receiver.__dict__["_RTCRtpReceiver__decoder_queue"]
    with pytest.raises(AiortcVersionError, match="__decoder_queue"):
        tap_receiver(receiver, track)


# -- queueing, keyframes and timestamps without a network -----------------------------------

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=97)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)
KEY = b"\x10\x02\x00\x9d\x01\x2a" + bytes(10)
DELTA = b"\x11" + bytes(15)


@dataclass
class Fake:
    """A receiver that never saw the network: frames are fed as aiortc's jitter buffer does."""

    receiver: Any
    source: EncodedSource
    plis: list[int]

    def feed(self, data: bytes, timestamp: int, codec: RTCRtpCodecParameters = VP8) -> None:
        self.receiver._RTCRtpReceiver__decoder_queue.put((codec, JitterFrame(data, timestamp)))


def fake_source(kind: str = "video") -> Fake:
    receiver: Any = RTCRtpReceiver(kind, cast(Any, SimpleNamespace(state="new")))
    track = RemoteStreamTrack(kind=kind)
    receiver._track = track
    source = tap_receiver(receiver, track)
    receiver._RTCRtpReceiver__active_ssrc[1234] = aiortc_clock.current_datetime()
    plis: list[int] = []

    async def send_pli(ssrc: int) -> None:
        plis.append(ssrc)

    receiver._send_rtcp_pli = send_pli
    return Fake(receiver, source, plis)


@pytest.mark.asyncio
async def test_keyframe_requests_are_rate_limited_and_coalesced() -> None:
    fake = fake_source()
    for _ in range(10):
        fake.source.request_keyframe()
    await asyncio.sleep(0.01)
    assert fake.plis == [1234]
    await asyncio.sleep(encoded.KEYFRAME_MIN_INTERVAL + 0.05)
    assert fake.plis == [1234, 1234]  # the nine others became one, at the interval's end
    assert fake.source.keyframe_requests == 2
    await asyncio.sleep(encoded.KEYFRAME_MIN_INTERVAL + 0.05)
    assert len(fake.plis) == 2


@pytest.mark.asyncio
async def test_subscriber_starts_on_keyframe_with_rebased_pts() -> None:
    fake = fake_source()
    fake.feed(KEY, 0)
    fake.feed(DELTA, 3000)
    track = fake.source.subscribe()
    fake.feed(DELTA, 6000)  # dropped: not a keyframe
    fake.feed(KEY, 9000)
    fake.feed(DELTA, 12000)
    first = await track.recv()
    second = await track.recv()
    assert bytes(first) == KEY and first.is_keyframe
    assert (first.pts, second.pts) == (0, 3000)
    assert first.time_base == fractions.Fraction(1, VIDEO_CLOCK)
    assert track.frames_dropped == 1
    assert fake.source.packets_forwarded == 2
    assert fake.source.bytes_forwarded == len(KEY) + len(DELTA)


@pytest.mark.asyncio
async def test_slow_consumer_overflow_waits_for_keyframe_without_blocking_others() -> None:
    fake = fake_source()
    slow = fake.source.subscribe(max_queue=4)
    fast = fake.source.subscribe(max_queue=4)
    fake.feed(KEY, 0)
    assert bytes(await fast.recv()) == KEY
    assert bytes(await slow.recv()) == KEY  # reading started, then it stalls
    for i in range(1, 8):
        fake.feed(DELTA, i * 3000)
        assert (await fast.recv()).pts == i * 3000
    # slow overflowed: its queue was emptied and it waits for a keyframe, which it requested
    await asyncio.sleep(0.01)
    assert fake.plis
    fake.feed(KEY, 8 * 3000)
    fake.feed(DELTA, 9 * 3000)
    packet = await slow.recv()
    assert bytes(packet) == KEY and packet.pts == 8 * 3000
    assert (await slow.recv()).pts == 9 * 3000
    assert slow.frames_dropped >= 4
    assert fast.frames_dropped == 0


@pytest.mark.asyncio
async def test_audio_overflow_drops_oldest() -> None:
    fake = fake_source("audio")
    track = fake.source.subscribe(max_queue=3)
    for i in range(5):
        fake.feed(bytes([i]), i * 960, OPUS)
    got = [bytes(await track.recv()) for _ in range(3)]
    assert got == [b"\x02", b"\x03", b"\x04"]
    assert track.frames_dropped == 2


@pytest.mark.asyncio
async def test_close_ends_tracks_but_upstream_end_only_pauses() -> None:
    fake = fake_source()
    track = fake.source.subscribe()
    ended: list[bool] = []
    fake.source.on("ended", lambda: ended.append(True))

    # The publisher's receiver stops (BYE, disconnect): source ends, its tracks pause.
    fake.receiver._RTCRtpReceiver__decoder_queue.put(None)
    assert fake.source.ended and ended == [True]
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.05)
    assert not pending.done() and track.readyState == "live"

    # ... and can continue from the publisher's new source.
    fake2 = fake_source()
    track.switch_source(fake2.source)
    fake2.feed(KEY, 5000)
    assert bytes(await pending) == KEY

    fake2.source.close()
    assert track.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()
    with pytest.raises(ValueError):
        fake2.source.subscribe()


async def recv_pts(track: EncodedTrack) -> int:
    pts = (await track.recv()).pts
    assert pts is not None
    return pts


@pytest.mark.asyncio
async def test_switch_rebases_pts_monotonically() -> None:
    a, b = fake_source(), fake_source()
    track = a.source.subscribe()
    a.feed(KEY, 900000)
    a.feed(DELTA, 903000)
    pts: list[int] = [await recv_pts(track), await recv_pts(track)]
    track.switch_source(b.source)
    await asyncio.sleep(0.01)
    assert b.plis  # the switch asked the new publisher for a keyframe
    b.feed(DELTA, 10)  # dropped: must start on a keyframe
    await asyncio.sleep(0.1)
    b.feed(KEY, 20)
    b.feed(DELTA, 3020)
    pts += [await recv_pts(track), await recv_pts(track)]
    assert pts[:2] == [0, 3000]
    assert 3000 + 0.08 * VIDEO_CLOCK < pts[2] < 3000 + 1.0 * VIDEO_CLOCK  # ~the time passed
    assert pts[3] - pts[2] == 3000
    with pytest.raises(ValueError):
        track.switch_source(fake_source("audio").source)


@pytest.mark.parametrize(
    ("payload", "layer"),
    [
        (b"\x10\x9d", None),  # no extension octet (aiortc's own packetizer without picture id)
        (b"\x90\x80\x85\x21\x9d", None),  # picture id only (aiortc's packetizer)
        (b"\x90\xa0\x05\x80\x9d", 2),  # 7-bit picture id, T
        (b"\x90\xe0\x81\x23\x07\x40\x9d", 1),  # 15-bit picture id, TL0PICIDX, T
        (b"\x90\x20\xc0", 3),  # T only
        (b"\x90\x20", None),  # truncated before the TID octet
        (b"\x90", None),
    ],
)
def test_vp8_descriptor_temporal_layer(payload: bytes, layer: int | None) -> None:
    assert encoded._vp8_temporal_layer(payload) == layer


@pytest.mark.asyncio
async def test_temporal_layer_of_each_frame_reaches_the_sinks() -> None:
    """A publisher's layered VP8 (as the load generator packetizes it, like a browser's L1T3)
    through a tapped receiver's jitter buffer: every frame says its layer, bitstream intact."""
    fake = fake_source()
    got: list[EncodedFrame] = []

    class Sink:
        def push_frame(self, source: EncodedSource, frame: EncodedFrame) -> None:
            got.append(frame)

        def source_closed(self, source: EncodedSource) -> None:
            pass

    fake.source.add_sink(Sink())
    jitter_buffer = fake.receiver._RTCRtpReceiver__jitter_buffer
    packetizer = LayeredVp8Packetizer()
    layers = [0, 2, 1, 2, 0, 2]
    frames = [KEY + bytes(3000)] + [b"\x11" + bytes(100 * i + 15) for i in range(1, 6)]
    sequence = 0
    for i, (data, layer) in enumerate(zip(frames, layers, strict=True)):
        packet = av.Packet(data)
        packet.pts, packet.time_base = i * 3000, fractions.Fraction(1, 90000)
        packet.opaque = layer
        payloads, timestamp = packetizer.pack(packet)
        assert len(payloads) == (3 if i == 0 else 1)
        for n, payload in enumerate(payloads):
            rtp = RtpPacket(
                payload_type=97,
                sequence_number=sequence,
                timestamp=timestamp,
                marker=n == len(payloads) - 1,
                payload=payload,
            )
            # What RTCRtpReceiver does before the buffer (an attribute it adds).
            rtp._data = vp8_depayload(payload)  # type: ignore[attr-defined]
            sequence += 1
            _, frame = jitter_buffer.add(rtp)
        assert frame is not None
        fake.receiver._RTCRtpReceiver__decoder_queue.put((VP8, frame))
    assert [f.data for f in got] == frames
    assert [f.temporal_layer for f in got] == layers
    assert got[0].keyframe and not got[1].keyframe
