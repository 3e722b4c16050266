"""Placing a publisher's frames by its sender reports (recorder/clock.py)."""

from __future__ import annotations

import itertools

from recorder.clock import REANCHOR_MS, ParticipantClock, TrackClock
from server.sfu.encoded import EncodedFrame, SenderReport

RATE = 48000
FRAME = 960  # 20 ms of Opus


def _frame(index: int) -> EncodedFrame:
    return EncodedFrame(b"x", index * FRAME, True, "audio/opus", RATE)


def _report(ntp_seconds: float, frame_index: int) -> SenderReport:
    # received_at is monotonic seconds; the recording's media ms is received_at * 1000 here.
    return SenderReport(ntp_seconds, frame_index * FRAME, RATE, received_at=ntp_seconds)


def _track() -> TrackClock:
    return TrackClock(ParticipantClock(lambda monotonic: monotonic * 1000))


def _place(track: TrackClock, report: SenderReport, frames: range, start: float) -> list[int]:
    """Frames arriving every 20 ms from `start` (monotonic seconds)."""
    return [track.media_ms(report, _frame(i), start + (i - frames[0]) * 0.02) for i in frames]


def test_frames_keep_their_spacing_when_a_busy_sender_reports_late() -> None:
    track = _track()
    placed = _place(track, _report(100.0, 0), range(50), 100.0)
    # One second later the sender is 400 ms behind: it reports the wall clock of sending on
    # the RTP time of the frame it captured 400 ms earlier.
    placed += _place(track, _report(101.4, 50), range(50, 100), 101.4)
    steps = {b - a for a, b in itertools.pairwise(placed)}
    assert steps == {20}, "a report's scheduling lag would have cut a hole into the audio"


def test_a_report_with_less_lag_is_taken() -> None:
    track = _track()
    first = track.media_ms(_report(100.3, 0), _frame(0), 100.3)  # a report 300 ms late
    better = _report(101.0, 50)
    assert track.media_ms(better, _frame(50), 101.0) == first + 1000 - 300


def test_a_sender_whose_rtp_clock_stood_still_continues_later() -> None:
    track = _track()
    first = _report(100.0, 0)
    _place(track, first, range(50), 100.0)
    # The source paused: the next frame carries the next RTP time but arrives much later.
    paused = (REANCHOR_MS + 500) / 1000
    resumed = 101.0 + paused
    assert track.media_ms(first, _frame(50), resumed) == round(resumed * 1000)
    # Its next report confirms it, and is followed although it is later than the first.
    report = _report(resumed + 0.5, 75)
    assert track.media_ms(report, _frame(75), resumed + 0.5) == round((resumed + 0.5) * 1000)
