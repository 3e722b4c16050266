"""Sessions, invitations, participants, events and chat in the database.

Authorization that depends on a session (who may enter which one) lives here too, next to the
data it is decided by, so the HTTP routes and the WebSocket handler cannot disagree.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.container import EXPERT_SLOTS
from server.auth.principal import Principal, Role
from server.auth.tokens import digest, new_token
from server.db.engine import DbSession, exclusive
from server.db.models import (
    CallSession,
    ChatMessage,
    Invitation,
    Participant,
    SessionEvent,
    User,
    new_id,
    utcnow,
)
from server.errors import ApiError, forbidden

BUSINESSES = ("wealth", "insurance", "general")
OPEN_STATES = ("waiting", "active", "interrupted")
# The end reason of a session cancelled before it started because its teller's account was
# disabled (server/workflow/queue/service.py, `release_teller`): its link says so.
TELLER_DISABLED = "teller_disabled"
# The end reason of a session someone in it (or staff through the API) ended.
ENDED_BY_PARTICIPANT = "ended_by_participant"
InvitationStatus = Literal["valid", "expired", "used", "unknown"]


class Placement(Protocol):
    """Where new sessions go (server/workers/registry.py)."""

    async def check_room(self) -> None:
        """Raise capacity_full if no worker has room (a hint: before anything is logged)."""

    async def admit(self, db: DbSession) -> str:
        """A worker with room, chosen as the first step of `db`'s transaction, which inserts
        the session: the room it saw is still there at the insert."""


@dataclass(frozen=True)
class NewInvitation:
    session: CallSession
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Redemption:
    session: CallSession
    participant: Participant
    cookie_token: str | None  # None when the browser already holds its credential
    csrf_token: str


class SessionStore:
    def __init__(self, db: async_sessionmaker[DbSession]) -> None:
        self._db = db

    # -- invitations -------------------------------------------------------------------------

    async def create_invitation(
        self,
        teller: Principal,
        business: str,
        customer_name: str,
        expires_at: datetime,
        workers: Placement | None,
        session_id: str,
    ) -> NewInvitation:
        token = new_token()
        session = await self.open_session(
            teller, business, customer_name, expires_at, workers, digest(token), session_id
        )
        return NewInvitation(session, token, expires_at)

    async def open_session(
        self,
        teller: Principal,
        business: str,
        customer_name: str,
        expires_at: datetime,
        workers: Placement | None,
        token_hash: str,
        session_id: str,
        via: str = "invitation",
    ) -> CallSession:
        """Session `session_id` with the teller in it and a customer link whose token has
        `token_hash`, valid until `expires_at`.

        The id and expiry come from the caller, which logs the session before it exists: a
        session opened and then refused by the audit log would be left behind. The queue passes
        the digest of a link only the waiting customer can compute
        (server/workflow/queue/service.py), so the link itself never exists on the server.
        `workers` chooses its worker (None: none yet, the first one asked claims it).
        """
        if teller.role is not Role.TELLER or teller.user_id is None:
            raise forbidden("invite customers")
        async with self._db() as db, db.begin():
            session = CallSession(
                id=session_id,
                business=business,
                teller_id=teller.user_id,
                customer_name=customer_name,
                worker_id=None if workers is None else await workers.admit(db),
            )
            db.add(session)
            await db.flush()
            db.add(
                Participant(
                    session_id=session.id,
                    role=Role.TELLER.value,
                    user_id=teller.user_id,
                    display_name=teller.display_name,
                )
            )
            db.add(
                Invitation(
                    session_id=session.id,
                    token_hash=token_hash,
                    created_by=teller.user_id,
                    expires_at=expires_at,
                )
            )
            db.add(
                SessionEvent(
                    session_id=session.id,
                    type="invitation_created",
                    detail={
                        "expires_at": expires_at.isoformat(),
                        "by": teller.user_id,
                        "via": via,
                    },
                )
            )
        loaded = await self.get(session.id)
        assert loaded is not None
        return loaded

    async def invitation_status(self, token: str) -> tuple[InvitationStatus, Invitation | None]:
        async with self._db() as db:
            invitation = await db.scalar(
                select(Invitation).where(Invitation.token_hash == digest(token))
            )
        if invitation is None:
            return "unknown", None
        if invitation.used_at is not None:
            return "used", invitation
        if invitation.expires_at <= utcnow():
            return "expired", invitation
        return "valid", invitation

    async def redeem(self, token: str, held_credential: str | None) -> Redemption:
        """Exchange a single-use link for a customer credential bound to its session.

        A browser that already redeemed the link (a reload) presents its credential and gets the
        same participant back; anyone else gets `invitation_used`.
        """
        async with self._db() as db, db.begin():
            invitation = await db.scalar(
                select(Invitation).where(Invitation.token_hash == digest(token))
            )
            if invitation is None:
                raise ApiError(
                    404,
                    "invitation_unknown",
                    "This link is not valid. Please check it or ask your teller for a new one.",
                )
            session = invitation.session
            if session.state == "ended" and session.end_reason == TELLER_DISABLED:
                raise ApiError(
                    410,
                    "session_cancelled",
                    "This video appointment was cancelled: the member of staff who invited you "
                    "can no longer serve you. Please call the bank or contact your branch to "
                    "make a new appointment.",
                )
            if session.state == "ended":
                raise ApiError(410, "session_ended", "This video session has already ended.")
            if invitation.used_at is not None:
                participant = await db.get(Participant, invitation.used_by_participant_id)
                if (
                    held_credential is not None
                    and participant is not None
                    and participant.credential_hash == digest(held_credential)
                    and participant.csrf_token is not None
                ):
                    return Redemption(session, participant, None, participant.csrf_token)
                raise ApiError(
                    409,
                    "invitation_used",
                    "This link has already been used. Ask your teller for a new one.",
                )
            if invitation.expires_at <= utcnow():
                raise ApiError(
                    410,
                    "invitation_expired",
                    "This link has expired. Please ask your teller for a new one.",
                )
            credential, csrf = new_token(), new_token()
            participant_id = new_id("p")
            # Claim the link atomically: of browsers racing for one link (a leaked link, a
            # link-preview bot), exactly one sees used_at still empty when it writes.
            claimed = await db.execute(
                update(Invitation)
                .where(Invitation.id == invitation.id, Invitation.used_at.is_(None))
                .values(used_at=utcnow(), used_by_participant_id=participant_id)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise ApiError(
                    409,
                    "invitation_used",
                    "This link has already been used. Ask your teller for a new one.",
                )
            participant = Participant(
                id=participant_id,
                session_id=session.id,
                role=Role.CUSTOMER.value,
                display_name=session.customer_name or "客户",
                credential_hash=digest(credential),
                csrf_token=csrf,
            )
            db.add(participant)
            await db.flush()
            db.add(
                SessionEvent(
                    session_id=session.id,
                    participant_id=participant.id,
                    type="invitation_redeemed",
                    detail={},
                )
            )
        return Redemption(session, participant, credential, csrf)

    async def undo_redemption(self, redemption: Redemption) -> None:
        """Give a link back as if it had never been redeemed (its credential never handed out)."""
        participant_id = redemption.participant.id
        async with self._db() as db, db.begin():
            await db.execute(
                update(Invitation)
                .where(Invitation.used_by_participant_id == participant_id)
                .values(used_at=None, used_by_participant_id=None)
                .execution_options(synchronize_session=False)
            )
            await db.execute(
                delete(SessionEvent).where(
                    SessionEvent.participant_id == participant_id,
                    SessionEvent.type == "invitation_redeemed",
                )
            )
            await db.execute(delete(Participant).where(Participant.id == participant_id))

    # -- sessions and participants -----------------------------------------------------------

    async def get(self, session_id: str) -> CallSession | None:
        async with self._db() as db:
            return await db.get(CallSession, session_id)

    async def require(self, session_id: str) -> CallSession:
        session = await self.get(session_id)
        if session is None:
            raise ApiError(404, "unknown_session", "There is no such session.")
        return session

    async def visible_to(self, principal: Principal) -> list[CallSession]:
        query = select(CallSession).order_by(CallSession.created_at.desc()).limit(100)
        if principal.role is Role.TELLER:
            query = query.where(CallSession.teller_id == principal.user_id)
        elif principal.role is Role.EXPERT:
            query = query.where(
                CallSession.id.in_(
                    select(Participant.session_id).where(
                        Participant.user_id == principal.user_id,
                        Participant.role == Role.EXPERT.value,
                    )
                )
            )
        elif principal.role is Role.SUPERVISOR:
            query = query.where(CallSession.state.in_(OPEN_STATES))
        else:
            raise forbidden("list sessions")
        async with self._db() as db:
            return list((await db.scalars(query)).unique())

    async def can_view(self, principal: Principal, session: CallSession) -> bool:
        if principal.role is Role.SUPERVISOR:
            return True
        if principal.role is Role.CUSTOMER:
            return principal.session_id == session.id
        return any(p.user_id == principal.user_id for p in session.participants) and (
            principal.role in (Role.TELLER, Role.EXPERT)
        )

    async def participant_for(self, principal: Principal, session: CallSession) -> Participant:
        """The participant row a principal enters this session as; raises if it may not."""
        if principal.role is Role.CUSTOMER:
            if principal.session_id != session.id or principal.participant_id is None:
                raise ApiError(403, "forbidden", "Your link is for another session.")
            async with self._db() as db:
                found = await db.get(Participant, principal.participant_id)
            assert found is not None
            return found
        if principal.role not in (Role.TELLER, Role.EXPERT, Role.SUPERVISOR):
            raise forbidden("join calls")
        for participant in session.participants:
            if participant.user_id == principal.user_id and participant.role == principal.role:
                return participant
        if principal.role is not Role.SUPERVISOR:
            raise ApiError(403, "forbidden", "You are not invited to this session.")
        async with self._db() as db, db.begin():
            observer = Participant(
                session_id=session.id,
                role=Role.SUPERVISOR.value,
                user_id=principal.user_id,
                display_name=principal.display_name,
            )
            db.add(observer)
        return observer

    async def new_expert(self, teller: Principal, session_id: str, username: str) -> Participant:
        """The participant inviting `username` would add, not yet stored, or why it may not.

        Split from `add_expert` so the invitation is logged between the two: once the row
        exists the expert can see and enter the session.
        """
        session = await self.require(session_id)
        if teller.role is not Role.TELLER or session.teller_id != teller.user_id:
            raise forbidden("invite experts into this session")
        if session.state == "ended":
            raise ApiError(410, "session_ended", "This session has ended.")
        async with self._db() as db:
            expert = await db.scalar(
                select(User).where(User.username == username, User.active.is_(True))
            )
        if expert is None or expert.role != Role.EXPERT.value:
            raise ApiError(404, "unknown_user", f"There is no active expert {username!r}.")
        if any(p.user_id == expert.id for p in session.participants):
            raise ApiError(409, "already_invited", f"{expert.display_name} is already invited.")
        # The recording declares a track group per expert before the call starts
        # (recorder/container.py): a further expert would be seen and heard by everyone but
        # missing from the dual recording.
        if sum(p.role == Role.EXPERT.value for p in session.participants) >= EXPERT_SLOTS:
            raise ApiError(
                409,
                "too_many_experts",
                f"A session can have at most {EXPERT_SLOTS} experts (each one is recorded); "
                "start a new session to consult another.",
            )
        return Participant(
            id=new_id("p"),
            session_id=session.id,
            role=Role.EXPERT.value,
            user_id=expert.id,
            display_name=expert.display_name,
        )

    async def add_expert(self, teller: Principal, participant: Participant) -> Participant:
        """Store an expert participant from `new_expert`."""
        async with self._db() as db, db.begin():
            db.add(participant)
            db.add(
                SessionEvent(
                    session_id=participant.session_id,
                    type="expert_invited",
                    detail={"user_id": participant.user_id, "by": teller.user_id},
                )
            )
        return participant

    async def staff(self, role: Role) -> list[User]:
        async with self._db() as db:
            query = select(User).where(User.role == role.value, User.active.is_(True))
            return list(await db.scalars(query.order_by(User.display_name)))

    async def update_participant(
        self, participant_id: str, state: str, *, joined: bool = False, left: bool = False
    ) -> None:
        async with self._db() as db, db.begin():
            participant = await db.get(Participant, participant_id)
            if participant is None:
                return
            participant.state = state
            if joined and participant.joined_at is None:
                participant.joined_at = utcnow()
            if joined:
                participant.left_at = None
            if left:
                participant.left_at = utcnow()

    async def mark_active(self, session_id: str) -> None:
        async with self._db() as db, db.begin():
            session = await db.get(CallSession, session_id)
            if session is not None and session.state in ("waiting", "interrupted"):
                session.state = "active"
                session.started_at = session.started_at or utcnow()

    async def hosts(
        self, session_ids: Collection[str]
    ) -> dict[str, tuple[str, str | None, str | None]]:
        """State, hosting worker and end reason of each of these sessions."""
        if not session_ids:
            return {}
        async with self._db() as db:
            rows = await db.execute(
                select(
                    CallSession.id, CallSession.state, CallSession.worker_id, CallSession.end_reason
                ).where(CallSession.id.in_(session_ids))
            )
            return {row.id: (row.state, row.worker_id, row.end_reason) for row in rows}

    async def end(
        self,
        session_id: str,
        by: str | None,
        reason: str,
        *,
        unlink: bool = False,
        only_if: str | None = None,
    ) -> CallSession:
        """End the session; with `unlink`, also delete its customer links, in the same database
        transaction: a queue take that lost its ticket must free the ticket's link digest
        (unique) exactly when it ends the session nobody will join. With `only_if`, only a
        session still in that state is ended (read and changed in one transaction); any other
        is returned as it is."""
        async with self._db() as db, db.begin():
            if only_if is not None:
                # SQLite: the write lock before the read. PostgreSQL: the row lock below; a call
                # starting at this moment waits for this end, or this end sees it started.
                await exclusive(db, f"session:{session_id}")
            session = await db.get(
                CallSession,
                session_id,
                # The session's row only: its eager-loaded teller and worker are outer joins.
                with_for_update={"of": CallSession} if only_if is not None else None,
            )
            if session is None:
                raise ApiError(404, "unknown_session", "There is no such session.")
            if only_if is not None and session.state != only_if:
                return session
            if unlink:
                await db.execute(delete(Invitation).where(Invitation.session_id == session_id))
            if session.state != "ended":
                session.state = "ended"
                session.ended_at = utcnow()
                session.end_reason = reason
                now = utcnow()
                for participant in session.participants:
                    if participant.state in ("connected", "disconnected"):
                        participant.state = "left"
                        participant.left_at = now
                db.add(
                    SessionEvent(
                        session_id=session_id,
                        participant_id=by,
                        type="session_ended",
                        detail={"reason": reason},
                    )
                )
        ended = await self.get(session_id)
        assert ended is not None
        return ended

    # -- events and chat ---------------------------------------------------------------------

    async def record(
        self,
        session_id: str,
        event_type: str,
        participant_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        async with self._db() as db, db.begin():
            db.add(
                SessionEvent(
                    session_id=session_id,
                    participant_id=participant_id,
                    type=event_type,
                    detail=detail or {},
                )
            )

    async def events(self, session_id: str) -> list[SessionEvent]:
        async with self._db() as db:
            query = select(SessionEvent).where(SessionEvent.session_id == session_id)
            return list(await db.scalars(query.order_by(SessionEvent.id)))

    async def add_chat(self, session_id: str, participant_id: str, text: str) -> ChatMessage:
        async with self._db() as db, db.begin():
            message = ChatMessage(session_id=session_id, participant_id=participant_id, text=text)
            db.add(message)
        async with self._db() as db:
            loaded = await db.get(ChatMessage, message.id)
        assert loaded is not None
        return loaded

    async def chat(self, session_id: str) -> list[ChatMessage]:
        async with self._db() as db:
            query = select(ChatMessage).where(ChatMessage.session_id == session_id)
            return list(await db.scalars(query.order_by(ChatMessage.id)))
