"""How one participant's published track reaches the others: the SFU's only media seam.

Media is forwarded as the publisher encoded it (server/sfu/encoded.py): nothing is decoded or
re-encoded on the way. A `Publication` is one incoming track (a participant's microphone, camera
or screen). Each consumer reads a `ForwardedTrack`, which outlives publications: when the
publisher reconnects, the consumer's track is switched to the new publication (starting at a
keyframe, timestamps continuing) and the consumer's sender never stops, so nobody else
renegotiates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender

from server.sfu.encoded import (
    EncodedFrame,
    EncodedSource,
    EncodedTrack,
    bind_sender,
    tap_receiver,
)


class Publication:
    def __init__(
        self, participant_id: str, source: str, receiver: RTCRtpReceiver, track: MediaStreamTrack
    ) -> None:
        self.participant_id = participant_id
        self.source = source
        self.encoded: EncodedSource = tap_receiver(receiver, track)

    def close(self) -> None:
        """Detach consumers first (ForwardedTrack.attach(None)): closing ends those still on it."""
        self.encoded.close()


class ForwardedTrack(EncodedTrack):
    """A consumer's view of (publisher, source); it waits, rather than ends, while detached."""

    def __init__(
        self,
        kind: str,
        participant_id: str,
        source: str,
        observe_delay: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(None, kind=kind)
        self.participant_id = participant_id
        self.source_name = source
        self._observe_delay = observe_delay

    def attach(self, publication: Publication | None) -> None:
        if self.readyState != "live":
            # The consumer's sender stopped it (its peer connection closed before the
            # consumer's departure was processed): there is no one left to forward to.
            return
        self.switch_source(publication.encoded if publication is not None else None)

    def _packet(self, source: EncodedSource, frame: EncodedFrame, arrival: float) -> av.Packet[Any]:
        if self._observe_delay is not None:
            self._observe_delay(time.monotonic() - arrival)  # arrival is time.monotonic()
        return super()._packet(source, frame, arrival)

    def bind(self, sender: RTCRtpSender) -> None:
        """Keyframe requests from this consumer go to whichever publication it follows."""
        bind_sender(sender, self)
