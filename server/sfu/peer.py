"""One participant's RTCPeerConnection on the server, and its transceiver bookkeeping.

The server is always the offerer (docs/protocol.md 2.4): receive-only transceivers for what the
participant publishes, send-only ones for what it receives. Transceivers of participants who left
are set inactive and reused for the next one, so a long session does not grow its SDP forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription, candidate_from_sdp

from server.settings import IceServer
from server.sfu.forwarding import ForwardedTrack, Publication
from server.sfu.ice_policy import IcePolicy
from server.signaling.protocol import IceCandidate, ProtocolError, server_message

log = structlog.get_logger(__name__)

SOURCE_KIND = {"microphone": "audio", "camera": "video", "screen": "video"}
# A browser trickles a handful (host, server-reflexive and relay, per interface and transport).
# Each one makes aioice re-sort every candidate pair and aiortc keep another line of SDP, so an
# unbounded stream of them would eventually occupy the worker's whole event loop.
MAX_REMOTE_CANDIDATES = 30
SendMessage = Callable[[dict[str, Any]], Awaitable[None]]
# What an answer may say for each direction the server offered (RFC 3264 6.1): the client sends
# only where the server receives. aiortc applies whatever the answer says, and media sent on a
# consumer's m-line would get a receiver that decodes it into a queue nobody reads.
_ANSWERABLE = {
    "sendonly": ("recvonly", "inactive"),
    "recvonly": ("sendonly", "inactive"),
    "inactive": ("inactive",),
    "sendrecv": ("sendrecv", "sendonly", "recvonly", "inactive"),
}


@dataclass
class _Outgoing:
    transceiver: RTCRtpTransceiver
    # What the sender reads for as long as the peer lives, whoever it carries: stopping it
    # would end the sender's RTP loop for good (aiortc 1.16 exits it on MediaStreamError and
    # never restarts it), and whoever reused the slot would reach nobody.
    sending: ForwardedTrack
    in_use: bool = True  # False: free for reuse (inactive)

    @property
    def track(self) -> ForwardedTrack | None:
        return self.sending if self.in_use else None


class Peer:
    def __init__(
        self,
        observe_delay: Callable[[float], None] | None,
        participant_id: str,
        publishes: tuple[str, ...],
        send: SendMessage,
        ice_servers: list[IceServer],
        policy: IcePolicy,
        video_codec: str,
    ) -> None:
        self.participant_id = participant_id
        self._observe_delay = observe_delay
        self._send = send
        self._policy = policy
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                    for s in ice_servers
                ],
                # One transport for everything. With aiortc's default (balanced), transceivers
                # added before the first answer keep a transport that BUNDLE then discards.
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        self._codecs = {
            kind: [
                codec
                for codec in RTCRtpSender.getCapabilities(kind).codecs
                if codec.mimeType in (preferred, f"{kind}/rtx")
            ]
            for kind, preferred in (("audio", "audio/opus"), ("video", f"video/{video_codec}"))
        }
        self._publish = [
            (self.pc.addTransceiver(SOURCE_KIND[source], direction="recvonly"), source)
            for source in publishes
        ]
        for transceiver, _ in self._publish:
            self._prefer_codec(transceiver)
        self._outgoing: list[_Outgoing] = []
        self._lock = asyncio.Lock()
        self._offer_outstanding = False
        self._renegotiate = False
        self._remote_candidates = 0
        self._answered_candidates: set[tuple[str, ...]] = set()
        self._candidates_ended = False

    def _prefer_codec(self, transceiver: RTCRtpTransceiver) -> None:
        # Forwarding never transcodes, so every participant of a session must use one codec.
        transceiver.setCodecPreferences(self._codecs[transceiver.kind])

    def source_of(self, track: Any) -> tuple[RTCRtpReceiver, str] | None:
        """Which of this participant's sources an incoming track is, and its receiver."""
        for transceiver, source in self._publish:
            if transceiver.receiver.track is track:
                return transceiver.receiver, source
        return None

    def forward(
        self, participant_id: str, source: str, publication: Publication | None
    ) -> ForwardedTrack:
        """Send (participant, source) to this peer; call negotiate() afterwards."""
        existing = self.forwarded(participant_id, source)
        if existing is not None:
            existing.attach(publication)
            return existing
        kind = SOURCE_KIND[source]
        for slot in self._outgoing:
            if not slot.in_use and slot.transceiver.kind == kind:
                track = slot.sending
                track.participant_id, track.source_name = participant_id, source
                track.attach(publication)
                slot.transceiver.direction = "sendonly"
                slot.in_use = True
                return track
        track = ForwardedTrack(kind, participant_id, source, self._observe_delay)
        track.attach(publication)
        transceiver = self.pc.addTransceiver(track, direction="sendonly")
        self._prefer_codec(transceiver)
        track.bind(transceiver.sender)
        self._outgoing.append(_Outgoing(transceiver, track))
        return track

    def forwarded(self, participant_id: str, source: str) -> ForwardedTrack | None:
        for slot in self._outgoing:
            if slot.track and (slot.track.participant_id, slot.track.source_name) == (
                participant_id,
                source,
            ):
                return slot.track
        return None

    def stop_forwarding(self, participant_id: str) -> bool:
        """Stop sending a participant's tracks; True when renegotiation is needed."""
        changed = False
        for slot in self._outgoing:
            if slot.track and slot.track.participant_id == participant_id:
                slot.sending.attach(None)  # paused, not stopped: see _Outgoing
                slot.transceiver.direction = "inactive"
                slot.in_use = False
                changed = True
        return changed

    async def negotiate(self) -> None:
        """Send a new offer now, or as soon as the outstanding one is answered."""
        async with self._lock:
            if self._offer_outstanding or self.pc.connectionState == "closed":
                self._renegotiate = True
                return
            self._renegotiate = False
            await self.pc.setLocalDescription(await self.pc.createOffer())
            self._offer_outstanding = True
            offer = self.pc.localDescription
        await self._send(
            server_message(
                "offer",
                sdp=offer.sdp,
                publish=[{"mid": t.mid, "source": source} for t, source in self._publish],
                tracks=[
                    {
                        "mid": slot.transceiver.mid,
                        "participant_id": slot.track.participant_id,
                        "source": slot.track.source_name,
                    }
                    for slot in self._outgoing
                    if slot.track is not None
                ],
            )
        )

    async def accept_answer(self, sdp: str) -> None:
        async with self._lock:
            if not self._offer_outstanding:
                raise ProtocolError("out_of_order", "There is no offer to answer.", "answer")
            try:
                offer = self.pc.localDescription
                assert offer is not None  # an offer is outstanding
                _check_directions(offer.sdp, sdp)
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(
                        sdp=self._cap_candidates(self._policy.filter_sdp(sdp)), type="answer"
                    )
                )
            except Exception as exc:
                raise ProtocolError(
                    "invalid_sdp", f"The answer could not be applied: {exc}", "answer"
                ) from exc
            self._offer_outstanding = False
            again = self._renegotiate
        if again:
            await self.negotiate()

    def _cap_candidates(self, sdp: str) -> str:
        """The answer without the candidates beyond the cap: those in answers count against it
        like trickled ones (a 32 KiB answer holds some 600). One candidate repeated on every
        bundled m-line, as aiortc clients write it, counts once."""
        kept: list[str] = []
        dropped = 0
        for line in sdp.splitlines():
            fields = line.split()
            if line.startswith("a=candidate:") and len(fields) >= 8:
                # Another path for ICE to check only with another component, transport, address
                # or port (aioice ignores a repeated one).
                key = (fields[1], fields[2].lower(), fields[4], fields[5])
                if key not in self._answered_candidates:
                    if self._remote_candidates >= MAX_REMOTE_CANDIDATES:
                        dropped += 1
                        continue
                    self._answered_candidates.add(key)
                    self._remote_candidates += 1
            kept.append(line)
        if dropped:
            log.warning(
                "answer_candidates_capped", participant_id=self.participant_id, dropped=dropped
            )
        return "\r\n".join(kept) + "\r\n"

    async def add_candidate(self, candidate: IceCandidate | None) -> None:
        """Trickled ICE. Candidates past the cap or after end-of-candidates are ignored
        (docs/protocol.md 2.2): the connection has what it needs, and aioice refuses them."""
        if self.pc.remoteDescription is None:
            raise ProtocolError("out_of_order", "Send ICE candidates after the answer.", "ice")
        if self._candidates_ended:
            return
        if candidate is None:
            self._candidates_ended = True
            await self.pc.addIceCandidate(None)
            return
        line = candidate.candidate.removeprefix("a=")
        if not line:  # the browser's empty end-of-candidates marker
            return
        if not self._policy.allows_candidate_line(line):
            return
        try:
            parsed = candidate_from_sdp(line.split(":", 1)[1])
        except (AssertionError, IndexError, ValueError) as exc:
            raise ProtocolError(
                "invalid_message", "candidate: not an ICE candidate", "ice"
            ) from exc
        parsed.sdpMid = candidate.sdpMid
        parsed.sdpMLineIndex = candidate.sdpMLineIndex
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            raise ProtocolError(
                "invalid_message", "candidate: needs sdpMid or sdpMLineIndex", "ice"
            )
        self._remote_candidates += 1
        if self._remote_candidates > MAX_REMOTE_CANDIDATES:
            if self._remote_candidates == MAX_REMOTE_CANDIDATES + 1:  # once, not per frame
                log.warning("ice_candidates_capped", participant_id=self.participant_id)
            return
        await self.pc.addIceCandidate(parsed)

    async def close(self) -> None:
        for slot in self._outgoing:
            slot.sending.stop()
        await self.pc.close()


def _check_directions(offer: str, answer: str) -> None:
    """Raise ValueError unless every m-line of `answer` sends at most where `offer` receives."""
    pairs = zip(
        SessionDescription.parse(offer).media, SessionDescription.parse(answer).media, strict=False
    )
    for offered, answered in pairs:
        # An m-line without a direction attribute is sendrecv (RFC 4566 6).
        allowed = _ANSWERABLE[offered.direction or "sendrecv"]
        if (answered.direction or "sendrecv") not in allowed:
            raise ValueError(
                f"m-line {answered.rtp.muxId}: the server offered {offered.direction}, so the "
                f"answer may only be {' or '.join(allowed)}, not {answered.direction or 'sendrecv'}"
            )
