"""One load-generator process: headless aiortc participants in two-party sessions.

Started by ``bench.media`` (never by hand), which talks to it with one JSON object per line:
it writes the configuration, then ``start``, ``stop`` and ``quit`` to standard input; this
process answers ``ready``, ``started`` and ``result`` on standard output (logs go to standard
error). The servers run in other processes, so the CPU this process burns is not counted as
server CPU.

Each participant sends a pre-encoded clip (``bench.clip``) from a track that returns
``av.Packet``: aiortc's sender then only packetizes, as with ``MediaPlayer(decode=False)``. What a
participant receives is counted from the encoded frames re-assembled by its ``RTCRtpReceiver``
(``server.sfu.encoded.tap_receiver``), so no decoder ever runs here. Both participants of a
session live in the same process, which lets a receiver look a forwarded VP8 frame up, byte for
byte, in its sender's send log: end-to-end delay without touching the bitstream (only possible
when the server forwards frames unchanged; the naive relay re-encodes them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.vpx import PACKET_MAX, Vp8Encoder, VpxPayloadDescriptor
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, convert_timebase

from bench.clip import AUDIO_RATE, AUDIO_SAMPLES, VIDEO_CLOCK, EncodedClip
from server.sfu.encoded import EncodedFrame, EncodedSource, tap_receiver
from server.sfu.ice_policy import IcePolicy

log = logging.getLogger("bench.loadgen")

# A sender that wakes up this late has fallen behind (the client process is overloaded): it
# shifts its schedule, like a camera that drops frames, instead of sending a burst. The shortfall
# then shows in its sent count and the round is marked client-limited, not blamed on the server.
MAX_LATE_SECONDS = 0.2
LOOP_LAG_INTERVAL = 0.1
_TIME_BASES = {
    "video": fractions.Fraction(1, VIDEO_CLOCK),
    "audio": fractions.Fraction(1, AUDIO_RATE),
}


def now() -> float:
    return time.monotonic()


class ReplayTrack(MediaStreamTrack):
    """Replays pre-encoded packets in a loop at their real rate; restarts at a keyframe on PLI."""

    def __init__(
        self,
        kind: str,
        packets: list[tuple[bytes, bool]],
        interval: float,
        step: int,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._packets = packets
        self._layers = layers  # temporal layer of each packet, for LayeredVp8Packetizer
        self._interval = interval  # seconds per packet
        self._step = step  # pts units per packet
        self._start: float | None = None
        self._n = 0  # packets sent; also the pts clock
        self._index = 0  # position in the clip
        self.sent = 0
        self.stalls = 0  # times the schedule had to be shifted (client too slow)
        self.keyframe_requests = 0
        # Send time of each clip position, for the receiver's end-to-end delay lookup.
        self.sent_at = [0.0] * len(packets)

    def request_keyframe(self) -> None:
        # What a live encoder does on PLI: the next frame is a keyframe. The clip's only keyframe
        # is its first frame, so restart there (the bitstream stays valid; pts keep increasing).
        if self.kind == "video":
            self.keyframe_requests += 1
            self._index = 0

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = now()
        target = self._start + self._n * self._interval
        late = now() - target
        if late < 0:
            await asyncio.sleep(-late)
        elif late > MAX_LATE_SECONDS:
            self._start += late
            self.stalls += 1
        data, keyframe = self._packets[self._index]
        packet = av.Packet(data)
        packet.pts = packet.dts = self._n * self._step
        packet.time_base = _TIME_BASES[self.kind]
        packet.is_keyframe = keyframe
        if self._layers is not None:
            packet.opaque = self._layers[self._index]
        self.sent_at[self._index] = now()
        self._index = (self._index + 1) % len(self._packets)
        self._n += 1
        self.sent += 1
        return packet


def forward_keyframe_requests(sender: RTCRtpSender, track: ReplayTrack) -> None:
    """Let PLI/FIR from the server reach the replaying track.

    aiortc 1.16.0 calls ``RTCRtpSender._send_keyframe()`` on PLI/FIR and only its own encoder
    looks at the flag it sets, so a packet-producing track never learns of the request (the same
    gap server/sfu/encoded.py bridges with ``bind_sender``). Without this, a receiver joining
    mid-clip would wait up to a whole clip loop for the next keyframe and distort time to
    first frame.
    """
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        track.request_keyframe()

    setattr(sender, "_send_keyframe", send_keyframe)  # noqa: B010 (method on this instance)


class LayeredVp8Packetizer(Vp8Encoder):
    """aiortc's VP8 packetizer, writing each frame's temporal layer into its RTP descriptor.

    A browser sending L1T3 marks every packet with the frame's layer (RFC 7741: T bit, TID,
    TL0PICIDX); aiortc's packetizer writes a picture id only. The SFU reads the layer to decode
    just the base layer for its live checks, so the simulated camera must say it too. The layer
    travels from :class:`ReplayTrack` in ``av.Packet.opaque``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tl0picidx = 0

    def pack(self, packet: av.Packet[Any]) -> tuple[list[bytes], int]:
        layer = packet.opaque if isinstance(packet.opaque, int) else 0
        if layer == 0:
            self._tl0picidx = (self._tl0picidx + 1) % 256
        # Y (layer sync) stays 0: no claim about what the frame refers to.
        descriptor = VpxPayloadDescriptor(
            partition_start=1,
            partition_id=0,
            picture_id=self.picture_id,
            tl0picidx=self._tl0picidx,
            tid=(layer, 0),
        )
        data = bytes(packet)
        payloads: list[bytes] = []
        pos = 0
        while pos < len(data):
            header = bytes(descriptor)
            size = min(len(data) - pos, PACKET_MAX - len(header))
            payloads.append(header + data[pos : pos + size])
            descriptor.partition_start = 0
            pos += size
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        assert packet.pts is not None  # ReplayTrack stamps every packet
        return payloads, convert_timebase(packet.pts, packet.time_base, VIDEO_TIME_BASE)


def send_temporal_layers(sender: RTCRtpSender) -> None:
    """Make a VP8 sender packetize with :class:`LayeredVp8Packetizer`.

    aiortc 1.16.0 creates a sender's encoder on its first frame unless one is already set
    (``_RTCRtpSender__encoder``); set before the first frame, it is the one used for packets.
    """
    name = "_RTCRtpSender__encoder"
    if getattr(sender, name, "missing") is not None:
        raise RuntimeError(f"aiortc's RTCRtpSender has no unused {name}: update bench/loadgen.py")
    setattr(sender, name, LayeredVp8Packetizer())


class Counter:
    """What one participant received of one kind (its peer's camera or microphone)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames = 0
        self.first_at: float | None = None
        self.on_first: Callable[[], None] | None = None
        self.measuring = False
        self.delays: list[float] = []  # end-to-end, video, while measuring
        self.unmatched = 0  # frames not found in the sender's log (re-encoded by the server)
        self.peer_track: ReplayTrack | None = None
        self.index_of: dict[bytes, int] = {}

    def count(self, data: bytes, completed: float) -> None:
        self.frames += 1
        if self.first_at is None:
            self.first_at = completed
            if self.on_first is not None:
                self.on_first()
        if self.measuring and self.peer_track is not None and self.kind == "video":
            index = self.index_of.get(data)
            if index is None:
                self.unmatched += 1
                return
            sent = self.peer_track.sent_at[index]
            if 0 <= completed - sent < 2.0:  # else: an earlier loop of the clip (not this send)
                self.delays.append(completed - sent)


class ReceiverSink:
    """A ``FrameSink`` on one tapped receiver: counts frames, never decodes them.

    For video it also notes when each frame's last packet (RTP marker bit) arrived. aiortc
    1.16.0's jitter buffer releases a frame only when the first packet of the *next* frame
    arrives, one frame interval (50 ms at 20 fps) after the frame was complete; a browser
    completes frames on the marker bit. Measuring to the marker packet leaves the client's own
    jitter buffer out of the end-to-end delay and time to first frame (the server's stays in).
    """

    def __init__(self, receiver: RTCRtpReceiver, counter: Counter) -> None:
        self.receiver = receiver
        self.counter = counter
        self.completed_at: dict[int, float] = {}  # RTP timestamp -> arrival of marker packet
        if counter.kind == "video":
            original = receiver._handle_rtp_packet

            async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
                if packet.marker:
                    self.completed_at.setdefault(packet.timestamp, now())
                await original(packet, arrival_time_ms)

            setattr(receiver, "_handle_rtp_packet", handle_rtp_packet)  # noqa: B010

    def push_frame(self, source: EncodedSource, frame: EncodedFrame) -> None:
        completed = self.completed_at.pop(self._rtp_timestamp(frame.timestamp), None)
        if len(self.completed_at) > 256:  # frames lost for good never come: forget them
            self.completed_at.clear()
        self.counter.count(frame.data, now() if completed is None else completed)

    def source_closed(self, source: EncodedSource) -> None:
        pass

    def _rtp_timestamp(self, mapped: int) -> int:
        # The receiver hands frames out with timestamps counted from its first frame
        # (aiortc's TimestampMapper); the marker hook saw the RTP header's own value.
        mapper = getattr(self.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        return mapped if origin is None else (mapped + origin) % (1 << 32)


@dataclass
class Participant:
    role: str
    http: aiohttp.ClientSession
    ws_url: str
    origin: str
    clip: EncodedClip
    index_of: dict[bytes, int]
    participant_id: str = ""
    ws: aiohttp.ClientWebSocketResponse | None = None
    pc: RTCPeerConnection | None = None
    errors: list[str] = field(default_factory=list)
    received: dict[str, Counter] = field(default_factory=dict)
    video: ReplayTrack | None = None
    audio: ReplayTrack | None = None
    peer: Participant | None = None
    sources: dict[str, str] = field(default_factory=dict)  # mid -> "camera", "screen", ...
    _joined: asyncio.Event = field(default_factory=asyncio.Event)
    recording: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.video = ReplayTrack(
            "video",
            self.clip.video,
            1 / self.clip.fps,
            VIDEO_CLOCK // self.clip.fps,
            layers=self.clip.video_layers,
        )
        self.audio = ReplayTrack(
            "audio",
            [(d, True) for d in self.clip.audio],
            AUDIO_SAMPLES / AUDIO_RATE,
            AUDIO_SAMPLES,
        )
        self.received = {"video": Counter("video"), "audio": Counter("audio")}
        self.received["video"].index_of = self.index_of

    async def join(self, within: float) -> None:
        self.ws = await self.http.ws_connect(self.ws_url, headers={"Origin": self.origin})
        self._reader = asyncio.create_task(self._read())
        await self.ws.send_str(json.dumps({"v": 1, "type": "join"}))
        async with asyncio.timeout(within):
            await self._joined.wait()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = message.get("type")
                if kind == "joined":
                    self.participant_id = message["participant_id"]
                    self._joined.set()
                elif kind == "offer":
                    try:
                        await self._answer(message)
                    except Exception as exc:
                        self.errors.append(f"answer failed: {exc!r}")
                elif kind == "consent_request":
                    # The customer agrees, as in a recorded sale.
                    await self.ws.send_str(json.dumps({"v": 1, "type": "consent", "granted": True}))
                elif kind == "recording" and message.get("state") == "recording":
                    self.recording.set()
                elif kind == "error":
                    self.errors.append(f"{message.get('code')}: {message.get('message')}")
        except Exception as exc:
            self.errors.append(f"signaling: {exc!r}")

    async def _answer(self, offer: dict[str, Any]) -> None:
        if self.pc is None:
            self.pc = RTCPeerConnection(
                RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
            )
            self.pc.on("track", self._on_track)
        pc = self.pc
        self.sources.update({t["mid"]: t["source"] for t in offer["tracks"]})
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        by_mid = {t.mid: t for t in pc.getTransceivers()}
        for slot in offer["publish"]:
            transceiver = by_mid[slot["mid"]]
            transceiver.direction = "sendonly"
            track = {"camera": self.video, "microphone": self.audio}.get(slot["source"])
            if track is not None and transceiver.sender.track is None:
                transceiver.sender.replaceTrack(track)
                forward_keyframe_requests(transceiver.sender, track)
                if track is self.video:
                    send_temporal_layers(transceiver.sender)
        await pc.setLocalDescription(await pc.createAnswer())
        assert self.ws is not None
        await self.ws.send_str(
            json.dumps({"v": 1, "type": "answer", "sdp": pc.localDescription.sdp})
        )

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        # Tapped before the receiver starts: its decoder thread then exits at once. Every
        # incoming track is tapped, including the teller's idle screen track, so nothing is
        # ever decoded here; only the peer's camera and microphone are counted.
        source = tap_receiver(transceiver.receiver, track)
        counted = {"camera": "video", "microphone": "audio"}.get(
            self.sources.get(transceiver.mid or "", ""), ""
        )
        if counted == track.kind:
            source.add_sink(ReceiverSink(transceiver.receiver, self.received[track.kind]))

    @property
    def has_media(self) -> bool:
        return all(c.first_at is not None for c in self.received.values())

    async def close(self, *, end: bool) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                if end:
                    await self.ws.send_str(json.dumps({"v": 1, "type": "end"}))
                await self.ws.close()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


@dataclass
class Session:
    index: int
    teller: Participant
    customer: Participant
    started_at: float = 0.0  # when the second participant sent join: media can start
    setup_error: str = ""


class Api:
    """A browser-like HTTP client of the real server: cookies, CSRF token, our Origin."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.csrf = ""
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": base}
        )

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf else {}
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            data = await response.json()
            if response.status != expect:
                raise RuntimeError(f"{method} {path}: {response.status} {data}")
            return data

    async def login(self, username: str, password: str) -> None:
        data = await self.call(
            "POST", "/api/v1/auth/login", {"username": username, "password": password}
        )
        self.csrf = data["csrf_token"]

    async def redeem(self, invitation_url: str) -> None:
        token = invitation_url.rsplit("/", 1)[1]
        self.csrf = (await self.call("POST", f"/api/v1/join/{token}"))["csrf_token"]

    def ws(self, ws_url: str) -> str:
        if ws_url.startswith("ws"):
            return ws_url
        return self.base.replace("http", "ws", 1) + ws_url


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class LoadGenerator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.clip = EncodedClip.load(Path(config["clip"]))
        self.index_of = {data: i for i, (data, _) in enumerate(self.clip.video)}
        self.sessions: list[Session] = []
        self.apis: list[Api] = []
        self.lags: list[float] = []
        self._measuring = False
        self._window: dict[str, Any] = {}
        self._media_arrived = asyncio.Event()  # set on every participant's first frames

    @property
    def participants(self) -> list[Participant]:
        return [p for s in self.sessions for p in (s.teller, s.customer)]

    async def setup(self) -> dict[str, Any]:
        cfg = self.config
        began = now()
        teller_api: Api | None = None
        plain = aiohttp.ClientSession()  # the naive relay has no accounts
        if cfg["target"] == "vteller":
            teller_api = Api(cfg["url"])
            self.apis.append(teller_api)
            await teller_api.login(cfg["username"], cfg["password"])
        gate = asyncio.Semaphore(cfg["concurrency"])

        async def one(index: int) -> None:
            async with gate:
                await self._setup_session(index, teller_api, plain)

        await asyncio.gather(*(one(cfg["first_index"] + i) for i in range(cfg["sessions"])))
        self._plain = plain
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg["ready_timeout"]):
                while not all(p.has_media for p in self.participants):
                    self._media_arrived.clear()
                    await self._media_arrived.wait()
        missing = [
            f"session {s.index} {p.role}: {s.setup_error or 'no media'} {p.errors[-1:]}"
            for s in self.sessions
            for p in (s.teller, s.customer)
            if not p.has_media
        ]
        return {"setup_seconds": round(now() - began, 2), "missing_media": missing}

    async def _setup_session(
        self, index: int, teller_api: Api | None, plain: aiohttp.ClientSession
    ) -> None:
        cfg = self.config
        origin = cfg["url"]
        if teller_api is not None:
            created = await teller_api.call(
                "POST",
                "/api/v1/invitations",
                {"business": "general", "customer_name": f"bench {index}"},
                expect=201,
            )
            customer_api = Api(cfg["url"])
            self.apis.append(customer_api)
            await customer_api.redeem(created["invitation_url"])
            ws_url = teller_api.ws(created["session"]["ws_url"])
            teller_http, customer_http = teller_api.http, customer_api.http
            teller_url = customer_url = ws_url
        else:
            base = cfg["url"].replace("http", "ws", 1) + f"/ws/v1/sessions/bench-{index}"
            teller_http = customer_http = plain
            teller_url, customer_url = base + "?role=teller", base + "?role=customer"
        teller = Participant("teller", teller_http, teller_url, origin, self.clip, self.index_of)
        customer = Participant(
            "customer", customer_http, customer_url, origin, self.clip, self.index_of
        )
        teller.peer, customer.peer = customer, teller
        for counter in (*teller.received.values(), *customer.received.values()):
            counter.on_first = self._media_arrived.set
        teller.received["video"].peer_track = customer.video
        customer.received["video"].peer_track = teller.video
        session = Session(index, teller, customer)
        self.sessions.append(session)
        try:
            await teller.join(30)
            session.started_at = now()
            await customer.join(30)
            if cfg.get("record"):
                assert teller.ws is not None
                await teller.ws.send_str(json.dumps({"v": 1, "type": "recording_start"}))
                async with asyncio.timeout(30):
                    await teller.recording.wait()
        except Exception as exc:
            session.setup_error = f"join failed: {exc!r}"

    async def measure_loop_lag(self) -> None:
        # The clients' own saturation: if this grows, the load generator is the bottleneck.
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LOOP_LAG_INTERVAL
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            if self._measuring:
                self.lags.append(max(0.0, loop.time() - expected))

    def snapshot(self) -> dict[int, dict[str, int]]:
        snap: dict[int, dict[str, int]] = {}
        for i, p in enumerate(self.participants):
            assert p.video is not None and p.audio is not None
            snap[i] = {
                "sent_video": p.video.sent,
                "sent_audio": p.audio.sent,
                "recv_video": p.received["video"].frames,
                "recv_audio": p.received["audio"].frames,
                "stalls": p.video.stalls + p.audio.stalls,
            }
        return snap

    def start(self) -> None:
        self._window = {"t": now(), "snap": self.snapshot()}
        for p in self.participants:
            p.received["video"].measuring = True
        self._measuring = True

    def stop(self) -> dict[str, Any]:
        seconds = now() - self._window["t"]
        end = self.snapshot()
        begin = self._window["snap"]
        self._measuring = False
        participants = []
        delays: list[float] = []
        unmatched = 0
        people = self.participants
        for i, p in enumerate(people):
            p.received["video"].measuring = False
            peer_index = people.index(p.peer) if p.peer is not None else i
            mine = {k: end[i][k] - begin[i][k] for k in end[i]}
            theirs = {k: end[peer_index][k] - begin[peer_index][k] for k in end[peer_index]}
            session = self.sessions[i // 2]
            first = p.received["video"].first_at
            participants.append(
                {
                    "session": session.index,
                    "role": p.role,
                    "sent_video": mine["sent_video"],
                    "sent_audio": mine["sent_audio"],
                    "recv_video": mine["recv_video"],
                    "recv_audio": mine["recv_audio"],
                    "peer_sent_video": theirs["sent_video"],
                    "peer_sent_audio": theirs["sent_audio"],
                    "stalls": mine["stalls"],
                    "first_frame_seconds": (
                        round(first - session.started_at, 4)
                        if first is not None and session.started_at
                        else None
                    ),
                    "errors": p.errors[-3:],
                }
            )
            delays.extend(p.received["video"].delays)
            unmatched += p.received["video"].unmatched
        return {
            "window_seconds": round(seconds, 3),
            "participants": participants,
            "e2e_delay_seconds": [round(d, 5) for d in delays],
            "e2e_unmatched_frames": unmatched,
            "client_loop_lag_p95": _quantile(self.lags, 0.95),
            "client_loop_lag_max": max(self.lags, default=None),
        }

    async def teardown(self) -> None:
        await asyncio.gather(
            *(p.close(end=p.role == "teller") for p in self.participants),
            return_exceptions=True,
        )
        for api in self.apis:
            await api.http.close()
        with contextlib.suppress(AttributeError):
            await self._plain.close()


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _command(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        return {"cmd": "quit"}  # the orchestrator went away
    result: dict[str, Any] = json.loads(line)
    return result


async def run() -> None:
    reader = await _lines()
    config = await _command(reader)
    # Lower priority than the server: when the shared cores saturate, the server keeps its share
    # and the clients fall behind first, which shows as client-limited rather than as loss
    # blamed on the server.
    os.nice(int(config.get("nice", 0)))
    # Same loopback-only rule as the servers: nothing in the benchmark leaves 127.0.0.1.
    IcePolicy.loopback().install()
    generator = LoadGenerator(config)
    lag = asyncio.create_task(generator.measure_loop_lag())
    try:
        emit({"event": "ready", "pid": os.getpid(), **await generator.setup()})
        while True:
            command = (await _command(reader))["cmd"]
            if command == "start":
                generator.start()
                emit({"event": "started"})
            elif command == "stop":
                emit({"event": "result", **generator.stop()})
            else:
                break
    finally:
        lag.cancel()
        await generator.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="One load-generator process of bench.media (reads its JSON configuration "
        "and commands on standard input); not meant to be run by hand.",
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
