"""Does the decrypted recording play? Stream count and durations, read with FFmpeg (PyAV)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def summarize(path: Path) -> MediaSummary:
    """Reads every packet (without decoding) to count them and find each track's time span."""
    summary = MediaSummary()
    with av.open(str(path)) as container:
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
    """A PlaintextInspector for recorder/verify.py: rebuilds the recording and checks it plays."""

    def __init__(self) -> None:
        self._file = tempfile.NamedTemporaryFile(suffix=".webm")  # noqa: SIM115 - lives with us
        self.summary: MediaSummary | None = None

    def begin_segment(self, segment: SegmentEntry) -> None:
        return None

    def write(self, plaintext: bytes) -> None:
        self._file.write(plaintext)

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]:
        return []

    def end_archive(self, manifest: Manifest) -> list[str]:
        self._file.flush()
        try:
            self.summary = summarize(Path(self._file.name))
        except (av.error.FFmpegError, ValueError) as exc:
            return [f"media: the decrypted recording does not open as WebM: {exc}"]
        finally:
            self._file.close()
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
