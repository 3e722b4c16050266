"""Capture: encoded frames from the SFU into the sealed, segmented recording.

The event loop only hands frames over. Muxing and encryption run on a thread of the recording's
own, so a busy recorder never delays forwarding; every `cut()` closes an encrypted segment and
hands it back to the event loop to be spooled and uploaded.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from recorder.clock import ParticipantClock, TrackClock
from recorder.container import Slot, WebmMuxer
from recorder.seal.manifest import SegmentEntry
from recorder.seal.sealer import ArchiveSealer
from recorder.seal.stream import SegmentEncryptor
from server.sfu.encoded import EncodedFrame, EncodedSource

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SealedSegment:
    entry: SegmentEntry
    ciphertext: bytes
    media_ms: int  # the recording's media time when the segment was cut


class _EncryptingSink:
    """Where the muxer writes: straight into the open segment's encryptor."""

    def __init__(self, sealer: ArchiveSealer) -> None:
        self._sealer = sealer
        self._encryptor: SegmentEncryptor = sealer.open_segment()
        self._ciphertext: list[bytes] = []
        self.plaintext_bytes = 0

    def write(self, data: bytes) -> int:
        self._ciphertext.append(self._encryptor.update(data))
        self.plaintext_bytes += len(data)
        return len(data)

    def cut(self, reopen: bool) -> tuple[SegmentEntry, bytes]:
        self._ciphertext.append(self._encryptor.finalize())
        entry = self._sealer.close_segment(self._encryptor)
        ciphertext = b"".join(self._ciphertext)
        self._ciphertext = []
        self.plaintext_bytes = 0
        if reopen:
            self._encryptor = self._sealer.open_segment()
        return entry, ciphertext


_CLOSE = object()


class RecordingWriter:
    """One recording's muxer and encryptor, on a thread of its own."""

    def __init__(
        self,
        sealer: ArchiveSealer,
        slots: list[Slot],
        on_segment: Callable[[SealedSegment], None],
    ) -> None:
        self._sealer = sealer
        self._slots = slots
        self._on_segment = on_segment
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Paused, media is dropped, not muxed. Resumed, each slot starts again at its next
        # keyframe (every audio frame is one), which a decoder can start from. Both are touched
        # on the event loop only, like `packet`.
        self._awaiting_keyframe: set[int] = set()
        self._paused = False
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def packet(self, slot: int, data: bytes, pts_ms: int, keyframe: bool) -> None:
        if self._paused:
            return
        if self._awaiting_keyframe:
            if slot in self._awaiting_keyframe and not keyframe:
                return
            self._awaiting_keyframe.discard(slot)
        self._queue.put(("packet", slot, data, pts_ms, keyframe))

    def pause(self) -> None:
        """Drop the media from now on (the recording's segments cannot be stored for now)."""
        self._paused = True

    def resume(self) -> None:
        """Mux the media again, each slot from its next keyframe."""
        self._paused = False
        self._awaiting_keyframe = set(range(len(self._slots)))

    def cut(self, media_ms: int) -> None:
        self._queue.put(("cut", media_ms))

    async def close(self, media_ms: int) -> None:
        """Write the rest and the last segment; returns once it has been handed over."""
        self._queue.put(("cut", media_ms))
        self._queue.put(_CLOSE)
        await self._done

    def _run(self) -> None:
        last_cut_ms = 0
        try:
            sink = _EncryptingSink(self._sealer)
            muxer = WebmMuxer(sink, self._slots)
            while (item := self._queue.get()) is not _CLOSE:
                if item[0] == "packet":
                    muxer.write(*item[1:])
                    continue
                muxer.flush()
                if sink.plaintext_bytes:
                    last_cut_ms = item[1]
                    self._deliver(sink, last_cut_ms, reopen=True)
            muxer.close()  # the last cluster
            self._deliver(sink, last_cut_ms, reopen=False)
        except Exception as exc:
            log.exception("recording_writer_failed")
            self._loop.call_soon_threadsafe(_settle, self._done, exc)
            return
        self._loop.call_soon_threadsafe(_settle, self._done, None)

    def _deliver(self, sink: _EncryptingSink, media_ms: int, *, reopen: bool) -> None:
        entry, ciphertext = sink.cut(reopen)
        self._loop.call_soon_threadsafe(
            self._on_segment, SealedSegment(entry, ciphertext, media_ms)
        )


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


class SlotFeed:
    """Feeds one slot from whichever EncodedSource currently publishes it (a FrameSink)."""

    def __init__(
        self, writer: RecordingWriter, slot: int, kind: str, media_clock: Callable[[], int]
    ) -> None:
        self._writer = writer
        self._slot = slot
        self._kind = kind
        self._media_clock = media_clock
        self._source: EncodedSource | None = None
        self._clock: TrackClock | None = None
        self._base_ms: int | None = None

    def follow(self, source: EncodedSource | None, clock: ParticipantClock | None = None) -> None:
        if self._source is not None:
            self._source.remove_sink(self)
        self._source = source
        self._clock = TrackClock(clock) if clock is not None else None
        self._base_ms = None  # placed on the clock again by its first (key)frame
        if source is not None:
            source.add_sink(self)
            source.request_keyframe()

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (a no-op for audio; PLIs are rate-limited)."""
        if self._source is not None:
            self._source.request_keyframe()

    def push_frame(self, source: EncodedSource, frame: EncodedFrame) -> None:
        if source is not self._source:
            return
        if self._base_ms is None:
            if not frame.keyframe:  # a video decoder needs a keyframe to start from
                source.request_keyframe()
                return
            # Until the publisher's first sender report: placed by when its first frame
            # arrived, later frames keeping the publisher's own spacing (its RTP timestamps).
            self._base_ms = self._media_clock() - frame.timestamp * 1000 // frame.clock_rate
        report = source.sender_report
        if report is not None and self._clock is not None:
            pts_ms = self._clock.media_ms(report, frame, time.monotonic())  # recorder/clock.py
        else:
            pts_ms = self._base_ms + frame.timestamp * 1000 // frame.clock_rate
        self._writer.packet(self._slot, frame.data, pts_ms, frame.keyframe)

    def source_closed(self, source: EncodedSource) -> None:
        if source is self._source:
            self._source = None
