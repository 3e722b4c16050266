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
and takes a later report's only when it has less lag or disagrees by more than REANCHOR_MS (the
sender's RTP clock stood still: a paused or restarted source).
"""

from __future__ import annotations

from collections.abc import Callable

from server.sfu.encoded import EncodedFrame, SenderReport

# Scheduling lag stays in the hundreds of milliseconds; a report this much later than the
# track's mapping means the sender's RTP clock stood still and the track continues later.
REANCHOR_MS = 1500.0


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

    def media_ms(self, report: SenderReport, frame: EncodedFrame) -> int:
        if report is not self._report:
            self._report = report
            at_zero = report.ntp_seconds * 1000 - report.rtp_timestamp * 1000 / report.clock_rate
            current = self._sender_ms_at_zero
            if current is None or at_zero < current or at_zero - current > REANCHOR_MS:
                self._sender_ms_at_zero = at_zero
        assert self._sender_ms_at_zero is not None
        sender_ms = self._sender_ms_at_zero + frame.timestamp * 1000 / frame.clock_rate
        return self._participant.media_ms(report, sender_ms)
