"""Pictures of one participant's camera for analyzers, decoded beside the forwarding path.

The SFU forwards encoded media untouched (:mod:`server.sfu.encoded`). A few features need
pixels of one camera — the identity check captures an ID card and the customer's face and judges
head-turn liveness over about ten seconds. :class:`DecodedView` is a :class:`FrameSink` on that
camera's :class:`EncodedSource` that turns its frames into BGR pictures without ever making
forwarding wait.

Why a thread: ``push_frame`` runs on the event loop inside the publisher's RTP receive path, the
same path that feeds every consumer's sender. Decoding a frame costs milliseconds, more for a
large keyframe; done there, it would delay every forwarded packet of the room. So
``push_frame`` only appends the frame to a bounded queue (O(1), a lock held by either side for
a few list operations only, never while decoding) and a daemon thread of the view decodes with
PyAV, which releases the GIL inside FFmpeg. Consumers get pictures through
``loop.call_soon_threadsafe``, not by polling.

Why a bounded queue that drops to the next keyframe: when the decoder falls behind (a slow host,
a burst of large frames), a deeper queue would only make every picture staler — analyzers want
the present, not a backlog. On overflow the queue is emptied, and since delta frames are useless
without the frames they refer to, the view waits for the next keyframe and asks the publisher
for one (the source rate-limits those requests). Decoding likewise starts at the first keyframe,
and one is requested on :meth:`DecodedView.start` so that it begins promptly rather than at the
publisher's next keyframe, which a WebRTC sender may not produce until someone asks.

Why the decoder skips frames that nothing refers to: a delta frame must be decoded when a later
frame predicts from it, but a frame that updates none of VP8's reference buffers (last, golden,
alt-ref) is only ever shown. Browsers send a camera's VP8 in three temporal layers (vteller's
pages ask for ``L1T3``, what Chromium uses for its own simulcast), and then every other frame (the
top layer) is such a frame. FFmpeg's ``skip_frame = NONREF`` parses their headers (probability
updates included, so later frames still decode exactly) and skips the rest: analyzers get about
10 pictures a second of a 20 fps camera for half the decoding. A stream without layers has no
such frames and is decoded whole, as before. A view that needs even fewer pictures (the live
face checks: one a second) passes ``max_temporal_layer=0``: frames the publisher marks as an
upper layer (``EncodedFrame.temporal_layer``, from the RTP descriptor) are dropped before they
are queued, since base-layer frames never refer to them, and a 20 fps camera costs 5 decoded
frames a second and as many wake-ups of the thread. The descriptor is the publisher's word:
should its base layer fail to decode alone (a sender that carries entropy state across layers),
the view logs it once and decodes every layer from the next keyframe on.

Why conversion is bounded: every referenced frame must be decoded to keep the reference chain,
but turning one into a BGR array is another full-frame pass and allocation, and analyzers look
at a few pictures per second. The thread keeps only the latest decoded ``av.VideoFrame``, and
converts it only while someone awaits :meth:`DecodedView.next_picture`, at most ``max_fps``
times per second, scaled down to ``max_width`` in the same pass when the caller needs no more
(the live face checks count faces at 320 px).

Decode errors (corrupt or truncated frames, a decoder that refuses the stream) never end the
thread: the decoder is dropped, the view skips to the next keyframe (one already queued, or a
requested one) and opens a fresh decoder on it. Because the customer's stream is untrusted, the
decoder refuses pictures larger than ``MAX_PIXELS`` before allocating them.

Use::

    async with DecodedView(camera_source, max_fps=10, max_width=640) as view:
        picture = await view.next_picture(timeout=5.0)  # TimeoutError: camera off?
        analyze(picture.image)                           # HxWx3 uint8 BGR, read-only

When the source is closed, waiting and later :meth:`DecodedView.next_picture` calls raise
:class:`PictureUnavailable`. A publisher that merely went away (its source *ended*, to be
replaced on reconnection) sends nothing more, which callers see as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt
import structlog
from av.codec.context import ThreadType
from av.video.codeccontext import VideoCodecContext

from server.sfu.encoded import KEYFRAME_RETRY_INTERVAL, EncodedFrame, FrameSink

__all__ = [
    "DEFAULT_MAX_FPS",
    "DEFAULT_MAX_QUEUE",
    "MAX_PIXELS",
    "DecodedPicture",
    "DecodedView",
    "PictureSource",
    "PictureUnavailable",
]

DEFAULT_MAX_FPS = 10.0
# Encoded frames waiting for the decoder: about half a second of 30 fps video. Anything deeper
# would mean the decoder cannot keep up, and older pictures are worth nothing to an analyzer.
DEFAULT_MAX_QUEUE = 15
# Largest picture the decoder may allocate (4K UHD). A customer's stream is untrusted: a crafted
# keyframe may declare 16383x16383, which FFmpeg would otherwise allocate before decoding.
MAX_PIXELS = 3840 * 2160

# FFmpeg decoders per codec, best first: FFmpeg's own VP8 decoder is faster than libvpx.
_DECODERS: dict[str, tuple[str, ...]] = {
    "video/vp8": ("vp8", "libvpx"),
    "video/h264": ("h264",),
}

log = structlog.get_logger(__name__)


class PictureUnavailable(RuntimeError):
    """No more pictures will come from this view (its source or the view was closed)."""


class PictureSource(Protocol):
    """What :class:`DecodedView` needs of an :class:`~server.sfu.encoded.EncodedSource`."""

    def add_sink(self, sink: FrameSink) -> None: ...

    def remove_sink(self, sink: FrameSink) -> None: ...

    def request_keyframe(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DecodedPicture:
    """One decoded camera picture.

    ``image`` is shared by every caller that receives this picture, so it is read-only; copy it
    before drawing on it.
    """

    image: npt.NDArray[np.uint8]  # height x width x 3, BGR
    media_time: float  # seconds: EncodedFrame.timestamp / clock_rate of its encoded frame
    received_at: float  # time.monotonic() when its encoded frame arrived at the SFU
    # Frames this view has decoded up to and including this one: increasing, and a gap counts
    # decoded frames that nobody was waiting for (not converted).
    sequence: int


@dataclass(frozen=True, slots=True)
class _Arrival:
    """Travels with a frame through the decoder (``Packet.opaque`` -> ``VideoFrame.opaque``)."""

    media_time: float
    received_at: float


class DecodedView:
    """Decoded BGR pictures of one video source, at a bounded rate (see the module docstring).

    Implements :class:`~server.sfu.encoded.FrameSink`. Create and use it on the event loop:
    :meth:`start` (or ``async with``), :meth:`next_picture`, :meth:`close` / :meth:`aclose`.
    """

    def __init__(
        self,
        source: PictureSource,
        *,
        max_fps: float = DEFAULT_MAX_FPS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_width: int | None = None,
        max_temporal_layer: int | None = None,
    ) -> None:
        if not max_fps > 0:
            raise ValueError("max_fps must be positive")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_width is not None and max_width < 2:
            raise ValueError("max_width must be at least 2 pixels")
        self._source = source
        self._interval = 1.0 / max_fps
        self._max_queue = max_queue
        self._max_width = max_width
        # Written by the decoding thread (to None) when the base layer fails to decode alone.
        self._max_layer = max_temporal_layer
        # Counters for metrics and for saying why a wait timed out.
        self.frames_received = 0  # encoded frames pushed by the source
        self.frames_dropped = 0  # never decoded: before a keyframe, overflow, after an error
        self.frames_decoded = 0  # pictures out of the decoder (the sequence numbers)
        self.frames_skipped = 0  # referenced by no other frame: parsed, not decoded
        self.frames_above_layer = 0  # of a temporal layer above max_temporal_layer: not queued
        self.pictures = 0  # conversions to BGR
        self.overflows = 0
        self.decode_errors = 0
        self.keyframe_requests = 0  # asked of the source (which may coalesce them)

        # Event loop side only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._failure: str | None = None  # why next_picture raises PictureUnavailable
        self._waiters: list[asyncio.Future[DecodedPicture]] = []
        self._returned = 0  # sequence of the last picture next_picture returned
        self._last_request = -KEYFRAME_RETRY_INTERVAL
        self._unsupported_logged = False
        self._thread_done: asyncio.Future[None] | None = None

        # Shared with the decoding thread: guarded by _cond, which neither side holds for longer
        # than a few list operations.
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[EncodedFrame, float]] = deque()
        self._waiting_keyframe = True
        self._wanted = False  # someone awaits a picture newer than _picture
        self._picture: DecodedPicture | None = None
        self._stopping = False

        # Decoding thread only.
        self._codec: VideoCodecContext | None = None
        self._codec_mime: str | None = None
        self._latest: av.VideoFrame | None = None  # newest decoded frame not yet converted
        self._last_conversion = -float("inf")
        self._thread = threading.Thread(target=self._run, name="decoded-view", daemon=True)

    # -- lifecycle (event loop) -------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the source, start decoding, and ask for a keyframe to begin on."""
        if self._started:
            raise RuntimeError("DecodedView already started")
        if self._closed:
            raise RuntimeError("DecodedView is closed")
        loop = asyncio.get_running_loop()
        self._source.add_sink(self)  # raises if the source is closed: nothing to undo yet
        self._loop = loop
        self._thread_done = loop.create_future()
        self._started = True
        self._thread.start()
        self._request_keyframe()

    def close(self) -> None:
        """Unsubscribe and stop the thread (without waiting for it: see :meth:`aclose`).

        Waiting and later :meth:`next_picture` calls raise :class:`PictureUnavailable`.
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._failure is None:
            self._failure = "the decoded view was closed"
        if self._started:
            self._source.remove_sink(self)
        with self._cond:
            self._stopping = True
            self.frames_dropped += len(self._queue)
            self._queue.clear()
            self._cond.notify()
        self._fail_waiters()

    async def aclose(self) -> None:
        """:meth:`close`, then wait (without blocking the loop) until the thread has ended."""
        self.close()
        if self._thread_done is not None:
            # shield: a caller cancelled while waiting must not spoil the others' wait.
            await asyncio.shield(self._thread_done)
            # The thread's last act was scheduling that result: only its return is left.
            self._thread.join()

    async def __aenter__(self) -> DecodedView:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        """True while the decoding thread is alive."""
        return self._thread.is_alive()

    # -- consumers (event loop) -------------------------------------------------------------

    # A plain `timeout` argument (ASYNC109): the error then says how long it waited and why
    # nothing came (camera off, no keyframe yet), which a caller's timeout scope cannot.
    async def next_picture(self, timeout: float) -> DecodedPicture:  # noqa: ASYNC109
        """The first picture newer than the last one this method returned.

        Concurrent callers waiting at the same time all receive the same picture. Raises
        :class:`TimeoutError` if none is decoded within ``timeout`` seconds, and
        :class:`PictureUnavailable` once the view or its source is closed.
        """
        if self._failure is not None:
            raise PictureUnavailable(self._failure)
        if not self._started or self._loop is None:
            raise RuntimeError("DecodedView not started: call start() first")
        with self._cond:
            picture = self._picture
            if picture is None or picture.sequence <= self._returned:
                picture = None
                self._wanted = True
                self._cond.notify()
        if picture is None:
            waiter: asyncio.Future[DecodedPicture] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    picture = await waiter
            except TimeoutError:
                raise TimeoutError(self._timeout_message(timeout)) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                if not self._waiters:
                    with self._cond:
                        self._wanted = False  # nobody is looking: stop converting
        self._returned = max(self._returned, picture.sequence)
        return picture

    # -- FrameSink (event loop, inside the RTP receive path: O(1), never blocks) ----------------

    def push_frame(self, source: object, frame: EncodedFrame) -> None:
        if source is not self._source or self._closed or not self._started:
            return
        self.frames_received += 1
        layer = frame.temporal_layer
        if layer is not None and self._max_layer is not None and layer > self._max_layer:
            self.frames_above_layer += 1
            return
        received_at = time.monotonic()
        if frame.mime_type not in _DECODERS:
            self._unsupported(frame.mime_type)
            return
        request = False
        with self._cond:
            if self._waiting_keyframe and not frame.keyframe:
                self.frames_dropped += 1
                # The request or the keyframe itself may have been lost upstream: ask again.
                request = received_at - self._last_request >= KEYFRAME_RETRY_INTERVAL
            else:
                self._waiting_keyframe = False
                if len(self._queue) >= self._max_queue:
                    # The decoder is behind: what is queued would only be stale pictures.
                    self.overflows += 1
                    self.frames_dropped += len(self._queue)
                    self._queue.clear()
                    if not frame.keyframe:
                        self.frames_dropped += 1
                        self._waiting_keyframe = True
                        request = True
                if not self._waiting_keyframe:
                    self._queue.append((frame, received_at))
                    self._cond.notify()
        if request:
            self._request_keyframe()

    def source_closed(self, source: object) -> None:
        if source is not self._source:
            return
        if self._failure is None:
            self._failure = "the video source was closed (participant left?)"
        self.close()

    # -- event loop internals -----------------------------------------------------------------

    def _request_keyframe(self) -> None:
        if self._closed:
            return
        self._last_request = time.monotonic()
        self.keyframe_requests += 1
        self._source.request_keyframe()

    def _deliver(self) -> None:
        with self._cond:
            picture = self._picture
        if picture is None:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(picture)

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(PictureUnavailable(self._failure or "closed"))

    def _thread_ended(self) -> None:
        if self._thread_done is not None and not self._thread_done.done():
            self._thread_done.set_result(None)

    def _unsupported(self, mime_type: str) -> None:
        with self._cond:
            self.frames_dropped += 1
        if not self._unsupported_logged:
            self._unsupported_logged = True
            log.warning("decoded_view_unsupported_codec", mime_type=mime_type)

    def _timeout_message(self, timeout: float) -> str:
        if self.frames_received == 0:
            why = "no video frames arrived (is the camera off or not published?)"
        elif self.frames_decoded == 0:
            why = (
                f"{self.frames_received} frames arrived but none could be decoded yet "
                f"(waiting for a keyframe; {self.keyframe_requests} requested)"
            )
        else:
            why = f"the last of {self.frames_decoded} decoded pictures was already returned"
        return f"no new decoded picture within {timeout:g} s: {why}"

    # -- decoding thread ----------------------------------------------------------------------

    def _call_soon(self, callback: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop is closed, nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    def _conversion_wait(self, now: float) -> float | None:
        """Seconds until the latest frame may be converted; None if it need not be."""
        if not self._wanted or self._latest is None:
            return None
        return max(0.0, self._last_conversion + self._interval - now)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._queue:
                        wait = self._conversion_wait(time.monotonic())
                        if wait == 0.0:
                            break
                        self._cond.wait(wait)
                    if self._stopping:
                        return
                    item = self._queue.popleft() if self._queue else None
                    convert = self._conversion_wait(time.monotonic()) == 0.0
                if item is not None:
                    self._decode(*item)
                    # Decode first: the frame just decoded is the one worth converting.
                    convert = convert or self._conversion_wait(time.monotonic()) == 0.0
                if convert:
                    self._convert()
        finally:
            self._codec = None
            self._latest = None
            self._call_soon(self._thread_ended)

    def _decode(self, frame: EncodedFrame, received_at: float) -> None:
        try:
            if self._codec is None or self._codec_mime != frame.mime_type:
                self._codec = _open_decoder(frame.mime_type)
                self._codec_mime = frame.mime_type
            packet = av.Packet(frame.data)
            packet.pts = frame.timestamp
            packet.opaque = _Arrival(frame.timestamp / frame.clock_rate, received_at)
            decoded = self._codec.decode(packet)
        except Exception as exc:
            # Corrupt or hostile data (or an undecodable stream) must not end the view.
            self.decode_errors += 1
            self._codec = None  # a fresh decoder on the next keyframe: no damaged state
            if self._max_layer is not None and frame.temporal_layer is not None:
                # Maybe a frame this view dropped was needed after all: stop dropping.
                self._max_layer = None
                log.warning("decoded_view_layers_not_independent", mime_type=frame.mime_type)
            # A hostile publisher can make every frame fail: log the first few, then a sample.
            if self.decode_errors <= 3 or self.decode_errors % 100 == 0:
                log.warning(
                    "decoded_view_decode_error",
                    mime_type=frame.mime_type,
                    keyframe=frame.keyframe,
                    errors=self.decode_errors,
                    error=str(exc),
                )
            self._resync()
            return
        if not decoded:
            self.frames_skipped += 1  # a non-reference frame (the decoder holds none back)
        for picture in decoded:
            self.frames_decoded += 1
            self._latest = picture

    def _resync(self) -> None:
        """After a decode error: continue at a queued keyframe, else wait for a requested one."""
        with self._cond:
            while self._queue and not self._queue[0][0].keyframe:
                self._queue.popleft()
                self.frames_dropped += 1
            if not self._queue:
                self._waiting_keyframe = True
                request = True
            else:
                request = False
        if request:
            self._call_soon(self._request_keyframe)

    def _convert(self) -> None:
        frame = self._latest
        if frame is None:
            return
        self._latest = None
        self._last_conversion = time.monotonic()
        arrival = frame.opaque
        if not isinstance(arrival, _Arrival):
            arrival = _Arrival(float("nan"), float("nan"))  # never: every packet carries one
        width, height = frame.width, frame.height
        if self._max_width is not None and width > self._max_width:
            # Even dimensions: what swscale converts without a ragged chroma edge.
            height = max(2, round(height * self._max_width / width / 2) * 2)
            width = self._max_width - self._max_width % 2
        try:
            # One swscale pass scales and converts (a separate resize would be a second pass).
            image = np.ascontiguousarray(
                frame.to_ndarray(width=width, height=height, format="bgr24", interpolation="AREA"),
                dtype=np.uint8,
            )
        except Exception as exc:
            log.warning("decoded_view_conversion_error", error=str(exc))
            return
        # Every waiter gets the same array: nobody may change it under the others.
        image.flags.writeable = False
        picture = DecodedPicture(
            image=image,
            media_time=arrival.media_time,
            received_at=arrival.received_at,
            sequence=self.frames_decoded,
        )
        self.pictures += 1
        with self._cond:
            self._picture = picture
            self._wanted = False
        self._call_soon(self._deliver)


def _open_decoder(mime_type: str) -> VideoCodecContext:
    names = [name for name in _DECODERS[mime_type] if name in av.codecs_available]
    if not names:
        raise ValueError(f"no FFmpeg decoder for {mime_type} in this PyAV build")
    codec = av.CodecContext.create(names[0], "r")
    if not isinstance(codec, VideoCodecContext):
        raise ValueError(f"{names[0]} is not a video decoder")
    # Frame threading would hold each picture back by one frame per thread; slices do not.
    codec.thread_type = ThreadType.SLICE
    codec.copy_opaque = True  # each picture keeps its frame's _Arrival, whatever the delay
    codec.skip_frame = "NONREF"  # frames nothing refers to: see the module docstring
    codec.options = {"max_pixels": str(MAX_PIXELS)}
    return codec
