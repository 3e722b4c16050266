"""Playback in the auditor's browser: the verified, decrypted recording remuxed into seekable
WebM files, one per person (camera and microphone) and per shared screen, kept only in memory.

Why a remux and not a transcode: the recording is one live WebM without Cues (docs/archive-
format.md section 10), so a browser cannot seek in it, and it has twelve tracks, of which a
browser plays only the first video and the first audio. Copying each person's packets into a
file of their own, which FFmpeg's Matroska muxer closes with Cues, fixes both without decoding a
frame: it costs one pass over the bytes (docs/auditor.md section 4 has the measurements). The
page plays the views side by side on one clock and seeks them together to the manifest's marks.

Decrypted media never touch the disk: the plaintext and the remuxed views live in this process's
memory, bounded by `playback_cache_mb`, and are dropped after `playback_ttl_minutes`. A viewer
streams them only within `playback_ttl_minutes` of starting a playback themselves.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import av

from recorder.seal.manifest import Manifest, SegmentEntry

MB = 1024 * 1024
CAMERA_AND_MICROPHONE = ("camera", "microphone")


class PlaybackError(Exception):
    """The recording cannot be prepared for playback; the message says why."""


class PlaintextCollector:
    """A PlaintextInspector that keeps the verified plaintext, up to `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.data = bytearray()
        self.too_large = False

    def begin_segment(self, segment: SegmentEntry) -> None:
        return None

    def write(self, plaintext: bytes) -> None:
        if len(self.data) + len(plaintext) > self._limit:
            self.too_large = True
            return
        self.data += plaintext

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]:
        return []

    def end_archive(self, manifest: Manifest) -> list[str]:
        return []


@dataclass(frozen=True)
class View:
    name: str  # "customer", "teller", "expert1", "teller_screen", ...
    webm: bytes
    duration_ms: int


def _view_name(title: str) -> str | None:
    """'customer camera' -> 'customer'; 'teller screen' -> 'teller_screen'."""
    role, _, source = title.partition(" ")
    if source in CAMERA_AND_MICROPHONE:
        return role
    if source == "screen":
        return f"{role}_screen"
    return None


def _streams_with_media(recording: bytes | bytearray) -> set[int]:
    """Indexes of the tracks that hold packets (slots are declared whether used or not)."""
    found: set[int] = set()
    with av.open(io.BytesIO(recording), mode="r", format="matroska") as source:
        packet: Any
        for packet in source.demux():
            if packet.size:
                found.add(packet.stream.index)
    return found


def remux_views(recording: bytes | bytearray) -> list[View]:
    """Split the recording into per-person WebM files with Cues, copying packets (no decoding).

    Empty slots are left out: a view holds only tracks with media.
    """
    filled = _streams_with_media(recording)
    outputs: dict[str, tuple[io.BytesIO, Any, dict[int, Any]]] = {}
    last_ms: dict[str, int] = {}
    with av.open(io.BytesIO(recording), mode="r", format="matroska") as source:
        chosen = [s for s in source.streams if s.index in filled]
        for stream in chosen:
            name = _view_name(stream.metadata.get("title", ""))
            if name is None:
                continue
            if name not in outputs:
                buffer = io.BytesIO()
                # A seekable output: the muxer goes back at the end to write Cues and durations.
                container = av.open(buffer, mode="w", format="webm")
                outputs[name] = (buffer, container, {})
            _, container, mapping = outputs[name]
            mapping[stream.index] = container.add_stream_from_template(stream)
        by_stream = {index: name for name, (_, _, mapping) in outputs.items() for index in mapping}
        packet: Any
        for packet in source.demux([s for s in chosen if s.index in by_stream]):
            if packet.dts is None or packet.size == 0:
                continue  # the demuxer's flush packets
            name = by_stream[packet.stream.index]
            if packet.pts is not None:
                ms = int(packet.pts * packet.time_base * 1000)
                last_ms[name] = max(last_ms.get(name, 0), ms)
            packet.stream = outputs[name][2][packet.stream.index]
            outputs[name][1].mux(packet)
    views = []
    for name, (buffer, container, _) in outputs.items():
        container.close()
        views.append(View(name, buffer.getvalue(), last_ms.get(name, 0)))
    order = {"customer": 0, "teller": 1}
    return sorted(views, key=lambda v: (order.get(v.name, 2), v.name))


@dataclass
class Prepared:
    archive_id: str
    views: dict[str, View]
    expires: float
    # User id -> when the playback that user started ends (time.monotonic()): each viewer's
    # access lasts as long as their own start, however long others keep the recording in memory.
    viewers: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(v.webm) for v in self.views.values())


class PlaybackCache:
    """Prepared recordings by archive id, least recently used first out, bounded in bytes."""

    def __init__(self, capacity_bytes: int, ttl_seconds: float) -> None:
        self._capacity = capacity_bytes
        self._ttl = ttl_seconds
        self._entries: OrderedDict[str, Prepared] = OrderedDict()

    def _expire(self) -> None:
        now = time.monotonic()
        for archive_id in [k for k, v in self._entries.items() if v.expires <= now]:
            del self._entries[archive_id]

    def get(self, archive_id: str) -> Prepared | None:
        self._expire()
        entry = self._entries.get(archive_id)
        if entry is not None:
            self._entries.move_to_end(archive_id)
        return entry

    def put(self, archive_id: str, views: list[View]) -> Prepared:
        """Keep the views of `archive_id`, prepared for nobody yet; an entry already kept stays
        (with its viewers), so a viewer admitted to it keeps streaming."""
        entry = Prepared(archive_id, {v.name: v for v in views}, time.monotonic() + self._ttl)
        if entry.size > self._capacity:
            raise PlaybackError(
                "this recording is larger than the playback memory of the server "
                "(auditor.playback_cache_mb); export it instead"
            )
        return self.get(archive_id) or self._keep(entry)

    def _keep(self, entry: Prepared) -> Prepared:
        """Add `entry` (of a recording not kept) as the most recently used, making room for it."""
        self._entries[entry.archive_id] = entry
        # `entry` fits on its own (put checked), so it is never the one that goes.
        while sum(e.size for e in self._entries.values()) > self._capacity:
            self._entries.popitem(last=False)
        return entry

    def admit(self, entry: Prepared, user_id: str) -> Prepared:
        """`user_id` started a playback of `entry` (and was logged doing so): they may stream it,
        and it stays in memory, for the TTL from now. Returns the entry they stream: `entry`,
        kept again if it went meanwhile (expired, or made room for another), or the one kept
        for the same recording since."""
        kept = self.get(entry.archive_id) or self._keep(entry)
        kept.expires = time.monotonic() + self._ttl
        kept.viewers[user_id] = kept.expires
        return kept

    def drop(self, archive_id: str) -> None:
        """Forget the recording of `archive_id` (its archive was purged), viewers and all."""
        self._entries.pop(archive_id, None)

    def admitted(self, archive_id: str, user_id: str) -> Prepared | None:
        """The prepared recording, if `user_id` started a playback of it within the TTL."""
        entry = self.get(archive_id)
        if entry is None or entry.viewers.get(user_id, 0.0) <= time.monotonic():
            return None
        return entry
