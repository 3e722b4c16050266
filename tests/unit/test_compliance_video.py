"""Sampling a camera track for face counting: only inside the windows asked for, decoded from
the keyframe before each, with the right pictures (compliance/recording.py, sample_video)."""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from compliance import recording
from compliance.recording import MediaTrack, sample_video

FPS = 10
FRAMES = 200  # 20 s
GOP = 20  # a keyframe every 2 s, as the recorder asks for them


def _grey(index: int) -> int:
    return 20 + index % 10 * 20  # each frame of a second a different shade


def _camera(path: Path, gop: int = GOP) -> MediaTrack:
    out = av.open(str(path), "w", format="webm")
    stream = out.add_stream("libvpx", rate=FPS, options={"deadline": "realtime"})
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    stream.codec_context.gop_size = gop
    for index in range(FRAMES):
        frame = av.VideoFrame.from_ndarray(
            np.full((120, 160, 3), _grey(index), dtype=np.uint8), format="bgr24"
        )
        frame.pts, frame.time_base = index, fractions.Fraction(1, FPS)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return MediaTrack(0, "video", "camera", "p_customer", "customer", "customer camera", FRAMES)


def _sample(
    path: Path, track: MediaTrack, windows: dict[int, list[tuple[int, int]]] | None
) -> tuple[dict[int, int], int]:
    """(media ms -> the frame's grey level) of every sample, and how many packets were decoded."""
    seen: dict[int, int] = {}

    def visit(_: MediaTrack, ms: int, bgr: np.ndarray) -> None:
        seen[ms] = int(bgr.mean())

    decoded = 0
    original = recording._decode

    def counting(packet: Any) -> Any:
        nonlocal decoded
        decoded += 1
        return original(packet)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recording, "_decode", counting)
        sample_video(path, [track], 1000, visit, windows=windows)
    return seen, decoded


def test_only_the_windows_are_sampled_and_decoded_from_their_keyframe(tmp_path: Path) -> None:
    path = tmp_path / "camera.webm"
    track = _camera(path)
    everything, all_decoded = _sample(path, track, None)
    assert sorted(everything) == [s * 1000 for s in range(20)] and all_decoded == FRAMES

    # 5.5-8.2 s: the cells of seconds 5 to 8; decoding starts at the keyframe at 4 s.
    seen, decoded = _sample(path, track, {0: [(5500, 8200)]})
    assert sorted(seen) == [5000, 6000, 7000, 8000]
    assert decoded == (8200 - 4000) // 100
    for ms, grey in seen.items():
        assert abs(grey - _grey(ms // 100)) <= 3, "a frame decoded without its references"
        assert grey == pytest.approx(everything[ms], abs=1)


def test_a_window_far_from_any_keyframe_is_still_decoded_correctly(tmp_path: Path) -> None:
    path = tmp_path / "camera.webm"
    track = _camera(path, gop=FRAMES)  # one keyframe, at the start (an older recording)
    # More packets since it than are held back: they are decoded through instead.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recording, "_HELD_PACKETS", 50)
        seen, decoded = _sample(path, track, {0: [(13_000, 14_000)]})
    assert sorted(seen) == [13_000]
    assert abs(seen[13_000] - _grey(130)) <= 3
    assert decoded == 14_000 // 100  # everything before the window's end
