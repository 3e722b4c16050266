"""The verifier's playability check demuxes the decrypted recording as it streams by: nothing of
it reaches the disk, and bytes FFmpeg cannot read never stall the verifier."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest

from recorder.playback import MediaInspector
from recorder.seal.manifest import Manifest, SegmentEntry


def _webm(frames: int = 40) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as out:
        video = out.add_stream("libvpx", rate=20)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        out.mux(video.encode())
    return buffer.getvalue()


def _fed(
    inspector: MediaInspector,
    data: bytes,
    chunk: int = 997,
    while_open: Callable[[], list[Path]] = list,
) -> list[str]:
    """The inspector's problems once `data` went through it; `while_open` must find no file
    while the whole recording has been written and the archive is not yet ended."""
    segment = cast(SegmentEntry, None)
    inspector.begin_segment(segment)
    for start in range(0, len(data), chunk):
        inspector.write(data[start : start + chunk])
    inspector.end_segment(segment, authentic=True)
    assert while_open() == []
    return inspector.end_archive(cast(Manifest, _NoSegments()))


class _NoSegments:
    """The part of a manifest the check reads: no segments, so no media is required."""

    segments: tuple[SegmentEntry, ...] = ()


def test_the_recording_is_demuxed_in_memory_and_never_written_to_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    inspector = MediaInspector()
    problems = _fed(inspector, _webm(), while_open=lambda: list(tmp_path.iterdir()))
    assert inspector.summary is not None
    assert [s.packets for s in inspector.summary.streams] == [40]
    assert problems == [f"media: 1 tracks in the file, the recorder writes {_declared()}"]
    assert list(tmp_path.iterdir()) == []


def test_bytes_that_are_no_webm_are_a_problem_not_a_hang() -> None:
    # Far more than a pipe holds: the demuxer gives up early and must still drain the rest.
    problems = _fed(MediaInspector(), b"\x00garbage" * 200_000, chunk=65_536)
    assert len(problems) == 1 and problems[0].startswith("media: the decrypted recording does")


def test_nothing_decrypted_is_a_problem() -> None:
    assert MediaInspector().end_archive(cast(Manifest, _NoSegments())) == [
        "media: the decrypted recording does not open as WebM: no media was decrypted"
    ]


def _declared() -> int:
    from recorder.container import standard_slots

    return len(standard_slots())
