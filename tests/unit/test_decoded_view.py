"""Decoded pictures beside the forwarding path (server/sfu/decoded.py).

Real VP8 (and H.264, where this PyAV can encode it) frames, each a solid colour, are pushed into
a DecodedView by a fake source, so every decoded picture can be checked against the frame it
came from. A gated decoder stands in where a test needs the decoder to fall behind on purpose.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import pytest
from av.video.codeccontext import VideoCodecContext

from server.sfu import decoded, encoded
from server.sfu.decoded import DecodedPicture, DecodedView, PictureUnavailable
from server.sfu.encoded import EncodedFrame, FrameSink

VIDEO_CLOCK = 90000
FRAME_TICKS = 3000  # 30 fps
WIDTH, HEIGHT = 320, 240
# BGR, far apart from each other so that a picture's colour names its frame.
COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (128, 128, 128),
    (255, 255, 255),
    (0, 0, 0),
    (40, 120, 200),
    (200, 120, 40),
    (120, 200, 40),
]


@dataclass
class Encoded:
    data: bytes
    keyframe: bool
    colour: tuple[int, int, int]


def encode(
    codec_name: str, count: int, keyframes: set[int], mime_type: str = "video/vp8"
) -> list[Encoded]:
    """Frame i is solid COLOURS[i % len]; frames in ``keyframes`` are forced keyframes."""
    codec = av.CodecContext.create(codec_name, "w")
    assert isinstance(codec, VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.bit_rate = 2_000_000
    codec.gop_size = 1000  # only the keyframes asked for
    if codec_name == "libvpx":
        # As aiortc and browsers encode: one packet per frame, out at once (no alt-ref).
        codec.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    else:
        codec.options = {"tune": "zerolatency", "preset": "ultrafast"}
        codec.profile = "Baseline"
    frames: list[Encoded] = []
    for i in range(count):
        colour = COLOURS[i % len(COLOURS)]
        image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        image[:] = colour
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = i
        frame.pict_type = (
            av.video.frame.PictureType.I if i in keyframes else av.video.frame.PictureType.NONE
        )
        packets = list(codec.encode(frame))
        assert len(packets) == 1, "the encoder must emit one packet per frame"
        data = bytes(packets[0])
        assert packets[0].is_keyframe == (i in keyframes)
        # The same detection EncodedSource applies to what it receives.
        assert encoded._is_keyframe(mime_type, data) == (i in keyframes)
        frames.append(Encoded(data, i in keyframes, colour))
    return frames


@dataclass
class FakeSource:
    """Stands in for an EncodedSource: feeds its sinks and counts keyframe requests."""

    mime_type: str = "video/vp8"
    sinks: list[FrameSink] = field(default_factory=list)
    keyframe_requests: int = 0

    def add_sink(self, sink: FrameSink) -> None:
        self.sinks.append(sink)

    def remove_sink(self, sink: FrameSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1

    def feed(
        self, frame: Encoded, index: int, *, data: bytes | None = None, layer: int | None = None
    ) -> None:
        encoded_frame = EncodedFrame(
            data=frame.data if data is None else data,
            timestamp=index * FRAME_TICKS,
            keyframe=frame.keyframe,
            mime_type=self.mime_type,
            clock_rate=VIDEO_CLOCK,
            temporal_layer=layer,
        )
        for sink in list(self.sinks):
            sink.push_frame(self, encoded_frame)  # type: ignore[arg-type]

    def close(self) -> None:
        for sink in list(self.sinks):
            sink.source_closed(self)  # type: ignore[arg-type]
        self.sinks.clear()


class GatedDecoder:
    """A real decoder that waits for ``gate`` before each frame: a decoder that fell behind."""

    def __init__(self, real: Any, gate: threading.Event, entered: threading.Event) -> None:
        self._real = real
        self._gate = gate
        self._entered = entered
        self.threads: list[threading.Thread] = []

    def decode(self, packet: av.Packet[Any]) -> Any:
        self.threads.append(threading.current_thread())
        self._entered.set()
        assert self._gate.wait(10), "test never opened the gate"
        return self._real.decode(packet)


@dataclass
class Gate:
    open: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    decoders: list[GatedDecoder] = field(default_factory=list)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 5), "decoder never started a frame"
        self.entered.clear()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    real_open = decoded._open_decoder

    def open_decoder(mime_type: str) -> Any:
        decoder = GatedDecoder(real_open(mime_type), gate.open, gate.entered)
        gate.decoders.append(decoder)
        return decoder

    monkeypatch.setattr(decoded, "_open_decoder", open_decoder)
    return gate


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def assert_colour(picture: DecodedPicture, colour: tuple[int, int, int]) -> None:
    image = picture.image
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    diff = np.abs(image.astype(np.int16) - np.array(colour, np.int16))
    # 4:2:0 and quantisation shift a solid colour by a few levels, never towards another one.
    assert diff.mean() < 8 and diff.max() < 40, f"{image.reshape(-1, 3).mean(0)} != {colour}"


# -- pictures -------------------------------------------------------------------------------


async def test_pictures_carry_their_frames_content_times_and_increasing_sequence() -> None:
    frames = encode("libvpx", 8, {0})
    source = FakeSource()
    async with DecodedView(source, max_fps=1000) as view:
        assert source.sinks == [view]
        for i, frame in enumerate(frames):
            before = time.monotonic()
            source.feed(frame, i)
            picture = await view.next_picture(timeout=5)
            assert_colour(picture, frame.colour)
            assert picture.sequence == i + 1  # every frame decoded, each one converted
            assert picture.media_time == pytest.approx(i * FRAME_TICKS / VIDEO_CLOCK)
            assert before <= picture.received_at <= time.monotonic()
            assert not picture.image.flags.writeable  # shared by every waiter
        assert view.frames_decoded == view.pictures == 8
        assert view.frames_dropped == 0 and view.decode_errors == 0


LAYERS = (0, 2, 1, 2)  # libvpx's 3-layer pattern (FFmpeg ts_layering_mode=3)


def encode_layered(count: int, *, resilient: bool = True) -> list[bytes]:
    """A moving texture in VP8's three temporal layers (as bench.clip and the pages' L1T3),
    frame i in layer LAYERS[i % 4]: every frame predicts from earlier ones, so a wrongly
    skipped frame would show. Error resilient, as WebRTC encodes layers: no frame carries
    entropy state to the next, so the base layer decodes alone."""
    codec = av.CodecContext.create("libvpx", "w")
    assert isinstance(codec, VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.bit_rate = 300_000
    codec.gop_size = 1000
    codec.options = {
        "deadline": "realtime",
        "lag-in-frames": "0",
        "cpu-used": "8",
        "ts-parameters": (
            "ts_number_layers=3:ts_target_bitrate=120,180,300:ts_rate_decimator=4,2,1:"
            "ts_periodicity=4:ts_layer_id=0,2,1,2:ts_layering_mode=3"
        ),
    }
    if resilient:
        codec.options = {**codec.options, "error-resilient": "default"}
    rng = np.random.default_rng(7)
    texture = rng.integers(0, 255, (HEIGHT + count * 2, WIDTH + count * 3, 3), dtype=np.uint8)
    out: list[bytes] = []
    for i in range(count):
        image = np.ascontiguousarray(texture[i * 2 : i * 2 + HEIGHT, i * 3 : i * 3 + WIDTH])
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = i
        out.extend(bytes(p) for p in codec.encode(frame))
    assert len(out) == count
    return out


def decode_every_frame(frames: list[bytes]) -> list[np.ndarray[Any, Any]]:
    """What a decoder that decodes every frame shows for each frame (BGR)."""
    full = av.CodecContext.create("vp8", "r")
    return [next(iter(full.decode(av.Packet(d)))).to_ndarray(format="bgr24") for d in frames]


async def test_top_temporal_layer_is_skipped_and_the_rest_decodes_exactly() -> None:
    frames = encode_layered(24)
    expected = decode_every_frame(frames)
    source = FakeSource()
    shown: list[int] = []
    async with DecodedView(source, max_fps=1000) as view:
        for i, data in enumerate(frames):
            before = view.frames_decoded
            source.feed(Encoded(data, i == 0, (0, 0, 0)), i)
            await until(
                functools.partial(lambda n: view.frames_decoded + view.frames_skipped == n, i + 1),
                5,
                f"frame {i}",
            )
            if view.frames_decoded > before:
                picture = await view.next_picture(timeout=5)
                # Bit-exact: a skipped frame was referenced by none of the frames decoded.
                assert np.array_equal(picture.image, expected[i]), f"frame {i} differs"
                shown.append(i)
        assert view.decode_errors == 0 and view.frames_dropped == 0
    # The top layer (every odd frame) updates no reference buffer.
    assert shown == list(range(0, 24, 2)) and view.frames_skipped == 12


async def test_base_layer_only_drops_upper_layers_before_decoding() -> None:
    frames = encode_layered(24)
    expected = decode_every_frame(frames)
    source = FakeSource()
    async with DecodedView(source, max_fps=1000, max_temporal_layer=0) as view:
        for i, data in enumerate(frames):
            source.feed(Encoded(data, i == 0, (0, 0, 0)), i, layer=LAYERS[i % 4])
            if LAYERS[i % 4] == 0:
                picture = await view.next_picture(timeout=5)
                assert np.array_equal(picture.image, expected[i]), f"frame {i} differs"
        assert view.frames_above_layer == 18 and view.frames_decoded == 6
        assert view.frames_skipped == 0 and view.decode_errors == 0 and view.frames_dropped == 0
        # A publisher without layers (no TID): every frame is decoded.
        for i, frame in enumerate(encode("libvpx", 3, {0})):
            source.feed(frame, 24 + i)
            assert_colour(await view.next_picture(timeout=5), frame.colour)


async def test_a_base_layer_that_does_not_decode_alone_makes_the_view_decode_every_layer() -> None:
    # Not error resilient: upper-layer frames carry entropy state the base layer then needs.
    frames = encode_layered(12, resilient=False)
    source = FakeSource()
    async with DecodedView(source, max_fps=1000, max_temporal_layer=0) as view:
        for i, data in enumerate(frames):
            source.feed(Encoded(data, i == 0, (0, 0, 0)), i, layer=LAYERS[i % 4])
        await until(lambda: view.decode_errors == 1, 5, "the base layer failing to decode")
        await until(lambda: view.frames_received == 12 and not view._queue, 5, "the first pass")
        above, done = view.frames_above_layer, view.frames_decoded + view.frames_skipped
        assert above == 9  # every upper frame arrived before the decoder saw the failure
        # From the next keyframe on, every layer is decoded (or skipped by the decoder as
        # referenced by none), and decodes.
        for i, data in enumerate(frames):
            source.feed(Encoded(data, i == 0, (0, 0, 0)), 12 + i, layer=LAYERS[i % 4])
        await until(
            lambda: view.frames_decoded + view.frames_skipped == done + 12, 5, "every frame"
        )
        assert view.frames_above_layer == above and view.decode_errors == 1


async def test_pictures_are_scaled_down_to_max_width() -> None:
    frames = encode("libvpx", 2, {0})
    source = FakeSource()
    async with DecodedView(source, max_fps=1000, max_width=160) as view:
        source.feed(frames[0], 0)
        picture = await view.next_picture(timeout=5)
    assert picture.image.shape == (HEIGHT // 2, WIDTH // 2, 3)
    diff = np.abs(picture.image.astype(np.int16) - np.array(frames[0].colour, np.int16))
    assert diff.mean() < 8
    with pytest.raises(ValueError, match="max_width"):
        DecodedView(source, max_width=1)


async def test_conversion_only_when_awaited_and_at_most_max_fps() -> None:
    frames = encode("libvpx", 12, {0})
    source = FakeSource()
    async with DecodedView(source, max_fps=10) as view:
        # Nobody waits: every frame is decoded (references must be kept), none converted.
        for i, frame in enumerate(frames[:6]):
            source.feed(frame, i)
        await until(lambda: view.frames_decoded == 6, 5, "6 decoded frames")
        await asyncio.sleep(0.05)
        assert view.pictures == 0

        # The next picture is the newest decoded frame, not the oldest one.
        picture = await view.next_picture(timeout=5)
        assert picture.sequence == 6
        assert_colour(picture, frames[5].colour)

        # A reader that keeps asking while frames arrive at 60 fps gets about 10 per second.
        async def feed_rest() -> None:
            for i in range(6, 12):
                source.feed(frames[i], i)
                await asyncio.sleep(1 / 60)

        feeder = asyncio.create_task(feed_rest())
        got: list[DecodedPicture] = []
        started = time.monotonic()
        while not feeder.done() or view.frames_decoded < 12:
            try:
                got.append(await view.next_picture(timeout=0.5))
            except TimeoutError:
                break
        elapsed = time.monotonic() - started
        await feeder
        assert got, "no picture while frames kept arriving"
        sequences = [p.sequence for p in got]
        assert sequences == sorted(set(sequences)) and sequences[0] > 6
        # The conversion before this loop counts against the same 100 ms budget.
        assert 1 + len(got) <= view.pictures <= elapsed * 10 + 2
        assert view.frames_decoded == 12


async def test_starts_on_the_first_keyframe_that_was_requested_on_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decoded, "KEYFRAME_RETRY_INTERVAL", 0.05)
    frames = encode("libvpx", 8, {0, 4})
    source = FakeSource()
    view = DecodedView(source, max_fps=1000)
    view.start()
    try:
        assert source.keyframe_requests == 1  # asked on start, not at the next natural one
        # Joined mid-stream: deltas 1..3 cannot be decoded without frame 0.
        source.feed(frames[1], 1)
        await asyncio.sleep(0.06)
        source.feed(frames[2], 2)  # still waiting: the request may have been lost, ask again
        source.feed(frames[3], 3)  # ... but not more often than the retry interval
        assert source.keyframe_requests == 2
        with pytest.raises(TimeoutError, match="none could be decoded yet"):
            await view.next_picture(timeout=0.1)
        source.feed(frames[4], 4)
        source.feed(frames[5], 5)
        await until(lambda: view.frames_decoded == 2, 5, "2 decoded frames")
        picture = await view.next_picture(timeout=5)
        assert_colour(picture, frames[5].colour)
        assert picture.sequence == 2
        assert view.frames_dropped == 3 and view.decode_errors == 0
    finally:
        await view.aclose()


async def test_overflow_drops_the_queue_and_waits_for_a_requested_keyframe(gate: Gate) -> None:
    frames = encode("libvpx", 10, {0, 7})
    source = FakeSource()
    async with DecodedView(source, max_fps=1000, max_queue=4) as view:
        requests = source.keyframe_requests
        source.feed(frames[0], 0)
        await gate.wait_entered()  # the decoder is stuck on frame 0
        pushes: list[float] = []
        for i in range(1, 7):  # 1-4 fill the queue, 5 overflows it, 6 is not a keyframe
            started = time.perf_counter()
            source.feed(frames[i], i)
            pushes.append(time.perf_counter() - started)
        # Waiting for the stuck decoder would take until the gate times out (10 s).
        assert max(pushes) < 0.05, "push_frame waited for the decoder"
        assert view.overflows == 1
        assert view.frames_dropped == 6  # 4 queued + 5 + 6
        assert source.keyframe_requests == requests + 1
        source.feed(frames[7], 7)
        source.feed(frames[8], 8)
        gate.open.set()
        await until(lambda: view.frames_decoded == 3, 5, "frames 0, 7 and 8 decoded")
        picture = await view.next_picture(timeout=5)
        assert_colour(picture, frames[8].colour)  # decoded on top of keyframe 7
        assert picture.sequence == 3
        assert view.decode_errors == 0
        # Decoding happens on the view's thread, never on the event loop.
        threads = {t for d in gate.decoders for t in d.threads}
        assert threads and threading.current_thread() not in threads


async def test_garbage_does_not_kill_the_decoder() -> None:
    frames = encode("libvpx", 10, {0, 4, 7})
    source = FakeSource()
    rng = np.random.default_rng(7)
    async with DecodedView(source, max_fps=1000) as view:
        source.feed(frames[0], 0)
        assert_colour(await view.next_picture(timeout=5), frames[0].colour)

        # A corrupt delta frame: dropped to the next keyframe, which is requested.
        requests = source.keyframe_requests
        source.feed(frames[1], 1, data=rng.integers(0, 256, 300, np.uint8).tobytes())
        await until(lambda: view.decode_errors == 1, 5, "a decode error")
        await until(lambda: source.keyframe_requests == requests + 1, 5, "a keyframe request")
        source.feed(frames[2], 2)  # valid, but its reference is gone: dropped
        source.feed(frames[3], 3)
        source.feed(frames[4], 4)
        await until(lambda: view.frames_decoded == 2, 5, "keyframe 4 decoded")
        assert_colour(await view.next_picture(timeout=5), frames[4].colour)

        # A hostile "keyframe" declaring 16000x16000 (MAX_PIXELS keeps FFmpeg from allocating
        # it: see test_pictures_above_max_pixels_are_refused).
        huge = bytearray(frames[7].data)
        huge[6:10] = (16000).to_bytes(2, "little") * 2
        source.feed(frames[5], 5, data=bytes(huge))
        await until(lambda: view.decode_errors == 2, 5, "a second decode error")
        source.feed(frames[7], 7)
        source.feed(frames[8], 8)
        await until(lambda: view.frames_decoded == 4, 5, "keyframe 7 and frame 8 decoded")
        picture = await view.next_picture(timeout=5)
        assert_colour(picture, frames[8].colour)
        assert picture.sequence == 4
        assert view.running
        assert view.frames_dropped == 2


async def test_decode_error_resumes_at_a_keyframe_already_queued(gate: Gate) -> None:
    frames = encode("libvpx", 6, {0, 3})
    source = FakeSource()
    async with DecodedView(source, max_fps=1000) as view:
        source.feed(frames[0], 0)
        await gate.wait_entered()
        gate.open.set()
        assert_colour(await view.next_picture(timeout=5), frames[0].colour)
        gate.open.clear()
        source.feed(frames[1], 1, data=b"\x11" + bytes(40))  # corrupt delta
        await gate.wait_entered()
        source.feed(frames[2], 2)  # queued behind it; depends on the lost reference
        source.feed(frames[3], 3)  # a keyframe already queued: no need to ask for one
        source.feed(frames[4], 4)
        requests = source.keyframe_requests
        gate.open.set()
        await until(lambda: view.frames_decoded == 3, 5, "frames 3 and 4 decoded")
        assert view.decode_errors == 1 and view.frames_dropped == 1
        assert source.keyframe_requests == requests
        assert_colour(await view.next_picture(timeout=5), frames[4].colour)


async def test_pictures_above_max_pixels_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoded, "MAX_PIXELS", WIDTH * HEIGHT - 1)
    frames = encode("libvpx", 2, {0, 1})
    source = FakeSource()
    async with DecodedView(source, max_fps=1000) as view:
        source.feed(frames[0], 0)
        await until(lambda: view.decode_errors == 1, 5, "the decoder refusing the frame")
        monkeypatch.setattr(decoded, "MAX_PIXELS", WIDTH * HEIGHT)
        source.feed(frames[1], 1)  # a fresh decoder, opened on the next keyframe
        assert_colour(await view.next_picture(timeout=5), frames[1].colour)
        assert view.frames_decoded == 1


# -- waiting and ending ---------------------------------------------------------------------


async def test_next_picture_times_out_with_a_reason() -> None:
    frames = encode("libvpx", 2, {0})
    source = FakeSource()
    async with DecodedView(source) as view:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no video frames arrived"):
            await view.next_picture(timeout=0.2)
        assert 0.15 < time.monotonic() - started < 1.0
        source.feed(frames[0], 0)
        await view.next_picture(timeout=5)
        with pytest.raises(TimeoutError, match="already returned"):
            await view.next_picture(timeout=0.2)  # the camera froze: nothing newer
        source.feed(frames[1], 1)
        assert_colour(await view.next_picture(timeout=5), frames[1].colour)


async def test_source_closed_ends_the_view() -> None:
    frames = encode("libvpx", 1, {0})
    source = FakeSource()
    view = DecodedView(source)
    view.start()
    waiting = asyncio.create_task(view.next_picture(timeout=10))
    await asyncio.sleep(0.05)
    source.close()
    with pytest.raises(PictureUnavailable, match="source was closed"):
        await waiting
    with pytest.raises(PictureUnavailable, match="source was closed"):
        await view.next_picture(timeout=10)
    assert view.closed
    source.feed(frames[0], 0)  # late frames are ignored
    await view.aclose()
    assert not view.running
    assert view.frames_received == 0


async def test_close_is_idempotent_and_the_thread_ends() -> None:
    frames = encode("libvpx", 3, {0})
    source = FakeSource()
    view = DecodedView(source)
    view.start()
    assert view.running
    for i, frame in enumerate(frames):
        source.feed(frame, i)
    await view.next_picture(timeout=5)
    waiting = asyncio.create_task(view.next_picture(timeout=10))
    await asyncio.sleep(0.01)
    view.close()
    view.close()
    assert source.sinks == []
    with pytest.raises(PictureUnavailable, match="view was closed"):
        await waiting
    await view.aclose()
    await view.aclose()
    assert not view.running
    with pytest.raises(PictureUnavailable):
        await view.next_picture(timeout=1)
    with pytest.raises(RuntimeError):
        view.start()

    async with DecodedView(source) as other:
        assert other.running
    assert not other.running and source.sinks == []


async def test_h264() -> None:
    frames = encode("libx264", 6, {0, 3}, mime_type="video/h264")
    source = FakeSource(mime_type="video/h264")
    async with DecodedView(source, max_fps=1000) as view:
        source.feed(frames[1], 1)  # before any keyframe: dropped
        for i in range(2, 6):
            source.feed(frames[i], i)
            if i >= 3:
                picture = await view.next_picture(timeout=5)
                assert_colour(picture, frames[i].colour)
                assert picture.sequence == i - 2
        assert view.frames_dropped == 2 and view.decode_errors == 0
