"""The recording's common clock: where each publisher's frames go on the timeline.

Media time 0 is the consent moment. A publisher's frames are placed by its RTCP sender reports
when it has sent one: they give the sender's wall clock for an RTP time, and the sender's audio
and video share that wall clock, which is what keeps lips in sync. One offset per participant
maps that wall clock onto the recording's clock (taken when its first report arrives, so it
includes the network delay once, equally for all of its tracks). Before any report, a track is
placed by when its first frame arrived, which can put video some tens of milliseconds behind
audio (video frames wait in the jitter buffer for the next frame to start).

A report is only as good as the sender's scheduling: a sender that runs late (a busy machine)
stamps the wall clock of *sending* on the RTP time of a frame captured earlier. Following each
report as it comes would push a track forward by that lag and back again on the next report,
cutting holes into speech. So a track keeps one mapping, the one with the least lag seen so far,
and moves it later only when its frames say the sender's RTP clock stood still (a paused or
restarted source): a frame that arrives REANCHOR_MS later than its RTP time says. The next
report then places the track exactly. A sender whose RTP clock runs slow against its wall
clock is placed early by that drift (100 ppm: 0.18 s after 30 minutes).
"""

from __future__ import annotations

from collections.abc import Callable

from server.sfu.encoded import EncodedFrame, SenderReport

# Frames arriving this much later than their RTP spacing says: the sender's RTP clock stood
# still (jitter and scheduling lag stay in the hundreds of milliseconds).
REANCHOR_MS = 1000.0


class ParticipantClock:
    """Maps one participant's sender wall clock onto the recording's media time."""

    def __init__(self, media_ms_at: Callable[[float], float]) -> None:
        self._media_ms_at = media_ms_at
        self._offset_ms: float | None = None

    def media_ms(self, report: SenderReport, sender_ms: float) -> int:
        if self._offset_ms is None:
            self._offset_ms = self._media_ms_at(report.received_at) - report.ntp_seconds * 1000
        return round(sender_ms + self._offset_ms)


class TrackClock:
    """One track's RTP time -> its sender's wall clock, steady between sender reports."""

    def __init__(self, participant: ParticipantClock) -> None:
        self._participant = participant
        self._report: SenderReport | None = None
        self._sender_ms_at_zero: float | None = None  # the sender's wall clock at RTP time 0
        self._resync = False  # take the next report as it is
        self._last: tuple[float, float] | None = None  # (arrival ms, RTP ms) of the last frame

    def media_ms(self, report: SenderReport, frame: EncodedFrame, arrived: float) -> int:
        """`arrived`: time.monotonic() when the frame arrived."""
        rtp_ms = frame.timestamp * 1000 / frame.clock_rate
        arrived_ms = arrived * 1000
        if self._last is not None and self._sender_ms_at_zero is not None:
            stood_still = (arrived_ms - self._last[0]) - (rtp_ms - self._last[1])
            if stood_still > REANCHOR_MS:
                self._sender_ms_at_zero += stood_still
                self._resync = True
        self._last = (arrived_ms, rtp_ms)
        if report is not self._report:
            self._report = report
            at_zero = report.ntp_seconds * 1000 - report.rtp_timestamp * 1000 / report.clock_rate
            current = self._sender_ms_at_zero
            if current is None or at_zero < current or self._resync:
                self._sender_ms_at_zero = at_zero
                self._resync = False
        assert self._sender_ms_at_zero is not None
        return self._participant.media_ms(report, self._sender_ms_at_zero + rtp_ms)
