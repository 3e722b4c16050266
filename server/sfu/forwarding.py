"""How one participant's published track reaches the others: the SFU's only media seam.

A `Publication` is one incoming track (a participant's microphone, camera or screen); it reads
the track continuously (an unread aiortc track queues without bound) and hands every frame to
the consumers attached at that moment. Each consumer reads a `ForwardedTrack`, which outlives
publications: when the publisher reconnects, the consumer's track is attached to the new
publication and the consumer's sender never stops, so nobody else renegotiates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

# Frames a consumer may fall behind by before the oldest are dropped (about 0.4 s of video).
CONSUMER_BACKLOG = 8


class Publication:
    def __init__(self, participant_id: str, source: str, track: MediaStreamTrack) -> None:
        self.participant_id = participant_id
        self.source = source
        self.kind = track.kind
        self._track = track
        self._consumers: set[ForwardedTrack] = set()
        self._pump = asyncio.ensure_future(self._run())

    def add(self, consumer: ForwardedTrack) -> None:
        self._consumers.add(consumer)

    def remove(self, consumer: ForwardedTrack) -> None:
        self._consumers.discard(consumer)

    async def _run(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await self._track.recv()
                for consumer in self._consumers:
                    consumer.deliver(frame)

    def close(self) -> None:
        self._pump.cancel()
        self._track.stop()
        self._consumers.clear()


class ForwardedTrack(MediaStreamTrack):
    """A consumer's view of (publisher, source); it waits, rather than ends, while detached."""

    def __init__(self, kind: str, participant_id: str, source: str) -> None:
        super().__init__()
        self.kind = kind
        self.participant_id = participant_id
        self.source = source
        self._publication: Publication | None = None
        self._frames: collections.deque[Any] = collections.deque(maxlen=CONSUMER_BACKLOG)
        self._ready = asyncio.Event()

    def attach(self, publication: Publication | None) -> None:
        if self._publication is not None:
            self._publication.remove(self)
        self._publication = publication
        if publication is not None:
            publication.add(self)

    def deliver(self, frame: Any) -> None:
        self._frames.append(frame)
        self._ready.set()

    async def recv(self) -> Any:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        self.attach(None)
        super().stop()
        self._frames.clear()
        self._ready.set()  # wake a pending recv so it sees readyState "ended"
