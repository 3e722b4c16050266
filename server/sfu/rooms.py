"""Live sessions: who is connected, what they publish, and what everyone receives.

A `Room` exists while a session has members; it owns their peer connections. Members who drop
without saying goodbye keep their place for the rejoin grace period, so a reload or a network
blip brings them back into the same call without anyone else doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from server.audit import SYSTEM, AuditLog, AuditUnavailable
from server.auth.principal import Role
from server.db.models import CallSession
from server.identity.ocr import Side
from server.identity.verification import STAFF as IDENTITY_STAFF
from server.identity.verification import IdentityServices, IdentityVerification, Step
from server.recording import script as sales_script
from server.recording.live_checks import Camera, LiveChecks
from server.recording.live_speech import SpeechListener
from server.recording.manager import RecordingManager
from server.recording.room import Audience, RoomRecording
from server.recording.room import Member as RecordedMember
from server.sessions.store import ENDED_BY_PARTICIPANT, SessionStore
from server.sessions.views import chat_view, participant_view, session_view
from server.settings import Settings
from server.sfu.encoded import EncodedSource
from server.sfu.forwarding import Publication
from server.sfu.ice_policy import IcePolicy
from server.sfu.peer import Peer
from server.sfu.turn import BrowserIce
from server.signaling.protocol import IceCandidate, ProtocolError, server_message

log = structlog.get_logger(__name__)

PUBLISHES: dict[Role, tuple[str, ...]] = {
    Role.CUSTOMER: ("microphone", "camera"),
    Role.TELLER: ("microphone", "camera", "screen"),
    Role.EXPERT: ("microphone", "camera", "screen"),
    Role.SUPERVISOR: (),
}

CLOSE_REPLACED = 4409
CLOSE_ENDED = 4410
CLOSE_MEDIA_FAILED = 4408


class RoomRetired(Exception):
    """The room emptied (and the registry forgot it) while a join waited for it."""


class Connection(Protocol):
    """The signaling channel of one member (a WebSocket in production)."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class Member:
    participant_id: str
    role: Role
    display_name: str
    connection: Connection | None = None
    peer: Peer | None = None
    disconnected_at: float | None = None
    grace: asyncio.TimerHandle | None = None
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.connection is not None


def _recorded(member: Member) -> RecordedMember:
    return RecordedMember(member.participant_id, member.role, member.display_name)


async def _renegotiate(peers: list[Peer]) -> None:
    """Offer each peer its changed media. A member whose socket is closing gets its own
    disconnection; it must not stop the others' offers (or the rest of a departure)."""
    for peer in peers:
        try:
            await peer.negotiate()
        except (ConnectionError, RuntimeError) as exc:
            log.info("renegotiation_skipped", participant_id=peer.participant_id, reason=str(exc))


def _visible(viewer: Role, member: Member) -> bool:
    # Supervisors observe silently: customers are never told about them.
    return not (viewer is Role.CUSTOMER and member.role is Role.SUPERVISOR)


class Room:
    def __init__(
        self,
        session_id: str,
        store: SessionStore,
        settings: Settings,
        policy: IcePolicy,
        browser_ice: BrowserIce,
        on_empty: Callable[[Room], None],
        on_retire: Callable[[Publication], None],
        recorder: RecordingManager,
        audit: AuditLog,
        identity: IdentityServices,
        listener: SpeechListener | None = None,
    ) -> None:
        self.session_id = session_id
        self._browser_ice = browser_ice
        self._on_retire = on_retire
        self._recorder = recorder
        self._audit = audit
        self.recording: RoomRecording | None = None
        self.identity = IdentityVerification(
            session_id,
            identity,
            self._send_roles,
            self._customer_camera,
            self._note,
            self._identity_result,
        )
        # Warnings to the staff while the recording runs (started and stopped by the recording).
        self.live = LiveChecks(
            session_id,
            identity.engines,
            store,
            self.notify_staff,
            self._live_cameras,
            listener=listener,
        )
        self.observe_delay: Callable[[float], None] | None = None
        self._store = store
        self._settings = settings
        self._policy = policy
        self._on_empty = on_empty
        self.members: dict[str, Member] = {}
        self._publications: dict[tuple[str, str], Publication] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Joins, disconnections, departures and the end change membership one at a time: each
        # awaits (the audit log, the database, closing peers), and two interleaved (two tabs
        # joining at once, a rejoin while the old connection is torn down) left a peer behind or
        # a grace timer armed on a member who was back.
        self._membership = asyncio.Lock()
        self._ended = False
        self.retired = False

    # -- membership --------------------------------------------------------------------------

    async def join(
        self, participant_id: str, role: Role, display_name: str, connection: Connection
    ) -> None:
        """Raises RoomRetired when the room emptied while this join waited for it: the
        registry has forgotten it, so the join belongs in a fresh room."""
        async with self._membership:
            if self.retired:
                raise RoomRetired(self.session_id)
            try:
                await self._join(participant_id, role, display_name, connection)
            finally:
                # A first join refused (the audit log is down, the session has ended) or undone
                # must not leave an empty room registered forever.
                if not self.members:
                    self._retire()

    async def _join(
        self, participant_id: str, role: Role, display_name: str, connection: Connection
    ) -> None:
        if (await self._store.require(self.session_id)).state == "ended":
            # Admitted before the end, joining after it (the room is gone from the registry).
            raise ProtocolError("session_ended", "This session has ended.", "join", fatal=True)
        member = self.members.get(participant_id)
        rejoined = member is not None
        # First, before anything changes: a join the log cannot show is refused.
        await self._log("session.joined", participant_id, role, {"rejoined": rejoined})
        try:
            if member is None:
                member = Member(participant_id, role, display_name)
                renegotiate = await self._first_join(member, connection)
            else:
                renegotiate = await self._rejoin(member, connection)
        except BaseException as exc:
            # Undone by the two above. The log is append-only: this entry is what keeps it from
            # saying that the participant joined.
            await self._audit.append_fact(
                "session.join_failed",
                actor=participant_id,
                actor_role=role.value,
                target=self.session_id,
                detail={"rejoined": rejoined, "error": type(exc).__name__},
            )
            raise
        # The member has its `joined` and offer: nothing from here on undoes the join.
        await self._broadcast(
            server_message(
                "participant_joined",
                participant=member.view | {"state": "connected"},
                rejoined=rejoined,
            ),
            about=member,
        )
        await _renegotiate(renegotiate)

    async def _first_join(self, member: Member, connection: Connection) -> list[Peer]:
        self.members[member.participant_id] = member
        try:
            return await self._connect(member, connection, rejoined=False, gap=None)
        except BaseException:
            await self._abandon(member)
            raise

    async def _rejoin(self, member: Member, connection: Connection) -> list[Peer]:
        replaced = member.connection
        gap: float | None = None
        if member.disconnected_at is not None:
            gap = time.monotonic() - member.disconnected_at
        try:
            # Inside the undo: closing can be cancelled (a shutdown), and the member whose
            # connection is gone must still be dropped, its old peer closed and its grace armed.
            if replaced is not None:
                member.connection = None
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await replaced.close(CLOSE_REPLACED, "connected again elsewhere")
            await self._drop_media(member)
            renegotiate = await self._connect(member, connection, rejoined=True, gap=gap)
        except BaseException:
            await self._undo_rejoin(member, connection, replaced)
            raise
        # Only once back: a failed rejoin leaves the member dropped, with the grace of its drop.
        if member.grace is not None:
            member.grace.cancel()
            member.grace = None
        member.disconnected_at = None
        return renegotiate

    async def _connect(
        self, member: Member, connection: Connection, *, rejoined: bool, gap: float | None
    ) -> list[Peer]:
        """Give the member its connection and peer, record it, and send it `joined` and its
        offer; returns the others' peers that now forward its media (to renegotiate)."""
        member.connection = connection
        peer = Peer(
            self.observe_delay,
            member.participant_id,
            PUBLISHES[member.role],
            connection.send,
            self._settings.ice_servers,
            self._policy,
            self._settings.video_codec,
        )
        member.peer = peer
        self._watch(member, peer)
        for other in self._others(member.participant_id):
            for source in PUBLISHES[other.role]:
                peer.forward(
                    other.participant_id,
                    source,
                    self._publications.get((other.participant_id, source)),
                )
        renegotiate: list[Peer] = []
        if not rejoined:
            for other in self._others(member.participant_id):
                if other.peer is not None and PUBLISHES[member.role]:
                    for source in PUBLISHES[member.role]:
                        other.peer.forward(member.participant_id, source, None)
                    renegotiate.append(other.peer)

        await self._store.update_participant(member.participant_id, "connected", joined=True)
        await self._store.record(
            self.session_id,
            "participant_rejoined" if rejoined else "participant_joined",
            member.participant_id,
            {"gap_seconds": round(gap, 3)} if gap is not None else {"role": member.role.value},
        )
        if (
            member.role in (Role.CUSTOMER, Role.TELLER)
            and self._has_connected(Role.CUSTOMER)
            and (self._has_connected(Role.TELLER))
        ):
            await self._store.mark_active(self.session_id)
        session = await self._store.require(self.session_id)
        if self.recording is None:
            self.recording = RoomRecording(
                self._recorder,
                self.session_id,
                session.business,
                self._broadcast_recording,
                self._audit,
                self.live,
            )
        await self.identity.restore()
        member.view = self._participant(session, member.participant_id)
        await connection.send(
            server_message(
                "joined",
                participant_id=member.participant_id,
                role=member.role.value,
                rejoined=rejoined,
                session=session_view(session, member.role),
                participants=[
                    self._participant(session, o.participant_id) | {"state": self._state(o)}
                    for o in self._others(member.participant_id)
                    if _visible(member.role, o)
                ],
                ice_servers=self._browser_ice.servers(member.participant_id, time.time()),
                ice_transport_policy=self._browser_ice.transport_policy,
                chat=[chat_view(m) for m in await self._store.chat(self.session_id)],
            )
        )
        await connection.send(self.recording.message())
        if member.role is not Role.CUSTOMER and self.live.running:
            await connection.send(self.live.message())
        if member.role is Role.CUSTOMER:
            await connection.send(self.identity.public_message())
        elif member.role in IDENTITY_STAFF:
            await connection.send(self.identity.staff_message())
        await peer.negotiate()
        # Only now, when nothing of the join can fail any more (an undone join never happened).
        self.recording.presence(_recorded(member), "rejoined" if rejoined else "joined")
        return renegotiate

    def _retire(self) -> None:
        self.retired = True
        self._on_empty(self)

    async def _abandon(self, member: Member) -> None:
        """Undo a first join that failed part-way: the client never got `joined` nor its offer,
        so its retry must be a first join again, renegotiating the others. Nobody was told of
        it, and the others' transceivers for it go unused (inactive in their next offer)."""
        del self.members[member.participant_id]
        for other in self.members.values():
            if other.peer is not None:
                other.peer.stop_forwarding(member.participant_id)
        await self._unconnect(member)

    async def _undo_rejoin(
        self, member: Member, connection: Connection, replaced: Connection | None
    ) -> None:
        """Undo a rejoin that failed part-way: the member is left dropped, within its grace, so
        that the client's retry is a rejoin again. A member whose connection the rejoin replaced
        (a second tab) was live: losing it is a drop like any other, which the others are told."""
        if replaced is None:
            await self._unconnect(member)
            return
        member.connection = connection
        try:
            await self._disconnected(member.participant_id, connection)
        except Exception:
            # The database's part: the member is dropped here all the same (grace armed first).
            log.warning("join_undo_not_recorded", participant_id=member.participant_id)

    async def _unconnect(self, member: Member) -> None:
        """Take back the connection and peer a failed join gave the member."""
        member.connection = None
        await self._drop_media(member)
        try:
            await self._store.update_participant(member.participant_id, "disconnected")
        except Exception:
            log.warning("join_undo_not_recorded", participant_id=member.participant_id)

    def holds(self, participant_id: str, connection: Connection) -> bool:
        """Whether `connection` is the member's current signaling connection."""
        member = self.members.get(participant_id)
        return member is not None and member.connection is connection

    async def disconnected(self, participant_id: str, connection: Connection) -> None:
        """The member's signaling or media connection was lost without a goodbye."""
        async with self._membership:
            await self._disconnected(participant_id, connection)

    async def _disconnected(self, participant_id: str, connection: Connection) -> None:
        member = self.members.get(participant_id)
        if member is None or member.connection is not connection:
            return  # already replaced by a newer connection, or gone
        member.connection = None
        member.disconnected_at = time.monotonic()
        await self._drop_media(member)
        if self.recording is not None:
            self.recording.presence(_recorded(member), "disconnected")
        member.grace = asyncio.get_running_loop().call_later(
            self._settings.rejoin_grace_seconds,
            lambda: self._spawn(self._expire(participant_id, member)),
        )
        try:
            await self._store.update_participant(participant_id, "disconnected")
            await self._store.record(self.session_id, "participant_disconnected", participant_id)
        finally:
            # Dropped here whether or not the database could record it: the others must not go
            # on showing the member as there.
            await self._broadcast(
                server_message(
                    "participant_left", participant_id=participant_id, reason="disconnected"
                ),
                about=member,
            )

    async def _expire(self, participant_id: str, member: Member) -> None:
        """The rejoin grace ran out: gone, unless the member came back meanwhile."""
        async with self._membership:
            if self.members.get(participant_id) is member and member.connection is None:
                await self._leave(participant_id, "timeout")

    async def leave(self, participant_id: str, reason: str, connection: Connection) -> None:
        """A goodbye on `connection`; none from a connection that another one of the member
        replaced while this waited for the room (it would remove the member who is back)."""
        async with self._membership:
            if self.holds(participant_id, connection):
                await self._leave(participant_id, reason)

    async def _leave(self, participant_id: str, reason: str) -> None:
        member = self.members.pop(participant_id, None)
        if member is None:
            return
        if member.grace is not None:
            member.grace.cancel()
        connection, member.connection = member.connection, None
        await self._drop_media(member)
        if self.recording is not None:
            self.recording.presence(_recorded(member), "left")
        renegotiate = [
            o.peer
            for o in self.members.values()
            if o.peer is not None and o.peer.stop_forwarding(participant_id)
        ]
        try:
            await self._store.update_participant(participant_id, "left", left=True)
            await self._store.record(
                self.session_id, "participant_left", participant_id, {"reason": reason}
            )
            await self._broadcast(
                server_message("participant_left", participant_id=participant_id, reason=reason),
                about=member,
            )
            await _renegotiate(renegotiate)
            if connection is not None and reason == "left":
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await connection.close(1000, "left")
            # A departure has happened whether or not it can be logged (append_fact logs a
            # failure).
            await self._audit.append_fact(
                "session.left",
                actor=participant_id,
                actor_role=member.role.value,
                target=self.session_id,
                detail={"reason": reason},
            )
        finally:
            # The member is gone even if the database could not say so: the last one out still
            # seals the recording and frees the room.
            if not self.members:
                await self.identity.close()  # a check still running has no one to look at
                if self.recording is not None:
                    await self.recording.stop("complete")
                self._retire()

    async def end(self, by: str | None) -> CallSession:
        async with self._membership:
            return await self._end(by)

    async def ended_elsewhere(self, reason: str | None) -> None:
        """The session was ended through another worker (its HTTP end, logged there) or by an
        operator (a disabled teller's appointment): end the call and seal the recording here,
        where they live, without logging the end twice, telling everyone the stored reason."""
        async with self._membership:
            if not self._ended:
                await self._end(None, logged=True, reason=reason or ENDED_BY_PARTICIPANT)

    async def _end(
        self, by: str | None, *, logged: bool = False, reason: str = ENDED_BY_PARTICIPANT
    ) -> CallSession:
        member = self.members.get(by) if by is not None else None
        if not logged:
            await self._log("session.ended", by, member.role if member else None)
        self._ended = True
        await self.identity.close()
        if self.recording is not None:
            await self.recording.stop("complete")
        session = await self._store.end(self.session_id, by, reason)
        await self._broadcast(server_message("session_ended", reason=reason, by=by), about=None)
        for member in list(self.members.values()):
            if member.grace is not None:
                member.grace.cancel()
            connection, member.connection = member.connection, None
            await self._drop_media(member)
            if connection is not None:
                await connection.close(CLOSE_ENDED, "session ended")
        self.members.clear()
        self._retire()
        return session

    async def shutdown(self) -> None:
        """Server stopping: close everything; clients reconnect to the next server."""
        async with self._membership:
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self.identity.close()
        if self.recording is not None:
            # The worker is stopping (and is killed if it takes long): one attempt at the seal,
            # then the journal is the next start's to finish.
            await self.recording.stop("interrupted", patience=0)
        for member in self.members.values():
            if member.grace is not None:
                member.grace.cancel()
            connection, member.connection = member.connection, None
            await self._drop_media(member)
            if connection is not None:
                await connection.close(1012, "server restarting")
        for task in list(self._tasks):
            task.cancel()
        self.members.clear()
        self.retired = True  # the registry forgets it (taken over, or the server stopping)

    # -- messages from members ---------------------------------------------------------------

    async def answer(self, participant_id: str, sdp: str) -> None:
        await self._peer(participant_id, "answer").accept_answer(sdp)

    async def ice(self, participant_id: str, candidate: IceCandidate | None) -> None:
        await self._peer(participant_id, "ice").add_candidate(candidate)

    async def chat(self, participant_id: str, text: str) -> None:
        # Everyone reads the chat, the customer included: a supervisor writing in it would
        # reveal the silent observer (protocol section 2.5).
        member = self.members.get(participant_id)
        if member is None or member.role is Role.SUPERVISOR:
            raise ProtocolError(
                "forbidden", "Supervisors observe silently and cannot write in the chat.", "chat"
            )
        message = await self._store.add_chat(self.session_id, participant_id, text)
        await self._broadcast(server_message("chat", message=chat_view(message)), about=None)

    async def screen_share(self, participant_id: str, active: bool) -> None:
        member = self.members[participant_id]
        if "screen" not in PUBLISHES[member.role]:
            raise ProtocolError("forbidden", "Only staff can share a screen.", "screen_share")
        await self._store.record(
            self.session_id,
            "screen_share_started" if active else "screen_share_stopped",
            participant_id,
        )
        await self._broadcast(
            server_message("screen_share", participant_id=participant_id, active=active),
            about=member,
        )

    async def recording_start(
        self, participant_id: str, script_name: str | None, values: dict[str, str]
    ) -> None:
        self._require_role(participant_id, Role.TELLER, "start the recording", "recording_start")
        assert self.recording is not None  # created at the first join
        session = await self._store.require(self.session_id)
        script = await asyncio.to_thread(
            sales_script.choose,
            session.business,
            script_name,
            self._settings.compliance_scripts_dir,
        )
        context = sales_script.context(
            script, sales_script.known_values(session, self._settings.bank_name) | values
        )
        await self._log(
            "recording.requested",
            participant_id,
            Role.TELLER,
            {"script": f"{script.id}@{script.version}"},
        )
        await self.recording.request_consent(self._has_connected(Role.CUSTOMER), context, script)

    async def consent(self, participant_id: str, granted: bool) -> None:
        self._require_role(participant_id, Role.CUSTOMER, "consent", "consent")
        assert self.recording is not None
        self.recording.require_consent_asked()
        answer = {"granted": granted}
        if granted:
            # Logged before anything is recorded: a consent the log refused starts nothing, and
            # the customer is still asked (the answer can be given again).
            await self._log("recording.consent", participant_id, Role.CUSTOMER, answer)
        await self._store.record(self.session_id, "recording_consent", participant_id, answer)
        await self.recording.consent(granted)
        if not granted:
            # The customer's refusal stands whether or not the log can take it right now.
            await self._audit.append_fact(
                "recording.consent",
                actor=participant_id,
                actor_role=Role.CUSTOMER.value,
                target=self.session_id,
                detail=answer,
            )
            return
        try:
            if self.recording.active:
                await self._log(
                    "recording.started",
                    participant_id,
                    Role.CUSTOMER,
                    {"archive_id": self.recording.message()["archive_id"]},
                )
        except AuditUnavailable:
            # No recording may run without its start in the log.
            await self.recording.stop("interrupted")
            raise
        if self.recording.active:
            await self._store.record(
                self.session_id,
                "recording_started",
                participant_id,
                {"archive_id": self.recording.message()["archive_id"]},
            )

    async def mark(self, participant_id: str, moment: str, phase: str) -> None:
        self._require_role(participant_id, Role.TELLER, "mark key moments", "mark")
        assert self.recording is not None
        media_ms = self.recording.media_ms()
        # Logged before it is on the timeline: a mark the log refused would otherwise be sealed
        # into the archive with no entry (and be made twice when the teller tries again).
        await self._log(
            "recording.marked",
            participant_id,
            Role.TELLER,
            {"moment": moment, "phase": phase, "media_ms": media_ms},
        )
        self.recording.mark(moment, phase, media_ms)
        await self._store.record(
            self.session_id,
            "moment_marked",
            participant_id,
            {"moment": moment, "phase": phase, "media_ms": media_ms},
        )
        await self._broadcast_recording(
            server_message("marked", moment=moment, phase=phase, media_ms=media_ms), "staff"
        )

    async def recording_stop(self, participant_id: str) -> None:
        self._require_role(participant_id, Role.TELLER, "stop the recording", "recording_stop")
        assert self.recording is not None
        # Before: if the stop cannot be logged the recording goes on, which is the safe side.
        await self._log("recording.stopped", participant_id, Role.TELLER)
        await self.recording.stop("complete")
        await self._store.record(self.session_id, "recording_stopped", participant_id)

    async def identity_start(self, participant_id: str) -> None:
        self._require_role(participant_id, Role.TELLER, "verify identity", "identity_start")
        await self.identity.start(participant_id, self._has_connected(Role.CUSTOMER))

    async def identity_consent(self, participant_id: str, granted: bool) -> None:
        self._require_role(participant_id, Role.CUSTOMER, "consent", "identity_consent")
        await self.identity.give_consent(participant_id, granted)

    async def identity_step(self, participant_id: str, step: str) -> None:
        self._require_role(participant_id, Role.TELLER, "verify identity", "identity_step")
        await self.identity.run_step(participant_id, Step(step))

    def check_upload(self, participant_id: str, side: Side) -> None:
        """Whether an announced photo of the card could be used now, before it is decoded;
        `identity_upload` checks fully (attempts, a running step) once it is."""
        self._require_role(participant_id, Role.CUSTOMER, "upload the card", "identity_upload")
        if self.identity.state != "in_progress":
            raise ProtocolError(
                "out_of_order", "Identity verification is not taking photos now.", "identity_upload"
            )
        if self.identity.steps[Step(f"card_{side}")].status == "passed":
            raise ProtocolError(
                "out_of_order", f"card_{side} has already passed.", "identity_upload"
            )

    async def identity_upload(self, participant_id: str, side: Side, image: Any) -> None:
        self._require_role(participant_id, Role.CUSTOMER, "upload the card", "identity_upload")
        await self.identity.upload_card(participant_id, side, image)

    async def identity_manual(self, participant_id: str, decision: str, reason: str) -> None:
        self._require_role(participant_id, Role.TELLER, "verify identity", "identity_manual")
        await self.identity.manual(participant_id, decision, reason)

    # -- internals ---------------------------------------------------------------------------

    async def notify_staff(self, message: dict[str, Any]) -> None:
        await self._broadcast_recording(message, "staff")

    async def notify(self, message: dict[str, Any], audience: Audience) -> None:
        await self._broadcast_recording(message, audience)

    def _customer_camera(self) -> EncodedSource | None:
        for (participant_id, source), publication in self._publications.items():
            member = self.members.get(participant_id)
            if source == "camera" and member is not None and member.role is Role.CUSTOMER:
                return publication.encoded
        return None

    def _live_cameras(self) -> list[Camera]:
        """The tellers and customers in the room (disconnected ones within their grace too)."""
        cameras: list[Camera] = []
        for member in self.members.values():
            if member.role in (Role.TELLER, Role.CUSTOMER):
                camera = self._publications.get((member.participant_id, "camera"))
                microphone = self._publications.get((member.participant_id, "microphone"))
                cameras.append(
                    Camera(
                        member.participant_id,
                        "teller" if member.role is Role.TELLER else "customer",
                        camera.encoded if camera is not None else None,
                        microphone.encoded if microphone is not None else None,
                    )
                )
        return cameras

    def _note(self, moment: str, phase: str) -> None:
        if self.recording is not None:
            self.recording.note(moment, phase)

    def _identity_result(self, summary: dict[str, Any]) -> None:
        if self.recording is not None:
            self.recording.identity(summary)

    async def _send_roles(self, message: dict[str, Any], roles: frozenset[Role]) -> None:
        for member in list(self.members.values()):
            if member.connection is not None and member.role in roles:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await member.connection.send(message)

    async def _log(
        self,
        action: str,
        participant_id: str | None,
        role: Role | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """An entry about this session by one of its participants; raises AuditUnavailable."""
        await self._audit.append(
            action,
            actor=participant_id or SYSTEM,
            actor_role=role.value if role is not None else SYSTEM,
            target=self.session_id,
            detail=detail,
        )

    def _require_role(self, participant_id: str, role: Role, what: str, ref: str) -> None:
        member = self.members.get(participant_id)
        if member is None or member.role is not role:
            raise ProtocolError("forbidden", f"Only the {role.value} may {what}.", ref)

    async def _broadcast_recording(self, message: dict[str, Any], audience: Audience) -> None:
        for member in list(self.members.values()):
            customer = member.role is Role.CUSTOMER
            if member.connection is None or (audience == "staff" and customer):
                continue
            if audience == "customer" and not customer:
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await member.connection.send(message)

    def _others(self, participant_id: str) -> list[Member]:
        return [m for m in self.members.values() if m.participant_id != participant_id]

    def _has_connected(self, role: Role) -> bool:
        return any(m.role is role and m.connected for m in self.members.values())

    @staticmethod
    def _state(member: Member) -> str:
        return "connected" if member.connected else "disconnected"

    @staticmethod
    def _participant(session: CallSession, participant_id: str) -> dict[str, Any]:
        for participant in session.participants:
            if participant.id == participant_id:
                return participant_view(participant)
        raise KeyError(participant_id)

    def _peer(self, participant_id: str, ref: str) -> Peer:
        member = self.members.get(participant_id)
        if member is None or member.peer is None:
            raise ProtocolError("out_of_order", "Send join first.", ref)
        return member.peer

    async def _broadcast(self, message: dict[str, Any], about: Member | None) -> None:
        for member in list(self.members.values()):
            if member is about or member.connection is None:
                continue
            if about is not None and not _visible(member.role, about):
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await member.connection.send(message)

    def _watch(self, member: Member, peer: Peer) -> None:
        @peer.pc.on("track")
        def on_track(track: Any) -> None:
            found = peer.source_of(track)
            if found is None or member.peer is not peer:
                return
            receiver, source = found
            key = (member.participant_id, source)
            old = self._publications.get(key)
            publication = Publication(member.participant_id, source, receiver, track)
            self._publications[key] = publication
            for other in self._others(member.participant_id):
                if other.peer is not None and (
                    forwarded := other.peer.forwarded(member.participant_id, source)
                ):
                    forwarded.attach(publication)
            if self.recording is not None:
                self.recording.published(_recorded(member), source, publication.encoded)
            if old is not None:
                self._close(old)

        @peer.pc.on("connectionstatechange")
        async def on_state() -> None:
            if peer.pc.connectionState == "failed" and member.peer is peer:
                connection = member.connection
                if connection is not None:
                    log.info("media_failed", participant_id=member.participant_id)
                    await connection.close(CLOSE_MEDIA_FAILED, "media connection failed")
                    await self.disconnected(member.participant_id, connection)

    async def _drop_media(self, member: Member) -> None:
        for source in PUBLISHES[member.role]:
            for other in self._others(member.participant_id):
                if other.peer is not None and (
                    forwarded := other.peer.forwarded(member.participant_id, source)
                ):
                    forwarded.attach(None)
            if publication := self._publications.pop((member.participant_id, source), None):
                if self.recording is not None:
                    self.recording.unpublished(_recorded(member), source)
                self._close(publication)
        peer, member.peer = member.peer, None
        if peer is not None:
            await peer.close()

    def publications(self) -> list[Publication]:
        return list(self._publications.values())

    def _close(self, publication: Publication) -> None:
        publication.close()
        self._on_retire(publication)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        # Nobody awaits a spawned task: its failure would otherwise vanish.
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("room_task_failed", session_id=self.session_id, exc_info=exc)


@dataclass(frozen=True)
class ForwardingStats:
    sessions: int
    peers: int
    packets: int
    bytes: int
    keyframes: int


class RoomRegistry:
    """The rooms of this process, one per live session."""

    def __init__(
        self,
        store: SessionStore,
        settings: Settings,
        policy: IcePolicy,
        browser_ice: BrowserIce,
        recorder: RecordingManager,
        audit: AuditLog,
        identity: IdentityServices,
        listener: SpeechListener | None = None,
    ) -> None:
        self._store = store
        self._listener = listener
        self._recorder = recorder
        self._audit = audit
        self._identity = identity
        self._settings = settings
        self._policy = policy
        self._browser_ice = browser_ice
        self._rooms: dict[str, Room] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciling: set[str] = set()
        # Counters of publications that have ended, so totals never go backwards.
        self._retired = [0, 0, 0]
        self.observe_delay: Callable[[float], None] | None = None

    def room(self, session_id: str) -> Room:
        room = self._rooms.get(session_id)
        if room is None or room.retired:
            room = Room(
                session_id,
                self._store,
                self._settings,
                self._policy,
                self._browser_ice,
                self._forget,
                self._retire,
                self._recorder,
                self._audit,
                self._identity,
                self._listener,
            )
            room.observe_delay = self.observe_delay
            self._rooms[session_id] = room
        return room

    def stats(self) -> ForwardingStats:
        live = [p.encoded for room in self._rooms.values() for p in room.publications()]
        return ForwardingStats(
            sessions=len(self._rooms),
            peers=self.peer_count(),
            packets=self._retired[0] + sum(s.packets_forwarded for s in live),
            bytes=self._retired[1] + sum(s.bytes_forwarded for s in live),
            keyframes=self._retired[2] + sum(s.keyframe_requests for s in live),
        )

    def _retire(self, publication: Publication) -> None:
        source = publication.encoded
        self._retired[0] += source.packets_forwarded
        self._retired[1] += source.bytes_forwarded
        self._retired[2] += source.keyframe_requests

    def get(self, session_id: str) -> Room | None:
        return self._rooms.get(session_id)

    async def notify_staff(self, session_id: str, fields: dict[str, Any]) -> None:
        """Tell the session's staff, if it is live here, how its recording's analysis goes."""
        room = self._rooms.get(session_id)
        if room is not None:
            await room.notify_staff(server_message("analysis", **fields))

    async def bind_transaction(
        self,
        session_id: str,
        transaction_id: str,
        sha256: str,
        signature_sha256: str,
        signature_png: bytes,
    ) -> str | None:
        """Bind a signed transaction into the session's running recording (on this worker)."""
        room = self._rooms.get(session_id)
        if room is None or room.recording is None:
            return None
        return await room.recording.bind_transaction(
            transaction_id, sha256, signature_sha256, signature_png
        )

    async def notify_session(
        self, session_id: str, message: dict[str, Any], audience: Audience
    ) -> None:
        """Send a server message to the session's staff, customer or both, if it is live here."""
        room = self._rooms.get(session_id)
        if room is not None:
            await room.notify(message, audience)

    def __len__(self) -> int:
        return len(self._rooms)

    def peer_count(self) -> int:
        return sum(
            1 for room in self._rooms.values() for m in room.members.values() if m.peer is not None
        )

    async def end_session(self, session_id: str, by: str | None) -> CallSession:
        """End a session. When its room lives on another worker, the session is ended in the
        database here and that worker's `reconcile` ends the call within a heartbeat."""
        room = self._rooms.get(session_id)
        if room is not None:
            return await room.end(by)
        session = await self._store.require(session_id)
        role = next((p.role for p in session.participants if p.id == by), SYSTEM)
        await self._audit.append(
            "session.ended", actor=by or SYSTEM, actor_role=role, target=session_id
        )
        return await self._store.end(session_id, by, ENDED_BY_PARTICIPANT)

    async def reconcile(self, worker_id: str) -> None:
        """Heartbeat: end here the rooms whose sessions were ended through another worker, and
        give up those another worker took over while this one was thought dead (their clients
        reconnect to it). Ending seals a recording, which may wait for a full disk: in tasks
        of their own, so that the heartbeat that keeps this worker alive never waits."""
        hosts = await self._store.hosts(list(self._rooms))
        for session_id, (state, owner, end_reason) in hosts.items():
            room = self._rooms.get(session_id)
            if room is None or session_id in self._reconciling:
                continue
            if state == "ended":
                self._reconcile(session_id, room.ended_elsewhere(end_reason))
            elif owner != worker_id:
                log.warning("room_taken_over", session_id=session_id, by_worker=owner)
                self._reconcile(session_id, self._give_up(room))

    async def _give_up(self, room: Room) -> None:
        await room.shutdown()
        self._forget(room)

    def _reconcile(self, session_id: str, work: Coroutine[Any, Any, None]) -> None:
        self._reconciling.add(session_id)
        task = asyncio.create_task(work)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._reconciling.discard(session_id)
            if not task.cancelled() and task.exception() is not None:
                log.error("room_reconcile_failed", session_id=session_id, exc_info=task.exception())

        task.add_done_callback(done)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for room in list(self._rooms.values()):
            await room.shutdown()
        self._rooms.clear()

    def _forget(self, room: Room) -> None:
        if self._rooms.get(room.session_id) is room:
            del self._rooms[room.session_id]
