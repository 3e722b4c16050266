"""A dual recording opened for analysis: the verified media, who is on which track, the moments.

Two ways in:

- `open_archive(reader, public_keys, keyring)`: a sealed archive (an export package or the
  archive store). Every segment is verified while it is decrypted (recorder/verify.py) and the
  plaintext is written to a temporary WebM; an archive that does not verify is refused.
- `open_decrypted(webm, manifest)`: a WebM decrypted earlier plus its `manifest.json` (the
  manifest is parsed strictly, but nothing ties the media to it: the report says so).

The WebM holds every track of the call in a fixed order (docs/archive-format.md section 10); the
manifest's `tracks` say which participant filled which one (`id` is the stream's index in the
file) and `participants` give their roles, so the teller's and the customer's microphones and
cameras are found by role. The key moments are the manifest's marks (`consent.start` ...
`consent.end`, in media milliseconds): see `moment_spans`.

Media is streamed: audio is decoded track by track into 16 kHz mono (placed by its timestamps, so
a dropped connection stays silent where it was), and camera frames are decoded one at a time and
only the sampled ones converted to images.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compliance.asr import SAMPLE_RATE, Audio
from recorder.seal.keyring import KeyWrapper
from recorder.seal.manifest import (
    MANIFEST_OBJECT,
    Manifest,
    ManifestError,
    SegmentEntry,
    manifest_sha256,
    parse_manifest,
)
from recorder.verify import ArchiveReader, ObjectNotFound, verify_archive

#: `progress(stage, fraction)`: called regularly with a fraction from 0 to 1 within each stage.
Progress = Callable[[str, float], None]

# A hole in a track's timestamps longer than this is silence (a dropped connection, a muted
# microphone); shorter jitter is ignored. One Opus packet is 20 ms.
_AUDIO_GAP_MS = 30


class RecordingError(Exception):
    """The input cannot be analysed; the message says what to fix."""


def _no_progress(stage: str, fraction: float) -> None:
    return None


class StageProgress:
    """One stage's progress: forwarded at most once per percent (and always at its end)."""

    def __init__(self, progress: Progress | None, stage: str) -> None:
        self._progress = progress or _no_progress
        self._stage = stage
        self._last = -1.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if self._last >= 1.0:
            return
        if fraction >= 1.0 or fraction - self._last >= 0.01:
            self._last = fraction
            self._progress(self._stage, fraction)

    def part(self, low: float, high: float) -> Callable[[float], None]:
        """Progress of a sub-step that covers [low, high] of this stage."""

        def report(fraction: float) -> None:
            self(low + (high - low) * fraction)

        return report


@dataclass(frozen=True)
class MediaTrack:
    """One recorded track: stream `index` of the WebM (= the manifest track's id)."""

    index: int
    kind: str  # audio | video
    source: str  # microphone | camera | screen
    participant_id: str
    role: str  # the participant's role: teller, customer, expert, ...
    title: str  # the stream's name in the file, e.g. "customer camera"
    packets: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


@dataclass(frozen=True)
class Span:
    """Where a moment lies on the media timeline, from the manifest's marks."""

    moment: str
    start_ms: int
    end_ms: int
    # How the span ended: "end mark" (its own `.end`), "next moment" (an unclosed start, ended
    # at the next moment's start) or "recording end" (an unclosed start, nothing after it).
    ended_by: str
    # Other starts of the same moment (a teller redoing it): attempts this span replaced.
    replaced: int = 0

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def moment_spans(marks: Iterable[tuple[str, int]], end_ms: int) -> dict[str, Span]:
    """Each marked moment's span from `(name, media_ms)` marks (`<moment>.start` / `.end`).

    - A start closed by the next end of the same moment is a complete span; when a moment was
      marked several times (a teller redoing it), its last complete span counts.
    - A start never closed ends at the next start of another moment after it, or at `end_ms`
      (the recording's end), whichever comes first; it is used only when the moment has no
      complete span.
    - An end without a start, and marks named otherwise, are ignored.

    Marks are taken in media time order (the manifest's order among equal times).
    """
    ordered = sorted(
        ((name, ms, position) for position, (name, ms) in enumerate(marks)),
        key=lambda mark: (mark[1], mark[2]),
    )
    # (moment, phase, media ms, position in time order), for well-formed names only.
    parsed: list[tuple[str, str, int, int]] = []
    for name, ms, _ in ordered:
        moment, dot, phase = name.rpartition(".")
        if dot and moment and phase in ("start", "end"):
            parsed.append((moment, phase, ms, len(parsed)))
    starts = [(moment, ms, at) for moment, phase, ms, at in parsed if phase == "start"]
    complete: dict[str, list[tuple[int, int]]] = {}
    unclosed: dict[str, tuple[int, int]] = {}  # moment -> (media ms, position)
    open_start: dict[str, tuple[int, int]] = {}
    for moment, phase, ms, at in parsed:
        if phase == "start":
            if moment in open_start:
                unclosed[moment] = open_start[moment]
            open_start[moment] = (ms, at)
        elif moment in open_start:
            complete.setdefault(moment, []).append((open_start.pop(moment)[0], ms))
    unclosed.update(open_start)

    spans: dict[str, Span] = {}
    for moment in dict.fromkeys(m for m, _, _ in starts):
        done = complete.get(moment, [])
        attempts = sum(1 for m, _, _ in starts if m == moment)
        if done:
            start, end = done[-1]
            spans[moment] = Span(moment, start, end, "end mark", attempts - 1)
            continue
        start, position = unclosed[moment]
        following = [ms for other, ms, at in starts if other != moment and at > position]
        # A later start at the very same millisecond still ends it (an empty span): the teller
        # moved on without a word of this moment on the record.
        if following and following[0] < max(end_ms, start):
            spans[moment] = Span(moment, start, following[0], "next moment", attempts - 1)
        else:
            spans[moment] = Span(moment, start, max(end_ms, start), "recording end", attempts - 1)
    return spans


@dataclass
class Recording:
    """A decrypted recording on disk with its manifest; `close()` removes a temporary copy."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    verified: bool  # decrypted from an archive whose signature and every segment verified
    tracks: list[MediaTrack]
    duration_ms: int
    # Packet times (media ms) of every screen track, by stream index: "a document was shown".
    screen_packets: dict[int, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _temporary: Path | None = None

    @property
    def archive_id(self) -> str:
        return self.manifest.archive_id

    def track(self, role: str, source: str) -> MediaTrack | None:
        """The track of the participant with this role and source (the fullest if several)."""
        found = [t for t in self.tracks if t.role == role and t.source == source]
        return max(found, key=lambda t: (t.packets, -t.index), default=None)

    def spans(self) -> dict[str, Span]:
        end = max([self.duration_ms, *(m.media_ms for m in self.manifest.marks)])
        return moment_spans(((m.name, m.media_ms) for m in self.manifest.marks), end)

    def decode_audio(
        self, track: MediaTrack, progress: Callable[[float], None] | None = None
    ) -> Audio:
        """The track as 16 kHz mono float32, sample 0 at media time 0 (silence where missing)."""
        return decode_placed_audio(self.path, track.index, track.last_ms, progress)

    def sample_video(
        self,
        tracks: Sequence[MediaTrack],
        interval_ms: int,
        visit: Callable[[MediaTrack, int, np.ndarray], None],
        progress: Callable[[float], None] | None = None,
        windows: Mapping[int, Sequence[Window]] | None = None,
    ) -> None:
        """Decode the tracks once, and call `visit(track, media_ms, bgr)` for the first frame in
        every `interval_ms` of each (only those frames are converted to images), within
        `windows` where given (see sample_video)."""
        sample_video(self.path, tracks, interval_ms, visit, progress, windows)

    def close(self) -> None:
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _WebmWriter:
    """A PlaintextInspector that writes the verified plaintext to a file, reporting progress."""

    def __init__(self, path: Path, total: int, progress: Callable[[float], None]) -> None:
        self._file = path.open("wb")
        self._total = max(1, total)
        self._written = 0
        self._progress = progress

    def begin_segment(self, segment: SegmentEntry) -> None:
        return None

    def write(self, plaintext: bytes) -> None:
        self._file.write(plaintext)
        self._written += len(plaintext)
        self._progress(self._written / self._total)

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]:
        return []

    def end_archive(self, manifest: Manifest) -> list[str]:
        self._file.close()
        return []

    def close(self) -> None:
        self._file.close()


def peek_manifest(reader: ArchiveReader) -> Manifest:
    """The archive's manifest, parsed but not yet verified (to check the inputs early)."""
    try:
        return parse_manifest(reader.read(MANIFEST_OBJECT))
    except ObjectNotFound:
        raise RecordingError(f"the archive has no {MANIFEST_OBJECT}") from None
    except ManifestError as error:
        raise RecordingError(f"{MANIFEST_OBJECT} is not a valid manifest: {error}") from None


def open_archive(
    reader: ArchiveReader,
    public_keys: Mapping[str, bytes],
    keyring: KeyWrapper,
    *,
    work_dir: Path | None = None,
    progress: Progress | None = None,
) -> Recording:
    """Verify and decrypt an archive into a temporary WebM (in `work_dir`, default the system's
    temporary directory); RecordingError if anything does not verify."""
    manifest = peek_manifest(reader)
    total = sum(s.plaintext_size for s in manifest.segments)
    temporary = Path(tempfile.mkdtemp(prefix="vteller-analysis-", dir=work_dir))
    webm = temporary / "recording.webm"
    decrypting = StageProgress(progress, "decrypting")
    decrypting(0.0)
    writer = _WebmWriter(webm, total, decrypting)
    try:
        report = verify_archive(reader, public_keys, keyring=keyring, inspector=writer)
        writer.close()
        if not report.ok or report.manifest is None or not report.decrypted:
            problems = "; ".join(str(p) for p in report.problems) or "not decrypted"
            raise RecordingError(
                f"the archive does not verify, so it is not analysed: {problems} "
                "(check it with `vteller verify ... --keyring ...`)"
            )
        decrypting(1.0)
        verified = report.manifest
        recording = _describe(webm, verified, manifest_sha256(verified.canonical_bytes()), True)
        recording._temporary = temporary
        recording.notes += report.notes
        return recording
    except BaseException:
        writer.close()
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def open_decrypted(webm: Path, manifest_path: Path) -> Recording:
    """A recording decrypted earlier (e.g. by `vteller verify`'s tools) and its manifest.json."""
    try:
        data = manifest_path.read_bytes()
    except OSError as error:
        raise RecordingError(f"cannot read the manifest {manifest_path}: {error}") from None
    try:
        manifest = parse_manifest(data)
    except ManifestError as error:
        raise RecordingError(f"{manifest_path} is not a valid manifest: {error}") from None
    if not webm.is_file():
        raise RecordingError(f"{webm} is not a file")
    recording = _describe(webm, manifest, manifest_sha256(data), False)
    recording.notes.append(
        "analysed from a decrypted copy: the media was not verified against the signed manifest"
    )
    return recording


def _describe(webm: Path, manifest: Manifest, sha256: str, verified: bool) -> Recording:
    """Map the manifest's tracks onto the WebM's streams and read their time spans."""
    import av

    roles = {p.id: p.role for p in manifest.participants}
    screens: dict[int, list[int]] = {}
    stats: dict[int, list[int]] = {}  # index -> [packets, first_ms, last_ms]
    try:
        with av.open(str(webm)) as container:
            streams = {s.index: s for s in container.streams}
            tracks: list[MediaTrack] = []
            for entry in manifest.tracks:
                index = int(entry.id) if entry.id.isdigit() else -1
                stream = streams.get(index)
                if stream is None or stream.type != entry.kind:
                    raise RecordingError(
                        f"the manifest's track {entry.id} ({entry.kind} {entry.source}) is not "
                        f"stream {entry.id} of {webm.name}: is this the recording of archive "
                        f"{manifest.archive_id}?"
                    )
            for entry in manifest.tracks:
                if entry.source == "screen":
                    screens[int(entry.id)] = []
            packet: Any
            for packet in container.demux():
                if packet.pts is None or packet.size == 0:
                    continue
                index = packet.stream.index
                ms = int(packet.pts * packet.time_base * 1000)
                stat = stats.setdefault(index, [0, ms, ms])
                stat[0] += 1
                stat[1] = min(stat[1], ms)
                end = ms + int((packet.duration or 0) * packet.time_base * 1000)
                stat[2] = max(stat[2], end)
                if index in screens:
                    screens[index].append(ms)
    except av.error.FFmpegError as error:
        raise RecordingError(f"{webm} does not open as a WebM recording: {error}") from None
    for entry in manifest.tracks:
        index = int(entry.id)
        packets, first, last = stats.get(index, [0, None, None])
        tracks.append(
            MediaTrack(
                index=index,
                kind=entry.kind,
                source=entry.source,
                participant_id=entry.participant_id,
                role=roles.get(entry.participant_id, "unknown"),
                title=str(streams[index].metadata.get("title", "")),
                packets=packets or 0,
                first_ms=first,
                last_ms=last,
            )
        )
    duration = max((s[2] for s in stats.values()), default=0)
    for times in screens.values():
        times.sort()
    return Recording(webm, manifest, sha256, verified, tracks, duration, screens)


def decode_placed_audio(
    path: Path,
    index: int,
    last_ms: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> Audio:
    """Stream `index` of a media file as 16 kHz mono float32 placed by its timestamps.

    Sample 0 is media time 0: the stretch before the track's first packet, and any hole in its
    timestamps longer than _AUDIO_GAP_MS (a dropped connection), are silence, so times in the
    audio are times in the recording. Decoded frames are written into one preallocated array
    (no list of chunks to join at the end).
    """
    import av

    capacity = ((last_ms or 0) + 1000) * SAMPLE_RATE // 1000
    out = np.zeros(capacity, dtype=np.float32)
    length = 0
    with av.open(str(path)) as container:
        stream = container.streams[index]
        if stream.type != "audio":
            raise RecordingError(f"stream {index} of {path.name} is not audio")
        resampler: Any = None
        position = 0  # where the current run of contiguous frames starts (16 kHz samples)
        produced = 0  # samples the current run has produced so far
        expected_ms: float | None = None  # when the next frame should start if contiguous

        def emit(frames: Iterable[Any]) -> None:
            nonlocal out, produced, length
            for frame in frames:
                samples = frame.to_ndarray().reshape(-1)
                start = position + produced
                end = start + len(samples)
                if end > len(out):
                    out = np.concatenate([out, np.zeros(end - len(out) + SAMPLE_RATE, np.float32)])
                out[start:end] = samples
                produced += len(samples)
                length = max(length, end)

        frame: Any
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            start_ms = float(frame.pts * frame.time_base * 1000)
            if resampler is None or expected_ms is None or start_ms > expected_ms + _AUDIO_GAP_MS:
                if resampler is not None:
                    emit(resampler.resample(None))
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                position = max(length, round(start_ms * SAMPLE_RATE / 1000))
                produced = 0
            emit(resampler.resample(frame))
            expected_ms = start_ms + 1000 * frame.samples / frame.sample_rate
            if progress is not None and last_ms:
                progress(start_ms / last_ms)
        if resampler is not None:
            emit(resampler.resample(None))
    return out[:length]


# Packets held back (not decoded) while a track is outside its windows: about 30 s of a 20 fps
# camera. A recording with rarer keyframes than that is decoded through instead.
_HELD_PACKETS = 600

Window = tuple[int, int]  # [start, end) media ms


def sample_video(
    path: Path,
    tracks: Sequence[MediaTrack],
    interval_ms: int,
    visit: Callable[[MediaTrack, int, np.ndarray], None],
    progress: Callable[[float], None] | None = None,
    windows: Mapping[int, Sequence[Window]] | None = None,
) -> None:
    """Hand over the first frame in each `interval_ms` cell of media time, per track.

    `windows` (by track index) limits that to the cells that overlap the given spans; frames
    elsewhere are then not decoded at all, except to reach a window: VP8 frames depend on the
    previous ones back to a keyframe, so the packets since the last keyframe are held and
    decoded when a window opens (the recorder asks for a keyframe every few seconds and at each
    moment mark). Without `windows`, every frame is decoded.
    """
    import av

    if not tracks:
        return
    by_index = {t.index: t for t in tracks}
    cells = {
        index: [(lo // interval_ms * interval_ms, hi) for lo, hi in spans if hi > lo]
        for index, spans in (windows or {}).items()
    }
    total = max(1, sum(t.packets for t in tracks))
    seen: dict[int, set[int]] = {t.index: set() for t in tracks}
    held: dict[int, list[Any]] = {t.index: [] for t in tracks}
    done = 0

    def decode(track: MediaTrack, packet: Any, sample: bool) -> None:
        for frame in _decode(packet):
            if not sample or frame.pts is None:
                continue
            ms = int(frame.pts * frame.time_base * 1000)
            cell = ms // interval_ms
            if ms < 0 or cell in seen[track.index]:
                continue
            seen[track.index].add(cell)
            visit(track, ms, frame.to_ndarray(format="bgr24"))

    with av.open(str(path)) as container:
        streams = [container.streams[t.index] for t in tracks]
        packet: Any
        for packet in container.demux(*streams):
            if packet.size == 0:
                continue
            done += 1
            track = by_index[packet.stream.index]
            if track.index in cells:
                pending = held[track.index]
                if packet.is_keyframe:
                    pending.clear()  # the decoder starts over from a keyframe
                ms = int(packet.pts * packet.time_base * 1000) if packet.pts is not None else -1
                if not any(lo <= ms < hi for lo, hi in cells[track.index]):
                    if all(ms >= hi for _, hi in cells[track.index]):
                        continue  # past the last window: nothing more to decode
                    pending.append(packet)
                    if len(pending) > _HELD_PACKETS:
                        for earlier in pending:
                            decode(track, earlier, sample=False)
                        pending.clear()
                    continue
                for earlier in pending:
                    decode(track, earlier, sample=False)
                pending.clear()
            decode(track, packet, sample=True)
            if progress is not None and done % 30 == 0:
                progress(done / total)
    if progress is not None:
        progress(1.0)


def _decode(packet: Any) -> Iterator[Any]:
    import av

    try:
        yield from packet.decode()
    except av.error.InvalidDataError:
        # A damaged frame (a packet lost on the network before recording): skip it, as a
        # player would; the following key frame recovers the picture.
        return
