"""Trickled ICE from the client (server/sfu/peer.py): bounded, and over after end-of-candidates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from server.sfu.ice_policy import IcePolicy
from server.sfu.peer import MAX_REMOTE_CANDIDATES, Peer
from server.signaling.protocol import IceCandidate


@pytest.fixture
async def answered() -> AsyncIterator[Peer]:
    """A peer whose offer a trickling client (no candidates in its answer) has answered."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    peer = Peer(None, "p_c", ("microphone", "camera"), send, [], IcePolicy([]), "VP8")
    client = RTCPeerConnection()
    try:
        await peer.negotiate()
        await client.setRemoteDescription(RTCSessionDescription(sent[-1]["sdp"], "offer"))
        await client.setLocalDescription(await client.createAnswer())
        sdp = "".join(
            line + "\r\n"
            for line in client.localDescription.sdp.splitlines()
            if not line.startswith(("a=candidate", "a=end-of-candidates"))
        )
        await peer.accept_answer(sdp)
        yield peer
    finally:
        await client.close()
        await peer.close()


def _candidate(index: int) -> IceCandidate:
    return IceCandidate(
        candidate=f"candidate:1 1 udp 1 10.0.{index >> 8}.{index & 255} 9 typ host",
        sdpMid="0",
        sdpMLineIndex=None,
    )


def _remote(peer: Peer) -> tuple[int, int]:
    """How many remote candidates ICE and the remote description hold."""
    transport = peer.pc.getTransceivers()[0].receiver.transport.transport
    description = peer.pc.remoteDescription
    assert description is not None
    in_sdp = sum(line.startswith("a=candidate") for line in description.sdp.splitlines())
    return len(transport.getRemoteCandidates()), in_sdp


async def test_remote_candidates_beyond_the_cap_are_ignored(answered: Peer) -> None:
    # A client may send `ice` 50 times a second; every candidate kept makes the next one
    # dearer, until the worker's loop does nothing else.
    in_ice, in_sdp = _remote(answered)
    for index in range(MAX_REMOTE_CANDIDATES * 10):
        await answered.add_candidate(_candidate(index))
    assert _remote(answered) == (in_ice + MAX_REMOTE_CANDIDATES, in_sdp + MAX_REMOTE_CANDIDATES)


async def test_candidates_after_end_of_candidates_are_ignored(answered: Peer) -> None:
    in_ice, _ = _remote(answered)
    await answered.add_candidate(_candidate(1))
    await answered.add_candidate(None)
    # aioice raises for both; the client gets no `internal` error for a late trickle.
    await answered.add_candidate(_candidate(2))
    await answered.add_candidate(None)
    assert _remote(answered)[0] == in_ice + 1


async def test_candidates_in_the_answer_count_against_the_cap() -> None:
    # A 32 KiB answer holds some 600 candidates, each a path ICE would check (STUN sent to an
    # address the client chose). aiortc clients repeat each one on every bundled m-line.
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    peer = Peer(None, "p_c", ("microphone", "camera"), send, [], IcePolicy([]), "VP8")
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await peer.negotiate()
        await client.setRemoteDescription(RTCSessionDescription(sent[-1]["sdp"], "offer"))
        await client.setLocalDescription(await client.createAnswer())
        many = [f"a=candidate:{i} 1 udp 1 127.0.1.{i} 9 typ host" for i in range(1, 101)]
        lines: list[str] = []
        for line in client.localDescription.sdp.splitlines():
            if not line.startswith(("a=candidate", "a=end-of-candidates")):
                lines.append(line)
                if line.startswith("a=mid:"):
                    lines += many
        await peer.accept_answer("\r\n".join(lines) + "\r\n")
        assert _remote(peer)[0] == MAX_REMOTE_CANDIDATES
        await peer.add_candidate(_candidate(1))  # the trickle has no room left either
        assert _remote(peer)[0] == MAX_REMOTE_CANDIDATES
    finally:
        await client.close()
        await peer.close()
