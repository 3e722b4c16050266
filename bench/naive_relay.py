"""The baseline of ``bench.media``: what an aiortc SFU does out of the box.

Every incoming track is decoded by aiortc's ``RTCRtpReceiver`` (its decoder thread always runs),
fanned out with ``MediaRelay``, and re-encoded by each consumer's ``RTCRtpSender``: one VP8 and
one Opus encode per consumer per track. vteller forwards the encoded frames instead
(server/sfu/encoded.py); this server exists only to measure what that saves.

It speaks the part of signaling protocol v1 (docs/protocol.md) the load generator uses: ``join``
-> ``joined``; server-made ``offer`` with ``publish`` and ``tracks``; ``answer``; ``end``. There
are no accounts: the role comes from the URL (``/ws/v1/sessions/{id}?role=teller``), so it must
only ever listen on loopback. Two participants per session, each publishing microphone and
camera.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from server.sfu.ice_policy import IcePolicy

log = logging.getLogger("bench.naive_relay")
PUBLISH = (("microphone", "audio"), ("camera", "video"))
_ids = itertools.count(1)


def _preferred(kind: str) -> list[Any]:
    # Same codecs as vteller (VP8, Opus), so the two modes carry identical media.
    wanted = {"audio": "audio/opus", "video": "video/VP8"}[kind]
    return [
        c
        for c in RTCRtpSender.getCapabilities(kind).codecs
        if c.mimeType in (wanted, f"{kind}/rtx")
    ]


@dataclass
class Member:
    participant_id: str
    role: str
    ws: web.WebSocketResponse
    pc: RTCPeerConnection
    publish: list[tuple[RTCRtpTransceiver, str]]
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)  # source -> remote track
    outgoing: list[dict[str, Any]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    offer_outstanding: bool = False
    renegotiate: bool = False


class NaiveRelay:
    def __init__(self, policy: IcePolicy) -> None:
        self.policy = policy
        self.relay = MediaRelay()  # defaults: buffered, one proxy track per consumer
        self.rooms: dict[str, dict[str, Member]] = {}
        self._tasks: set[asyncio.Future[None]] = set()  # keep renegotiations referenced

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        session_id = request.match_info["session_id"]
        role = request.query.get("role", "customer")
        member: Member | None = None
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = message.get("type")
                if kind == "join" and member is None:
                    member = await self._join(session_id, role, ws)
                elif kind == "answer" and member is not None:
                    await self._accept(member, message["sdp"])
                elif kind == "end":
                    break
                elif kind == "ping":
                    await ws.send_json({"v": 1, "type": "pong"})
        finally:
            if member is not None:
                await self._leave(session_id, member)
        return ws

    async def _join(self, session_id: str, role: str, ws: web.WebSocketResponse) -> Member:
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        publish = []
        for source, kind in PUBLISH:
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(_preferred(kind))
            publish.append((transceiver, source))
        member = Member(f"p_{next(_ids)}", role, ws, pc, publish)
        room = self.rooms.setdefault(session_id, {})
        others = list(room.values())
        room[member.participant_id] = member

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            source = next(s for t, s in member.publish if t.receiver.track is track)
            member.tracks[source] = track
            for other in list(room.values()):
                if other is not member:
                    self._forward(other, member, source, track)
                    task = asyncio.ensure_future(self._negotiate(other))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

        for other in others:
            for source, track in other.tracks.items():
                self._forward(member, other, source, track)
        await ws.send_json(
            {
                "v": 1,
                "type": "joined",
                "participant_id": member.participant_id,
                "role": role,
                "rejoined": False,
                "session": {"id": session_id},
                "participants": [{"id": o.participant_id, "role": o.role} for o in others],
                "ice_servers": [],
                "chat": [],
            }
        )
        await self._negotiate(member)
        return member

    def _forward(
        self, consumer: Member, publisher: Member, source: str, track: MediaStreamTrack
    ) -> None:
        # The out-of-the-box path: a relay proxy of the decoded track, re-encoded by the sender.
        transceiver = consumer.pc.addTransceiver(self.relay.subscribe(track), direction="sendonly")
        transceiver.setCodecPreferences(_preferred(track.kind))
        consumer.outgoing.append(
            {
                "transceiver": transceiver,
                "participant_id": publisher.participant_id,
                "source": source,
            }
        )

    async def _negotiate(self, member: Member) -> None:
        async with member.lock:
            if member.offer_outstanding or member.pc.connectionState == "closed":
                member.renegotiate = True
                return
            member.renegotiate = False
            await member.pc.setLocalDescription(await member.pc.createOffer())
            member.offer_outstanding = True
            sdp = member.pc.localDescription.sdp
        with contextlib.suppress(ConnectionError, RuntimeError):
            await member.ws.send_json(
                {
                    "v": 1,
                    "type": "offer",
                    "sdp": sdp,
                    "publish": [{"mid": t.mid, "source": s} for t, s in member.publish],
                    "tracks": [
                        {
                            "mid": o["transceiver"].mid,
                            "participant_id": o["participant_id"],
                            "source": o["source"],
                        }
                        for o in member.outgoing
                    ],
                }
            )

    async def _accept(self, member: Member, sdp: str) -> None:
        async with member.lock:
            await member.pc.setRemoteDescription(
                RTCSessionDescription(self.policy.filter_sdp(sdp), "answer")
            )
            member.offer_outstanding = False
            again = member.renegotiate
        if again:
            await self._negotiate(member)

    async def _leave(self, session_id: str, member: Member) -> None:
        room = self.rooms.get(session_id, {})
        room.pop(member.participant_id, None)
        if not room:
            self.rooms.pop(session_id, None)
        await member.pc.close()
        for other in list(room.values()):
            # The session is over for the benchmark once anyone leaves: end it for the other.
            await other.ws.close()


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app() -> web.Application:
    policy = IcePolicy.loopback()
    policy.install()
    relay = NaiveRelay(policy)
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws/v1/sessions/{session_id}", relay.handle)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.naive_relay",
        description="Baseline SFU for bench.media: aiortc MediaRelay, decoding and re-encoding "
        "per consumer. Loopback only, no authentication.",
    )
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
