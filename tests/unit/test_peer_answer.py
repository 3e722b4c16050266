"""The client's answer (server/sfu/peer.py): it may send only where the server offered to receive.

aiortc takes an answer's directions as they come. A client answering `sendrecv` on the m-line of
a track the server forwards to it would have the server receive there: aiortc gives that
transceiver a remote track and a decoder thread that fills the track's unbounded queue, which
nothing reads, for as long as the client sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from server.sfu.ice_policy import IcePolicy
from server.sfu.peer import Peer
from server.signaling.protocol import ProtocolError


class _Offered:
    def __init__(self, peer: Peer, client: RTCPeerConnection, sent: list[dict[str, Any]]) -> None:
        self.peer = peer
        self.client = client
        self.sent = sent
        self.tracks: list[Any] = []
        peer.pc.on("track", self.tracks.append)

    async def answer(self) -> list[str]:
        """The client's honest answer, as m-sections (the session part first)."""
        offer = self.sent[-1]
        await self.client.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await self.client.setLocalDescription(await self.client.createAnswer())
        return self.client.localDescription.sdp.split("m=")

    def mline(self, source: str) -> int:
        """The index (1-based, as in `answer()`) of the m-line carrying `source`."""
        offer = self.sent[-1]
        mids = [m["mid"] for m in offer["publish"] if m["source"] == source] + [
            t["mid"] for t in offer["tracks"] if t["source"] == source
        ]
        for index, section in enumerate(offer["sdp"].split("m=")):
            if f"a=mid:{mids[0]}\r\n" in section:
                return index
        raise AssertionError(source)


def _with_direction(sections: list[str], index: int, direction: str) -> str:
    changed = list(sections)
    for old in ("sendrecv", "sendonly", "recvonly", "inactive"):
        changed[index] = changed[index].replace(f"a={old}\r\n", f"a={direction}\r\n")
    return "m=".join(changed)


@pytest.fixture
async def offered() -> AsyncIterator[_Offered]:
    """A customer's peer that publishes microphone and camera and receives another's screen."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    peer = Peer(None, "p_c", ("microphone", "camera"), send, [], IcePolicy([]), "VP8")
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        peer.forward("p_t", "screen", None)
        await peer.negotiate()
        yield _Offered(peer, client, sent)
    finally:
        await client.close()
        await peer.close()


async def test_an_answer_that_sends_on_a_forwarded_track_is_refused(offered: _Offered) -> None:
    sections = await offered.answer()
    munged = _with_direction(sections, offered.mline("screen"), "sendrecv")
    with pytest.raises(ProtocolError) as refused:
        await offered.peer.accept_answer(munged)
    assert refused.value.code == "invalid_sdp"
    assert "recvonly or inactive" in refused.value.message
    # Nothing of it applied: no receiving track, and the honest answer still can be given.
    assert offered.tracks == []
    assert offered.peer.pc.signalingState == "have-local-offer"
    await offered.peer.accept_answer("m=".join(sections))
    assert offered.peer.pc.signalingState == "stable"


async def test_an_answer_that_publishes_where_the_server_receives_is_applied(
    offered: _Offered,
) -> None:
    # What a browser answers: sendonly on its camera and microphone, recvonly on what it gets.
    sections = await offered.answer()
    for source in ("microphone", "camera"):
        sections = _with_direction(sections, offered.mline(source), "sendonly").split("m=")
    await offered.peer.accept_answer("m=".join(sections))
    assert [track.kind for track in offered.tracks] == ["audio", "video"]
    assert offered.peer.pc.signalingState == "stable"
