"""Forward encoded media through aiortc without decoding or re-encoding it.

Written for aiortc 1.16.0 exactly (``AIORTC_VERSION``): this is the one module of vteller that
touches aiortc internals, and importing it (or tapping / binding) with any other aiortc version
raises :class:`AiortcVersionError`, so an upgrade fails loudly instead of silently transcoding or
forwarding garbage. Before bumping ``AIORTC_VERSION``, re-read the aiortc code named below and
run ``tests/unit/test_encoded_forwarding.py``.

Why: aiortc's ``RTCRtpReceiver`` decodes every received frame in a worker thread and each
``RTCRtpSender`` re-encodes what it is given, so a naive relay transcodes once per consumer.
Here the receiving side hands out the re-assembled encoded frames and each consumer's sender only
packetizes them.

aiortc internals used (all of them, and only here):

* ``RTCRtpReceiver._handle_rtp_packet`` depayloads RTP, re-assembles frames in its jitter buffer
  and passes each complete frame as ``(codec, JitterFrame)`` to
  ``self.__decoder_queue.put()`` (``_RTCRtpReceiver__decoder_queue``), read by the
  ``decoder_worker`` thread. :func:`tap_receiver` replaces that queue with ``_ReceiverTap``:
  ``put()`` runs on the event loop inside ``_handle_rtp_packet`` and hands the frame to the
  :class:`EncodedSource`; ``get()`` returns ``None`` at once, so the worker thread started by
  ``receive()`` exits immediately and no decoder is ever created. ``__stop_decoder`` (receiver
  stop, DTLS disconnect, RTCP BYE) puts ``None``: the source learns that the publisher is gone.
  Frames are only queued while ``_RTCRtpReceiver__decoder_thread`` is truthy; the exited
  ``Thread`` object stays there, which keeps that true and makes ``join()`` return at once.
  NACK generation, receiver reports and REMB stay with the receiver, unchanged.
* ``_RTCRtpReceiver__jitter_buffer`` is replaced by ``_PromptJitterBuffer`` (a ``JitterBuffer``
  subclass using its ``_packets``/``_origin``/``_capacity``/``_is_video``/``remove``): aiortc
  holds 4 extra audio frames (80 ms) to smooth its own decoding, and releases any frame only
  when the next one starts; a forwarder needs neither (each consumer has its own jitter buffer).
  Its frames keep their first packet's ``RtpPacket.payload``, whose VP8 descriptor aiortc's
  depayloader drops: it carries the frame's temporal layer (``EncodedFrame.temporal_layer``).
* ``RTCRtpSender._next_encoded_frame`` calls ``encoder.pack(packet)`` for anything that is not an
  ``av.Frame``: an :class:`EncodedTrack` yields ``av.Packet`` objects, so the sender only
  packetizes. aiortc still creates its encoder object with ``get_encoder()`` but never calls
  ``encode()`` (the VP8/H.264 codec is opened lazily in ``encode()``; Opus allocates an unopened
  libopus context). ``pack()`` keeps ``pts`` converted from ``time_base`` as the RTP timestamp
  offset. NACKs are answered by each sender from its own RTP history (RTX): loss is repaired
  per leg.
* PLI/FIR arriving at a sender call ``RTCRtpSender._send_keyframe()``; :func:`bind_sender` wraps
  it on that instance to forward the request to the source, which sends a PLI upstream with
  ``RTCRtpReceiver._send_rtcp_pli(media_ssrc)`` (SSRCs from ``getSynchronizationSources()``
  minus ``_RTCRtpReceiver__rtx_ssrc``).
* ``RTCRtpReceiver._handle_rtcp_packet`` is wrapped on the tapped instance to keep the latest
  RTCP sender report (:class:`SenderReport`) for the recorder's lip-sync; its RTP timestamp is
  unwrapped like frame timestamps with ``_RTCRtpReceiver__timestamp_mapper._origin``.

Everything runs on the event loop thread; nothing here blocks the publisher or other consumers.

Use::

    @pc_in.on("track")
    def on_track(track):
        receiver = next(r for r in pc_in.getReceivers() if r.track is track)
        source = tap_receiver(receiver, track)  # before the receiver starts

    track = source.subscribe()
    transceiver = pc_out.addTransceiver(track, direction="sendonly")
    # The consumer's leg must negotiate the publisher's codec (source.mime_type once known):
    # the sender only packetizes, with the packetizer of the codec negotiated on its leg.
    transceiver.setCodecPreferences([...])
    bind_sender(transceiver.sender, track)
    ...
    track.switch_source(new_source)  # publisher reconnected; None pauses
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import aiortc
import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket
from pyee.asyncio import AsyncIOEventEmitter

__all__ = [
    "AIORTC_VERSION",
    "AiortcVersionError",
    "EncodedFrame",
    "EncodedSource",
    "EncodedTrack",
    "FrameSink",
    "bind_sender",
    "check_aiortc_version",
    "tap_receiver",
]

AIORTC_VERSION = "1.16.0"

# At most one PLI per publisher per this many seconds: every consumer that joins or loses a
# picture asks, and a keyframe costs the publisher's uplink several delta frames.
KEYFRAME_MIN_INTERVAL = 0.3
# A consumer still waiting for a keyframe asks again this often (the PLI or the keyframe itself
# may have been lost upstream).
KEYFRAME_RETRY_INTERVAL = 0.6
# Per-consumer queue bounds (frames). Video: about 1-1.5 s, enough to cover a consumer whose
# connection is still being set up; audio: 1 s of 20 ms frames.
DEFAULT_MAX_QUEUE = {"video": 30, "audio": 50}

_TAPPED = "_vteller_encoded_source"
_BOUND = "_vteller_keyframe_forwarding"

logger = logging.getLogger(__name__)


class AiortcVersionError(RuntimeError):
    """The installed aiortc is not the one this module was written against."""


def check_aiortc_version() -> None:
    """Raise :class:`AiortcVersionError` unless ``aiortc.__version__ == AIORTC_VERSION``."""
    found = getattr(aiortc, "__version__", "unknown")
    if found != AIORTC_VERSION:
        raise AiortcVersionError(
            f"server/sfu/encoded.py relies on aiortc {AIORTC_VERSION} internals but aiortc "
            f"{found} is installed: review the internals listed in its docstring, then update "
            "AIORTC_VERSION"
        )


def _require(obj: object, name: str) -> Any:
    # A renamed private attribute must fail here, not as a silent transcode or a hang later.
    if not hasattr(obj, name):
        raise AiortcVersionError(
            f"aiortc {getattr(aiortc, '__version__', '?')}: {type(obj).__name__} has no "
            f"{name!r}; server/sfu/encoded.py must be updated"
        )
    return getattr(obj, name)


check_aiortc_version()
_require(RTCRtpReceiver, "_send_rtcp_pli")
_require(RTCRtpReceiver, "_handle_rtp_packet")
_require(RTCRtpSender, "_send_keyframe")
_require(RTCRtpSender, "_next_encoded_frame")
_require(RTCRtpReceiver, "_handle_rtcp_packet")


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One re-assembled encoded frame as received from the publisher."""

    data: bytes
    timestamp: int  # RTP clock units, from 0 at the source's first frame, unwrapped
    keyframe: bool  # always True for audio
    mime_type: str  # lower case, e.g. "video/vp8", "audio/opus"
    clock_rate: int
    # VP8 temporal layer (RFC 7741 TID: 0 is the base layer) when the publisher sends layers,
    # else None. A frame of layer N is referenced only by frames of layers >= N, so a consumer
    # that keeps layers <= N still decodes exactly.
    temporal_layer: int | None = None


@dataclass(frozen=True, slots=True)
class SenderReport:
    """The publisher's latest RTCP sender report: its wall clock at one RTP timestamp.

    Audio and video of one publisher share that wall clock, which is what lip-syncs them.
    """

    ntp_seconds: float  # the sender's wall clock (NTP) ...
    rtp_timestamp: int  # ... at this RTP time, in EncodedFrame.timestamp's (unwrapped) units
    clock_rate: int
    received_at: float  # time.monotonic() when the report arrived here


class FrameSink(Protocol):
    """Anything fed by an :class:`EncodedSource`; :class:`EncodedTrack` is one.

    Other kinds of subscriber (a rate-limited decoded view for analyzers, a recorder) implement
    this and use :meth:`EncodedSource.add_sink`. Both methods are called on the event loop and
    must not block: they run inside the publisher's RTP receive path.
    """

    def push_frame(self, source: EncodedSource, frame: EncodedFrame) -> None: ...

    def source_closed(self, source: EncodedSource) -> None: ...


def _is_vp8_keyframe(data: bytes) -> bool:
    # RFC 6386 9.1: frame tag bit 0 is 0 for key frames, followed (after 3 bytes) by the start
    # code 9d 01 2a. Checking both rejects a partial first frame that starts mid-picture.
    return len(data) >= 10 and not data[0] & 0x01 and data[3:6] == b"\x9d\x01\x2a"


def _is_h264_keyframe(data: bytes) -> bool:
    # aiortc's depayloader emits Annex B (start code before every NAL unit): look for an IDR
    # slice (NAL type 5). Senders such as Chromium put SPS/PPS in the same access unit.
    pos = data.find(b"\x00\x00\x01")
    while pos != -1 and pos + 3 < len(data):
        if data[pos + 3] & 0x1F == 5:
            return True
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return False


def _vp8_temporal_layer(payload: bytes) -> int | None:
    """TID of a VP8 RTP payload descriptor (RFC 7741 4.2), or None when it carries none."""
    if len(payload) < 2 or not payload[0] & 0x80:  # X: no extension octet, no layers
        return None
    extension = payload[1]
    pos = 2
    if extension & 0x80:  # I: a 7- or 15-bit picture id (M bit)
        pos += 2 if len(payload) > pos and payload[pos] & 0x80 else 1
    if extension & 0x40:  # L: TL0PICIDX
        pos += 1
    if not extension & 0x20 or len(payload) <= pos:  # T: the TID/Y/KEYIDX octet
        return None
    return payload[pos] >> 6


def _is_keyframe(mime_type: str, data: bytes) -> bool:
    if mime_type.startswith("audio/"):
        return True
    if mime_type == "video/vp8":
        return _is_vp8_keyframe(data)
    if mime_type == "video/h264":
        return _is_h264_keyframe(data)
    return False  # unknown video codec: never start a consumer on it


class _PromptJitterBuffer(JitterBuffer):
    """Releases each frame as soon as it is complete, not when the next one starts.

    aiortc's buffer knows a frame is complete only when a packet of the next frame arrives, which
    delays every forwarded video frame by a frame interval (50 ms at 20 fps) and every audio
    packet by 20 ms. A video frame is complete at its last packet (RTP marker bit) when none
    before it is missing; an Opus packet is a frame of its own. A frame whose marker was lost is
    still released when the next frame starts, as aiortc would.
    """

    def __init__(self, capacity: int, *, is_video: bool) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=is_video)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets: list[Any] = []
        timestamp: int | None = None
        if self._origin is None:
            return None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None  # a gap: wait for the packet (or for NACK to bring it)
            if timestamp is not None and packet.timestamp != timestamp:
                break  # the previous frame ended without a marker
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker or not self._is_video:
                break
        else:
            return None
        if not packets or timestamp is None:
            return None
        self.remove(len(packets))
        return _ReceivedFrame(b"".join(p._data for p in packets), timestamp, packets[0].payload)


class _ReceivedFrame(JitterFrame):
    """A JitterFrame that keeps its first packet's payload: the VP8 descriptor says its layer."""

    def __init__(self, data: bytes, timestamp: int, first_payload: bytes) -> None:
        super().__init__(data=data, timestamp=timestamp)
        self.first_payload = first_payload


class _ReceiverTap(queue.Queue[Any]):
    """Stands in for ``RTCRtpReceiver.__decoder_queue`` (see the module docstring)."""

    def __init__(self, source: EncodedSource) -> None:
        super().__init__()
        self._source = source

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            if item is None:
                self._source._upstream_ended()
            else:
                codec, frame = item
                self._source._receive(codec, frame)
        except Exception:
            # A forwarding bug (or a failing "ended" handler) must not break the publisher's
            # RTP receive path or the receiver's shutdown.
            logger.exception("encoded forwarding failed (%s)", self._source.kind)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # Called by aiortc's decoder_worker thread: None makes it exit without a decoder.
        return None


class EncodedSource(AsyncIOEventEmitter):
    """One published incoming track (audio or video) of one participant, as encoded frames.

    Created by :func:`tap_receiver`. Emits ``"ended"`` once no more frames will come (the
    publisher's receiver stopped, or :meth:`close`). When the publisher goes away its subscribed
    tracks pause rather than end, so that they can be switched to the publisher's new source
    (:meth:`EncodedTrack.switch_source`); :meth:`close` ends them.
    """

    def __init__(self, receiver: RTCRtpReceiver, track: MediaStreamTrack) -> None:
        super().__init__()
        self.kind: str = track.kind
        self.track_id: str = track.id
        self.mime_type: str | None = None  # known from the first frame
        # counters for metrics
        self.frames_received = 0  # frames from the publisher
        self.packets_forwarded = 0  # frames handed to consumers' senders (one per consumer)
        self.bytes_forwarded = 0
        self.keyframe_requests = 0  # PLIs actually sent to the publisher
        self._receiver = receiver
        self._track = track
        self._event_loop = asyncio.get_running_loop()
        self._sinks: dict[int, FrameSink] = {}  # by identity: sinks need not be hashable
        self._closed = False
        self._ended = False
        self._last_pli = -KEYFRAME_MIN_INTERVAL
        self._clock_rate: int | None = None
        self.sender_report: SenderReport | None = None
        self._pli_timer: asyncio.TimerHandle | None = None
        self._pli_tasks: set[asyncio.Task[None]] = set()

    @property
    def ended(self) -> bool:
        """True once no more frames will arrive (publisher gone, or closed)."""
        return self._ended

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, *, max_queue: int | None = None) -> EncodedTrack:
        """A new consumer track. Its first video packet is a keyframe (one is requested)."""
        if self._closed:
            raise ValueError("EncodedSource is closed")
        return EncodedTrack(self, max_queue=max_queue)

    def add_sink(self, sink: FrameSink) -> None:
        if self._closed:
            raise ValueError("EncodedSource is closed")
        self._sinks[id(sink)] = sink

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.pop(id(sink), None)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe: at most one PLI per ``KEYFRAME_MIN_INTERVAL``.

        Requests inside the interval are coalesced into one PLI at its end, so none is lost.
        No-op for audio.
        """
        if self._closed or self._ended or self.kind != "video":
            return
        wait = self._last_pli + KEYFRAME_MIN_INTERVAL - self._event_loop.time()
        if wait <= 0:
            self._send_pli()
        elif self._pli_timer is None:
            self._pli_timer = self._event_loop.call_later(wait, self._send_pli)

    def close(self) -> None:
        """Stop forwarding; every subscribed track ends (its ``recv()`` raises)."""
        if self._closed:
            return
        self._closed = True
        self._cancel_pli_timer()
        sinks = list(self._sinks.values())
        self._sinks.clear()
        for sink in sinks:
            sink.source_closed(self)
        self._set_ended()

    # -- internals --------------------------------------------------------------------------

    def _receive(self, codec: RTCRtpCodecParameters, jitter_frame: JitterFrame) -> None:
        if self._closed:
            return
        mime_type = codec.mimeType.lower()
        self.mime_type = mime_type
        self._clock_rate = codec.clockRate
        layer = None
        if mime_type == "video/vp8" and isinstance(jitter_frame, _ReceivedFrame):
            layer = _vp8_temporal_layer(jitter_frame.first_payload)
        frame = EncodedFrame(
            data=jitter_frame.data,
            timestamp=jitter_frame.timestamp,
            keyframe=_is_keyframe(mime_type, jitter_frame.data),
            mime_type=mime_type,
            clock_rate=codec.clockRate,
            temporal_layer=layer,
        )
        self.frames_received += 1
        for sink in tuple(self._sinks.values()):
            sink.push_frame(self, frame)

    def _sender_report(self, packet: RtcpSrPacket) -> None:
        mapper = getattr(self._receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        if origin is None or self._clock_rate is None:
            return  # no frame yet: the next report (about every second) will do
        # The same unwrapping aiortc applies to frame timestamps (TimestampMapper).
        rtp = (packet.sender_info.rtp_timestamp - origin) % (1 << 32)
        if rtp >= 1 << 31:
            rtp -= 1 << 32
        ntp = packet.sender_info.ntp_timestamp
        self.sender_report = SenderReport(
            ntp_seconds=(ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32),
            rtp_timestamp=rtp,
            clock_rate=self._clock_rate,
            received_at=time.monotonic(),
        )

    def _count_forwarded(self, size: int) -> None:
        self.packets_forwarded += 1
        self.bytes_forwarded += size

    def _media_ssrcs(self) -> list[int]:
        # The SSRC is not part of a JitterFrame; the receiver knows the active ones.
        rtx: dict[int, int] = getattr(self._receiver, "_RTCRtpReceiver__rtx_ssrc", {})
        return [s.source for s in self._receiver.getSynchronizationSources() if s.source not in rtx]

    def _send_pli(self) -> None:
        self._pli_timer = None
        if self._closed or self._ended:
            return
        ssrcs = self._media_ssrcs()
        if not ssrcs:
            # Nothing received yet: the publisher's first frame is a keyframe anyway.
            return
        self._last_pli = self._event_loop.time()
        self.keyframe_requests += 1
        for ssrc in ssrcs:
            task = self._event_loop.create_task(self._receiver._send_rtcp_pli(ssrc))
            self._pli_tasks.add(task)  # keep a reference until done
            task.add_done_callback(self._pli_tasks.discard)

    def _cancel_pli_timer(self) -> None:
        if self._pli_timer is not None:
            self._pli_timer.cancel()
            self._pli_timer = None

    def _upstream_ended(self) -> None:
        # The receiver stopped. Subscribers pause; the room decides (switch or close).
        self._cancel_pli_timer()
        self._track.stop()  # "ended" on the remote track, as without the tap
        self._set_ended()

    def _set_ended(self) -> None:
        if not self._ended:
            self._ended = True
            self.emit("ended")


_TIME_BASES: dict[int, fractions.Fraction] = {}


def _time_base(clock_rate: int) -> fractions.Fraction:
    tb = _TIME_BASES.get(clock_rate)
    if tb is None:
        tb = _TIME_BASES[clock_rate] = fractions.Fraction(1, clock_rate)
    return tb


class EncodedTrack(MediaStreamTrack):
    """What a consumer's RTCRtpSender reads: ``av.Packet`` objects.

    ``pts`` is in units of ``time_base`` = 1/clock rate, so aiortc's ``encoder.pack()`` keeps the
    publisher's RTP timestamp spacing; ``is_keyframe`` is set. The queue is bounded: a slow
    consumer loses its oldest audio frames, or for video skips to the newest queued keyframe or,
    if there is none, drops everything and waits for (and requests) a keyframe. Pushing never
    blocks the publisher or the other consumers.
    """

    def __init__(
        self,
        source: EncodedSource | None,
        *,
        kind: str | None = None,
        max_queue: int | None = None,
    ) -> None:
        """Usually made by :meth:`EncodedSource.subscribe`; ``EncodedTrack(None, kind=...)``
        makes a paused track for a publisher that is not connected yet."""
        super().__init__()
        if source is not None:
            kind = source.kind
        if kind not in ("audio", "video"):
            raise ValueError("kind must be 'audio' or 'video' (or give a source)")
        self.kind = kind
        self.frames_dropped = 0  # for metrics: frames lost to overflow or while awaiting a key
        self._max_queue = max(2, max_queue or DEFAULT_MAX_QUEUE.get(self.kind, 50))
        self._queue: deque[tuple[EncodedSource, EncodedFrame, float]] = deque()
        self._source: EncodedSource | None = None
        self._waiting_keyframe = False
        self._reading = False  # recv() was called: the sender is running
        self._waiter: asyncio.Future[None] | None = None
        self._mime_type: str | None = None  # codec of what this track has output
        # RTP timestamp continuity across sources: pts = frame.timestamp + offset
        self._pts_source: EncodedSource | None = None
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._last_arrival = 0.0
        self.switch_source(source)

    @property
    def source(self) -> EncodedSource | None:
        return self._source

    def switch_source(self, source: EncodedSource | None) -> None:
        """Follow another source (``None``: pause, neither sending nor ending).

        The next video frame is a keyframe of the new source, and pts continue from the last
        packet output, advanced by the time that passed, so the consumer sees one continuous
        stream. The sources must carry the same codec (the consumer's sender packetizes for
        the codec negotiated on its leg).
        """
        if self.readyState != "live":
            raise MediaStreamError("EncodedTrack has ended")
        if source is self._source:
            return
        if source is not None:
            if source.kind != self.kind:
                raise ValueError(f"cannot switch a {self.kind} track to a {source.kind} source")
            if source.closed:
                raise ValueError("EncodedSource is closed")
            if self._mime_type and source.mime_type and source.mime_type != self._mime_type:
                raise ValueError(f"codec mismatch: {source.mime_type} != {self._mime_type}")
        if self._source is not None:
            self._source.remove_sink(self)
        self.frames_dropped += len(self._queue)
        self._queue.clear()
        self._source = source
        self._waiting_keyframe = self.kind == "video"
        if source is not None:
            source.add_sink(self)
            source.request_keyframe()
        self._wake()

    def request_keyframe(self) -> None:
        """Forward a keyframe request (PLI/FIR from the consumer) to the current source."""
        if self._source is not None:
            self._source.request_keyframe()

    async def recv(self) -> av.Packet[Any]:
        self._reading = True
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._queue:
                source, frame, arrival = self._queue.popleft()
                return self._packet(source, frame, arrival)
            current = self._source
            waiting = current is not None and self._waiting_keyframe
            if current is not None and waiting:
                current.request_keyframe()
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if waiting:
                    async with asyncio.timeout(KEYFRAME_RETRY_INTERVAL):
                        await waiter
                else:
                    await waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    def stop(self) -> None:
        if self._source is not None:
            self._source.remove_sink(self)
            self._source = None
        self._queue.clear()
        super().stop()
        self._wake()

    # -- FrameSink --------------------------------------------------------------------------

    def push_frame(self, source: EncodedSource, frame: EncodedFrame) -> None:
        if source is not self._source or self.readyState != "live":
            return
        if self._mime_type is not None and frame.mime_type != self._mime_type:
            # The sender packetizes for one codec; another codec's bytes would be garbage.
            self.frames_dropped += 1
            return
        if self._waiting_keyframe:
            if not frame.keyframe:
                self.frames_dropped += 1
                return
            self._waiting_keyframe = False
        if len(self._queue) >= self._max_queue and not self._make_room(frame):
            return
        self._queue.append((source, frame, time.monotonic()))
        self._wake()

    def source_closed(self, source: EncodedSource) -> None:
        if source is self._source:
            self.stop()

    # -- internals --------------------------------------------------------------------------

    def _make_room(self, frame: EncodedFrame) -> bool:
        """The queue is full: drop frames. False if ``frame`` must be dropped too."""
        q = self._queue
        if self.kind != "video":
            q.popleft()  # an Opus decoder conceals one missing frame
            self.frames_dropped += 1
            return True
        if frame.keyframe:
            self.frames_dropped += len(q)
            q.clear()
            return True
        # Delta frames depend on everything since the last keyframe: keep from the newest
        # queued keyframe, or drop all and wait for a new one.
        for i in range(len(q) - 1, 0, -1):
            if q[i][1].keyframe:
                for _ in range(i):
                    q.popleft()
                self.frames_dropped += i
                return True
        self.frames_dropped += len(q) + 1
        q.clear()
        self._waiting_keyframe = True
        if self._reading and self._source is not None:
            # Not yet reading: the first recv() asks, so an idle leg does not cause PLIs.
            self._source.request_keyframe()
        return False

    def _packet(self, source: EncodedSource, frame: EncodedFrame, arrival: float) -> av.Packet[Any]:
        if source is not self._pts_source:
            if self._last_pts is None:
                self._pts_offset = -frame.timestamp
            else:
                # Continue after the last output, advanced by the real time in between.
                gap = max(1, round((arrival - self._last_arrival) * frame.clock_rate))
                self._pts_offset = self._last_pts + gap - frame.timestamp
            self._pts_source = source
        pts = frame.timestamp + self._pts_offset
        if self._last_pts is not None and pts <= self._last_pts:
            # Never go backwards (receivers would take it as a wrap or drop the frame).
            self._pts_offset += self._last_pts + 1 - pts
            pts = self._last_pts + 1
        self._last_pts = pts
        self._last_arrival = arrival
        self._mime_type = frame.mime_type
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = _time_base(frame.clock_rate)
        packet.is_keyframe = frame.keyframe
        source._count_forwarded(len(frame.data))
        return packet

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def tap_receiver(receiver: RTCRtpReceiver, track: MediaStreamTrack) -> EncodedSource:
    """Take the encoded frames of ``receiver``; after this it never decodes ``track``.

    Call from ``pc.on("track")`` (before the receiver starts); ``track`` must be
    ``receiver.track``. The remote track itself then delivers nothing (its ``recv()`` ends); it
    still emits ``"ended"`` when the publisher's receiver stops. Calling again returns the same
    source.
    """
    check_aiortc_version()
    existing: EncodedSource | None = getattr(receiver, _TAPPED, None)
    if existing is not None:
        return existing
    if receiver.track is not track:
        raise ValueError("track is not receiver.track")
    old_queue: queue.Queue[Any] = _require(receiver, "_RTCRtpReceiver__decoder_queue")
    old_thread: threading.Thread | None = _require(receiver, "_RTCRtpReceiver__decoder_thread")
    started: bool = _require(receiver, "_RTCRtpReceiver__started")
    jitter_buffer: JitterBuffer = _require(receiver, "_RTCRtpReceiver__jitter_buffer")
    _require(receiver, "_RTCRtpReceiver__rtx_ssrc")

    source = EncodedSource(receiver, track)
    handle_rtcp = receiver._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            source._sender_report(packet)
        await handle_rtcp(packet)

    # setattr: these private attributes are not part of aiortc's typed interface.
    setattr(receiver, "_handle_rtcp_packet", handle_rtcp_packet)  # noqa: B010
    setattr(receiver, "_RTCRtpReceiver__decoder_queue", _ReceiverTap(source))  # noqa: B010
    if not started:
        prompt = _PromptJitterBuffer(jitter_buffer.capacity, is_video=track.kind == "video")
        setattr(receiver, "_RTCRtpReceiver__jitter_buffer", prompt)  # noqa: B010
    if old_thread is not None:
        # Tapped late (receiver already running): its decoder thread reads the old queue.
        # Let it finish what is queued and exit; the exited Thread stays as the receiver's
        # "decoder thread" so frames keep flowing to the tap and join() returns at once.
        old_queue.put(None)
    elif started:
        source._upstream_ended()  # the receiver has already stopped its decoder
    setattr(receiver, _TAPPED, source)
    return source


def bind_sender(sender: RTCRtpSender, track: EncodedTrack) -> None:
    """Make ``sender`` send ``track`` and forward PLI/FIR it receives to ``track``'s source.

    The request goes to whatever source the sender's track follows at that moment (see
    :meth:`EncodedTrack.switch_source`). Binding again is harmless.
    """
    check_aiortc_version()
    if sender.kind != track.kind:
        raise ValueError(f"cannot bind a {track.kind} track to a {sender.kind} sender")
    if sender.track is not track:
        sender.replaceTrack(track)
    if getattr(sender, _BOUND, False):
        return
    original = _require(type(sender), "_send_keyframe")
    sender_ref = weakref.ref(sender)  # the hook lives on the sender: avoid a reference cycle

    def _send_keyframe() -> None:
        bound = sender_ref()
        if bound is None:
            return
        original(bound)  # aiortc's force-keyframe flag; only used by encode(), harmless here
        current = bound.track
        if isinstance(current, EncodedTrack):
            current.request_keyframe()

    setattr(sender, "_send_keyframe", _send_keyframe)  # noqa: B010 (method on this instance)
    setattr(sender, _BOUND, True)
