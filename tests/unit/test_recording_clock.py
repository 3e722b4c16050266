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


def test_frames_keep_their_spacing_when_a_busy_sender_reports_late() -> None:
    track = _track()
    placed = [track.media_ms(_report(100.0, 0), _frame(i)) for i in range(50)]
    # One second later the sender is 400 ms behind: it reports the wall clock of sending on
    # the RTP time of the frame it captured 400 ms earlier.
    late = _report(101.4, 50)
    placed += [track.media_ms(late, _frame(i)) for i in range(50, 100)]
    steps = {b - a for a, b in itertools.pairwise(placed)}
    assert steps == {20}, "a report's scheduling lag would have cut a hole into the audio"


def test_a_report_with_less_lag_is_taken() -> None:
    track = _track()
    first = track.media_ms(_report(100.3, 0), _frame(0))  # the first report was 300 ms late
    better = _report(101.0, 50)
    assert track.media_ms(better, _frame(50)) == first + 1000 - 300


def test_a_restarted_rtp_clock_is_followed() -> None:
    track = _track()
    track.media_ms(_report(100.0, 0), _frame(0))
    # The sender's RTP time stood still for longer than any scheduling lag.
    paused_s = (REANCHOR_MS + 500) / 1000
    restarted = _report(101.0 + paused_s, 50)
    assert track.media_ms(restarted, _frame(50)) == round((101.0 + paused_s) * 1000)
