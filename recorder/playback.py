"""Does the decrypted recording play? Stream count and durations, read with FFmpeg (PyAV)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import av

from recorder.container import standard_slots
from recorder.seal.manifest import Manifest, SegmentEntry


@dataclass
class StreamSummary:
    index: int
    kind: str
    title: str
    packets: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    @property
    def duration_ms(self) -> int:
        if self.first_ms is None or self.last_ms is None:
            return 0
        return self.last_ms - self.first_ms


@dataclass
class MediaSummary:
    streams: list[StreamSummary] = field(default_factory=list)

    @property
    def duration_ms(self) -> int:
        ends = [s.last_ms for s in self.streams if s.last_ms is not None]
        return max(ends, default=0)

    def describe(self) -> list[str]:
        lines = [f"media: {len(self.streams)} tracks, {self.duration_ms / 1000:.1f} s"]
        lines += [
            f"  track {s.index} ({s.title or s.kind}): {s.packets} packets, "
            f"{s.duration_ms / 1000:.1f} s"
            for s in self.streams
            if s.packets
        ]
        return lines


def summarize(source: Path | IO[bytes]) -> MediaSummary:
    """Reads every packet (without decoding) to count them and find each track's time span;
    `source` a file, or a stream read once from start to end (a pipe)."""
    summary = MediaSummary()
    if isinstance(source, Path):
        opened = av.open(str(source))
    else:
        opened = av.open(source, "r", format="matroska")  # a pipe cannot be probed and rewound
    with opened as container:
        by_index: dict[int, StreamSummary] = {}
        for stream in container.streams:
            entry = StreamSummary(stream.index, stream.type, stream.metadata.get("title", ""))
            by_index[stream.index] = entry
            summary.streams.append(entry)
        packet: Any
        for packet in container.demux():
            if packet.pts is None or packet.size == 0:
                continue
            entry = by_index[packet.stream.index]
            ms = int(packet.pts * packet.time_base * 1000)
            entry.packets += 1
            entry.first_ms = ms if entry.first_ms is None else min(entry.first_ms, ms)
            entry.last_ms = ms if entry.last_ms is None else max(entry.last_ms, ms)
    return summary


class MediaInspector:
    """A PlaintextInspector for recorder/verify.py: rebuilds the recording and checks it plays.

    The plaintext is demuxed as it is decrypted, through a pipe to a thread: the decrypted
    recording is never written to disk (where a crash would leave it) nor held whole in memory.
    """

    def __init__(self) -> None:
        self.summary: MediaSummary | None = None
        self._pipe: IO[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._error: Exception | None = None

    def begin_segment(self, segment: SegmentEntry) -> None:
        return None

    def write(self, plaintext: bytes) -> None:
        if self._pipe is None:
            read_end, write_end = os.pipe()
            self._pipe = os.fdopen(write_end, "wb")
            self._reader = threading.Thread(
                target=self._demux, args=(os.fdopen(read_end, "rb"),), daemon=True
            )
            self._reader.start()
        self._pipe.write(plaintext)

    def _demux(self, stream: IO[bytes]) -> None:
        with stream:
            try:
                self.summary = summarize(stream)
            except Exception as exc:  # reported by end_archive, on the verifier's thread
                self._error = exc
            # Whatever FFmpeg made of it, the writer must never block on a full pipe.
            while stream.read(1 << 16):
                pass

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]:
        return []

    def end_archive(self, manifest: Manifest) -> list[str]:
        if self._pipe is not None and self._reader is not None:
            self._pipe.close()
            self._reader.join()
        if self._error is not None or self.summary is None:
            reason = self._error or "no media was decrypted"
            self.summary = None
            return [f"media: the decrypted recording does not open as WebM: {reason}"]
        problems = []
        declared = len(standard_slots())
        if len(self.summary.streams) != declared:
            problems.append(
                f"media: {len(self.summary.streams)} tracks in the file, the recorder writes "
                f"{declared}"
            )
        if manifest.segments and not any(s.packets for s in self.summary.streams):
            problems.append("media: the recording holds no audio or video at all")
        return problems
