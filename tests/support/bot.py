"""A headless participant: speaks the signaling protocol and sends/receives media with aiortc.

It sends a solid colour and a sine tone, so a test can tell by colour and pitch whose media
arrived where; or, given a `FramesTrack`, camera images (an ID card, a turning face); given a
`WavTrack`, recorded speech on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import time
import wave
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from av import AudioFrame, AudioResampler, VideoFrame

from tests.support.server import ApiClient

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


class ColourTrack(VideoStreamTrack):
    """A solid colour; with `flash_at` (time.monotonic()), black until then.

    The flash is in the frame whose timestamp says it was captured at `flash_at` (not in the
    one generated then), as with a real camera, so a test process that falls behind real time
    does not move the flash against the tone.
    """

    def __init__(self, rgb: tuple[int, int, int], flash_at: float | None = None) -> None:
        super().__init__()
        self._image = np.full((240, 320, 3), rgb, dtype=np.uint8)
        self._dark = np.zeros((240, 320, 3), dtype=np.uint8)
        self._flash_at = flash_at
        self._origin: float | None = None  # time.monotonic() at pts 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        if self._origin is None:
            self._origin = time.monotonic() - float(pts * time_base)
        captured = self._origin + float(pts * time_base)
        dark = self._flash_at is not None and captured < self._flash_at
        frame = VideoFrame.from_ndarray(self._dark if dark else self._image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class FramesTrack(VideoStreamTrack):
    """A camera showing BGR images (ndarray, any size), looped at `fps` frames a second.

    Frames are picked by media time, not one per `recv`, so a sequence made for 15 fps plays at
    its own speed although the track runs at aiortc's 30 fps. `show` swaps what the camera shows,
    from the first of the new frames, while the track is live.

    With `rate`, the camera sends that many frames a second and, like a real one, skips the
    frames it is late for instead of bursting them: fewer VP8 encodes, and a test process that
    falls behind does not fall further behind (the bots and the server share one event loop).
    """

    def __init__(
        self, frames: Sequence[np.ndarray], fps: int = 15, rate: int | None = None
    ) -> None:
        super().__init__()
        self._fps = fps
        self._rate = rate
        self._started: float | None = None
        self._sent = -1  # index of the last frame sent, at `rate`
        self.show(frames)

    async def next_timestamp(self) -> tuple[int, fractions.Fraction]:
        if self._rate is None:
            return await super().next_timestamp()
        now = time.monotonic()
        if self._started is None:
            self._started = now
        self._sent = max(self._sent + 1, int((now - self._started) * self._rate))
        await asyncio.sleep(max(0.0, self._started + self._sent / self._rate - now))
        return self._sent * 90000 // self._rate, fractions.Fraction(1, 90000)

    def show(self, frames: Sequence[np.ndarray]) -> None:
        if not frames:
            raise ValueError("no frames to show")
        self._frames = list(frames)
        self._since: fractions.Fraction | None = None  # media time when they were first shown

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        # Exact fractions: in floats, frame k of 30 fps can land a hair before 15 fps frame k/2.
        now = pts * time_base
        if self._since is None:
            self._since = now
        image = self._frames[int((now - self._since) * self._fps) % len(self._frames)]
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(AudioStreamTrack):
    """A sine tone; with `flash_at` (time.monotonic()), silent until then (to the sample)."""

    RATE = 48000
    SAMPLES = 960  # 20 ms

    def __init__(self, hz: float, flash_at: float | None = None) -> None:
        super().__init__()
        self._hz = hz
        self._n = 0
        self._flash_at = flash_at
        self._started: float | None = None  # aiortc's AudioStreamTrack has its own _start

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._started is None:
            self._started = time.monotonic()
        # Paced by the sample count, so the stream does not drift from real time.
        due = self._started + (self._n + self.SAMPLES) / self.RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (np.arange(self.SAMPLES) + self._n) / self.RATE
        samples = (np.sin(2 * math.pi * self._hz * t) * 8000).astype(np.int16)
        if self._flash_at is not None:
            # Sample i was captured when the pacing says, however late it is generated (see
            # ColourTrack).
            captured = self._started + (self._n + np.arange(self.SAMPLES)) / self.RATE
            samples[captured < self._flash_at] = 0
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, self.RATE)
        self._n += self.SAMPLES
        return frame


class WavTrack(AudioStreamTrack):
    """A microphone that speaks WAV clips on cue: silence until `say`, then each queued clip in
    turn, each followed by `pause` seconds of silence, paced in real time like `ToneTrack`.

        mic = WavTrack()
        bot = Bot(client, session_id, audio=mic)
        mic.say("tests/fixtures/speech/teller_consent.wav")
        await mic.idle()  # the clip and its pause have been sent

    Clips are 16-bit PCM mono WAV at any rate, resampled to 48 kHz when queued.
    """

    RATE = 48000
    SAMPLES = 960  # 20 ms

    def __init__(self, pause: float = 0.5) -> None:
        super().__init__()
        self._pause = np.zeros(int(pause * self.RATE), dtype=np.int16)
        self._queue: deque[np.ndarray] = deque()
        self._offset = 0  # samples of the queue's first clip already sent
        self._n = 0
        self._started: float | None = None  # aiortc's AudioStreamTrack has its own _start
        self._idle = asyncio.Event()
        self._idle.set()

    def say(self, path: str | Path) -> None:
        """Queue a clip (and the pause after it); it starts as soon as what is queued has played."""
        with wave.open(str(path), "rb") as clip:
            if clip.getsampwidth() != 2 or clip.getnchannels() != 1:
                raise ValueError(f"{path}: 16-bit mono WAV expected")
            rate = clip.getframerate()
            pcm = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
        if rate != self.RATE:
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            resampler = AudioResampler(format="s16", layout="mono", rate=self.RATE)
            parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
            pcm = np.concatenate(parts).astype(np.int16)
        self._queue.append(np.concatenate([pcm.astype(np.int16), self._pause]))
        self._idle.clear()

    async def idle(self, timeout: float = 120.0) -> None:
        """Wait until every queued clip (with its pause) has been sent."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(self.SAMPLES, dtype=np.int16)
        filled = 0
        while filled < self.SAMPLES and self._queue:
            clip = self._queue[0]
            take = min(self.SAMPLES - filled, len(clip) - self._offset)
            out[filled : filled + take] = clip[self._offset : self._offset + take]
            filled += take
            self._offset += take
            if self._offset >= len(clip):
                self._queue.popleft()
                self._offset = 0
        if not self._queue:
            self._idle.set()
        return out

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._started is None:
            self._started = time.monotonic()
        # Paced by the sample count, so the stream does not drift from real time.
        due = self._started + (self._n + self.SAMPLES) / self.RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        samples = self._next_samples()
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, self.RATE)
        self._n += self.SAMPLES
        return frame


@dataclass
class Received:
    participant_id: str
    source: str
    kind: str
    frames: int = 0
    last_rgb: tuple[int, int, int] | None = None


@dataclass
class Bot:
    client: ApiClient
    session_id: str
    colour: str = "red"
    tone_hz: float = 440.0
    publish: bool = True
    flash_at: float | None = None  # black and silent until then (time.monotonic())
    video: MediaStreamTrack | None = None  # the camera instead of `colour` (flash_at not applied)
    audio: MediaStreamTrack | None = None  # the microphone instead of the tone (e.g. a WavTrack)
    messages: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    history: list[str] = field(default_factory=list)  # the type of every message received
    received: dict[str, Received] = field(default_factory=dict)
    participant_id: str = ""
    ws_url: str = ""  # the session's signaling URL (its worker's); default: the client's server
    ws: aiohttp.ClientWebSocketResponse | None = None
    pc: RTCPeerConnection | None = None
    # As a browser configures its RTCPeerConnection: from the last `joined`.
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    ice_transport_policy: str = "all"
    _tracks_by_mid: dict[str, dict[str, Any]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def connect(self) -> None:
        url = self.ws_url or self.client.ws_url(self.session_id)
        self.ws = await self.client.http.ws_connect(url)
        self._tasks.append(asyncio.create_task(self._read()))

    async def join(self) -> dict[str, Any]:
        await self.connect()
        await self.send({"type": "join"})
        joined = await self.expect("joined")
        self.participant_id = joined["participant_id"]
        self.ice_servers = joined["ice_servers"]
        self.ice_transport_policy = joined.get("ice_transport_policy", "all")
        return joined

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps({"v": 1, **message}))

    async def send_raw(self, raw: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(raw)

    async def expect(self, message_type: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of this type (others of other types are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                if message["type"] == message_type:
                    return message

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            self.history.append(message["type"])
            if message["type"] == "offer":
                await self._answer(message)
            await self.messages.put(message)
        await self.messages.put({"type": "closed", "code": self.ws.close_code})

    async def _answer(self, offer: dict[str, Any]) -> None:
        if self.pc is None:
            self.pc = RTCPeerConnection(
                RTCConfiguration(
                    iceServers=[RTCIceServer(**server) for server in self.ice_servers],
                    iceTransportPolicy=RTCIceTransportPolicy(self.ice_transport_policy),
                    bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
                )
            )
            self.pc.on("track", self._on_track)
        pc = self.pc
        for track in offer["tracks"]:
            self._tracks_by_mid[track["mid"]] = track
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        by_mid = {t.mid: t for t in pc.getTransceivers()}
        for slot in offer["publish"]:
            transceiver = by_mid[slot["mid"]]
            transceiver.direction = "sendonly"
            if self.publish and transceiver.sender.track is None:
                if slot["source"] == "camera":
                    track = (
                        self.video
                        if self.video is not None
                        else ColourTrack(COLOURS[self.colour], self.flash_at)
                    )
                    transceiver.sender.replaceTrack(track)
                elif slot["source"] == "microphone":
                    transceiver.sender.replaceTrack(
                        self.audio
                        if self.audio is not None
                        else ToneTrack(self.tone_hz, self.flash_at)
                    )
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send({"type": "answer", "sdp": pc.localDescription.sdp})

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        mid = next(t.mid for t in self.pc.getTransceivers() if t.receiver.track is track)
        info = self._tracks_by_mid.get(mid or "", {"participant_id": "?", "source": "?"})
        received = Received(info["participant_id"], info["source"], track.kind)
        self.received[f"{received.participant_id}/{received.source}"] = received
        self._tasks.append(asyncio.create_task(self._consume(track, received)))

    @staticmethod
    async def _consume(track: MediaStreamTrack, received: Received) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                received.frames += 1
                if isinstance(frame, VideoFrame) and received.frames % 5 == 0:
                    rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
                    received.last_rgb = (int(rgb[0]), int(rgb[1]), int(rgb[2]))

    async def wait_for_media(
        self, participant_id: str, source: str, frames: int = 10, timeout: float = 15.0
    ) -> Received:
        async with asyncio.timeout(timeout):
            while True:
                got = self.received.get(f"{participant_id}/{source}")
                if (
                    got is not None
                    and got.frames >= frames
                    and (got.kind == "audio" or got.last_rgb is not None)
                ):
                    return got
                await asyncio.sleep(0.1)

    async def close(self, *, leave: bool = False) -> None:
        if leave and self.ws is not None and not self.ws.closed:
            await self.send({"type": "leave"})
        if self.ws is not None:
            await self.ws.close()
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


def dominant(rgb: tuple[int, int, int]) -> str:
    return ["red", "green", "blue"][int(np.argmax(rgb))]
