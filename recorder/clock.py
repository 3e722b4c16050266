"""The recording's common clock: where each publisher's frames go on the timeline.

Media time 0 is the consent moment. A publisher's frames are placed by its RTCP sender reports
when it has sent one: they give the sender's wall clock for an RTP time, and the sender's audio
and video share that wall clock, which is what keeps lips in sync. One offset per participant
maps that wall clock onto the recording's clock (taken when its first report arrives, so it
includes the network delay once, equally for all of its tracks). Before any report, a track is
placed by when its first frame arrived, which can put video some tens of milliseconds behind
audio (video frames wait in the jitter buffer for the next frame to start).
"""

from __future__ import annotations

from collections.abc import Callable

from server.sfu.encoded import EncodedFrame, SenderReport


class ParticipantClock:
    """Maps one participant's sender wall clock onto the recording's media time."""

    def __init__(self, media_ms_at: Callable[[float], float]) -> None:
        self._media_ms_at = media_ms_at
        self._offset_ms: float | None = None

    def media_ms(self, report: SenderReport, frame: EncodedFrame) -> int:
        sender_ms = (
            report.ntp_seconds * 1000
            + (frame.timestamp - report.rtp_timestamp) * 1000 / report.clock_rate
        )
        if self._offset_ms is None:
            self._offset_ms = self._media_ms_at(report.received_at) - report.ntp_seconds * 1000
        return round(sender_ms + self._offset_ms)
