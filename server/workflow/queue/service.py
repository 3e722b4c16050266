"""The public queue: customers wait, tellers take the next one (docs/workflow-queue.md).

A ticket's credential is a random token kept only by the customer's browser (an HttpOnly cookie);
the database has its digest. When a teller takes the ticket, a session and its customer link are
created exactly as for an invitation (SessionStore.open_session), but the link's token is derived
from the ticket's credential: the server stored only the digest of that derived token when the
ticket was issued, so the link is never held by the server or shown to the teller, and only the
waiting browser can turn its ticket into the call.

"Take next" claims a ticket with a conditional UPDATE (state still `waiting`): of tellers racing
for one customer, exactly one update changes a row, on every database, in every worker process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import structlog
from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.audit.actions import SYSTEM
from server.audit.log import AuditLog
from server.auth.principal import Principal, Role
from server.auth.ratelimit import SlidingWindow, address_key
from server.auth.tokens import digest, new_token
from server.crypto.rows import RowSealer, SealedRow
from server.db.engine import DbSession
from server.db.models import (
    CallSession,
    Invitation,
    QueueCallback,
    QueueTicket,
    StaffLogin,
    TellerProfile,
    User,
    new_id,
    utcnow,
)
from server.errors import ApiError
from server.sessions.store import TELLER_DISABLED, Placement, SessionStore
from server.workflow.queue.config import QueueConfig
from server.workflow.queue.estimate import Estimate, HandlingTime, estimate, handling_time
from server.workflow.queue.phone import normalize_mobile

Topic = Literal["wealth", "insurance", "cards", "other"]
TellerStatus = Literal["available", "away"]
# What the customer chooses on the entry page, and the session business (and so the sales script
# of server/recording/script.py) it becomes.
TOPIC_BUSINESS: Mapping[str, str] = MappingProxyType(
    {"wealth": "wealth", "insurance": "insurance", "cards": "general", "other": "general"}
)
_INVITATION_LABEL = b"vteller/queue/invitation/v1"
# Candidates fetched per claim attempt: enough that tellers racing for the head of the queue
# each find an unclaimed ticket in one round.
_CANDIDATES = 8
_CLAIM_ROUNDS = 5
# Far longer than creating a session takes: a ticket taken this long ago without one was orphaned.
_TAKE_GRACE = timedelta(seconds=60)

log = structlog.get_logger(__name__)


def invitation_token(ticket_token: str) -> str:
    """The customer link token a ticket turns into when taken (computable only with the ticket)."""
    mac = hmac.new(ticket_token.encode(), _INVITATION_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _aad(callback_id: str, ticket_id: str) -> bytes:
    return f"vteller/queue-callback/v1\x00{callback_id}\x00{ticket_id}".encode()


@dataclass(frozen=True)
class NewTicket:
    ticket: QueueTicket
    token: str


@dataclass(frozen=True)
class Standing:
    """Where a waiting ticket stands: its place among those served before it, and the estimate."""

    position: int
    estimate: Estimate


@dataclass(frozen=True)
class TellerState:
    user: User
    skills: list[str]
    status: str  # available | in_call | away
    current_session_id: str | None


@dataclass(frozen=True)
class Taken:
    ticket: QueueTicket
    session: CallSession


class QueueService:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        store: SessionStore,
        audit: AuditLog,
        config: QueueConfig,
        invitation_ttl: timedelta,
        keyring_path: Path,
    ) -> None:
        self._db = db
        self._store = store
        self._audit = audit
        self.config = config
        self._invitation_ttl = invitation_ttl
        self._sealer = RowSealer(keyring_path)
        self._new_tickets = SlidingWindow(config.tickets_per_address, config.address_window_seconds)
        self._requests = SlidingWindow(config.requests_per_address, config.address_window_seconds)

    # -- abuse limits ------------------------------------------------------------------------

    def limit(self, address: str, *, new_ticket: bool = False) -> None:
        """Count one public request from `address` (an IPv6 one: from its /64); ApiError 429 when
        over a limit."""
        windows = [self._requests] + ([self._new_tickets] if new_ticket else [])
        key = address_key(address)
        wait = max(window.retry_after(key) for window in windows)
        if wait > 0:
            seconds = int(wait) + 1
            raise ApiError(
                429,
                "rate_limited",
                f"Too many requests from your network. Please try again in {seconds} seconds.",
                headers={"Retry-After": str(seconds)},
            )
        for window in windows:
            window.hit(key)

    # -- the customer's ticket ---------------------------------------------------------------

    async def join(self, topic: Topic, elderly: bool) -> NewTicket:
        token = new_token()
        ticket = QueueTicket(
            token_hash=digest(token),
            invitation_hash=digest(invitation_token(token)),
            csrf_token=new_token(),
            topic=topic,
            business=TOPIC_BUSINESS[topic],
            elderly=elderly,
        )
        async with self._db() as db, db.begin():
            db.add(ticket)
        return NewTicket(ticket, token)

    async def discard(self, ticket_id: str) -> None:
        """Remove a ticket whose joining could not be logged: it was never in the queue (no
        customer holds its credential), so no teller may take it meanwhile."""
        async with self._db() as db, db.begin():
            waiting = (QueueTicket.id == ticket_id) & (QueueTicket.state == "waiting")
            await db.execute(delete(QueueTicket).where(waiting))

    async def ticket(self, token: str | None, *, seen: bool = False) -> QueueTicket:
        """The ticket a credential names; `seen` records that its page is still open."""
        if not token:
            raise _unknown_ticket()
        await self.sweep()
        async with self._db() as db, db.begin():
            ticket = await db.scalar(
                select(QueueTicket).where(QueueTicket.token_hash == digest(token))
            )
            if ticket is None:
                raise _unknown_ticket()
            if ticket.state in ("abandoned", "expired"):
                raise ApiError(
                    410,
                    "ticket_expired",
                    "Your place in the queue has lapsed. Please join the queue again.",
                )
            if ticket.state == "cancelled":
                raise ApiError(
                    410, "ticket_closed", "You left the queue. Join again whenever you like."
                )
            if seen and ticket.state in ("waiting", "taken"):
                ticket.seen_at = utcnow()
        return ticket

    async def standing(self, ticket: QueueTicket) -> Standing:
        """Position (1 = next) among the waiting tickets a teller would take before this one."""
        async with self._db() as db:
            earlier = QueueTicket.created_at < ticket.created_at
            # The elderly lane is served first, each lane in order of arrival.
            before = (
                and_(QueueTicket.elderly.is_(True), earlier)
                if ticket.elderly
                else or_(QueueTicket.elderly.is_(True), earlier)
            )
            ahead = and_(
                QueueTicket.state == "waiting",
                QueueTicket.business == ticket.business,
                QueueTicket.id != ticket.id,
                before,
            )
            if ticket.assigned_to is None:
                ahead = and_(ahead, QueueTicket.assigned_to.is_(None))
            else:
                ahead = and_(ahead, QueueTicket.assigned_to == ticket.assigned_to)
            position = int(await db.scalar(select(func.count()).where(ahead)) or 0) + 1
            handling = await handling_time(db, self.config)
        if ticket.assigned_to is not None:
            tellers = 1
        else:
            tellers = sum(
                1
                for state in await self.tellers()
                if state.status != "away" and ticket.business in state.skills
            )
        return Standing(position, estimate(position, tellers, handling))

    async def cancel(self, ticket: QueueTicket) -> None:
        if not await self._close(ticket.id, "cancelled"):
            raise _not_waiting()

    async def request_callback(
        self, ticket: QueueTicket, phone: str, log: Callable[[QueueCallback], Awaitable[None]]
    ) -> QueueCallback:
        """Turn a waiting ticket into a callback to `phone` (sealed at rest).

        `log` records the request once it is made; if it refuses, the request is undone: no
        number is kept and the customer's place in the queue is waiting again.
        """
        number = normalize_mobile(phone)
        callback_id = str(uuid.uuid4())
        plaintext = json.dumps({"phone": number}).encode()
        # The keyring is read from its file and the number encrypted: off the event loop.
        sealed = await asyncio.to_thread(
            self._sealer.seal, uuid.UUID(callback_id), _aad(callback_id, ticket.id), plaintext
        )
        callback = QueueCallback(
            id=callback_id,
            ticket_id=ticket.id,
            business=ticket.business,
            elderly=ticket.elderly,
            phone_hint=number[-4:],
            key_id=sealed.key_id,
            wrapped_key=sealed.wrapped_key,
            sealed=sealed.sealed,
        )
        async with self._db() as db, db.begin():
            claimed = await db.execute(
                update(QueueTicket)
                .where(QueueTicket.id == ticket.id, QueueTicket.state == "waiting")
                .values(state="callback", closed_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise _not_waiting()
            db.add(callback)
        try:
            await log(callback)
        except BaseException:
            async with self._db() as db, db.begin():
                await db.execute(delete(QueueCallback).where(QueueCallback.id == callback_id))
                await db.execute(
                    update(QueueTicket)
                    .where(QueueTicket.id == ticket.id, QueueTicket.state == "callback")
                    .values(state="waiting", closed_at=None)
                    .execution_options(synchronize_session=False)
                )
            raise
        return callback

    async def callback_of(self, ticket: QueueTicket) -> QueueCallback | None:
        async with self._db() as db:
            return await db.scalar(
                select(QueueCallback).where(QueueCallback.ticket_id == ticket.id)
            )

    async def sweep(self) -> None:
        """Close waiting tickets whose page stopped asking, or that waited too long; give back
        tickets whose take was interrupted."""
        now = utcnow()
        stale = or_(
            QueueTicket.seen_at < now - timedelta(seconds=self.config.abandon_after_seconds),
            QueueTicket.created_at < now - timedelta(minutes=self.config.max_wait_minutes),
        )
        async with self._db() as db:
            rows = (
                await db.execute(
                    select(QueueTicket.id, QueueTicket.created_at).where(
                        QueueTicket.state == "waiting", stale
                    )
                )
            ).all()
        interrupted = and_(
            QueueTicket.state == "taken",
            QueueTicket.session_id.is_(None),
            QueueTicket.closed_at < now - _TAKE_GRACE,
        )
        # The session a take created holds the ticket's link (an invitation on its digest).
        link = select(Invitation.session_id).where(
            Invitation.token_hash == QueueTicket.invitation_hash
        )
        async with self._db() as db, db.begin():
            # A take interrupted after its session was created (the database failed as the
            # ticket was to name it) is finished: the session is the teller's and the take is
            # logged. Given back instead, the ticket's next take would collide with that link.
            await db.execute(
                update(QueueTicket)
                .where(interrupted, link.exists())
                .values(session_id=link.scalar_subquery())
                .execution_options(synchronize_session=False)
            )
            # A take interrupted before (its worker was killed) gives the customer their place
            # back.
            await db.execute(
                update(QueueTicket)
                .where(interrupted)
                .values(state="waiting", taken_by=None, closed_at=None)
                .execution_options(synchronize_session=False)
            )
        # A take that lost its ticket and could not undo its session then (the database failed)
        # left the ticket's link behind, and the ticket's next take would collide with it. A
        # waiting ticket's link older than a take lasts is such a leftover, never a live take's.
        async with self._db() as db:
            leftovers = list(
                await db.scalars(
                    select(Invitation.session_id)
                    .join(QueueTicket, QueueTicket.invitation_hash == Invitation.token_hash)
                    .where(
                        QueueTicket.state == "waiting", Invitation.created_at < now - _TAKE_GRACE
                    )
                )
            )
        for session_id in leftovers:
            log.warning("queue_take_undone_late", session_id=session_id)
            await self._undo_take(session_id)
        too_old = now - timedelta(minutes=self.config.max_wait_minutes)
        for ticket_id, created_at in rows:
            reason = "expired" if created_at < too_old else "abandoned"
            # Only the sweeper whose update wins logs it: several workers may sweep at once.
            if await self._close(ticket_id, reason):
                await self._audit.append_fact(
                    "queue.left",
                    actor=SYSTEM,
                    actor_role=SYSTEM,
                    target=ticket_id,
                    detail={"reason": reason},
                )

    async def _close(self, ticket_id: str, state: str) -> bool:
        async with self._db() as db, db.begin():
            closed = await db.execute(
                update(QueueTicket)
                .where(QueueTicket.id == ticket_id, QueueTicket.state == "waiting")
                .values(state=state, closed_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        return bool(closed.rowcount == 1)  # type: ignore[attr-defined]

    # -- tellers -----------------------------------------------------------------------------

    async def tellers(self) -> list[TellerState]:
        now = utcnow()
        async with self._db() as db:
            rows = (
                await db.execute(
                    select(User, TellerProfile, CallSession.state)
                    .outerjoin(TellerProfile, TellerProfile.user_id == User.id)
                    .outerjoin(CallSession, CallSession.id == TellerProfile.current_session_id)
                    .where(User.role == Role.TELLER.value, User.active.is_(True))
                    .order_by(User.display_name)
                )
            ).all()
            logged_in = set(
                await db.scalars(
                    select(StaffLogin.user_id).where(
                        StaffLogin.revoked_at.is_(None), StaffLogin.expires_at > now
                    )
                )
            )
        return [
            self._state(user, profile, session_state, user.id in logged_in)
            for user, profile, session_state in rows
        ]

    async def teller(self, user_id: str) -> TellerState:
        for state in await self.tellers():
            if state.user.id == user_id:
                return state
        raise ApiError(404, "unknown_teller", "There is no active teller with this id.")

    def _state(
        self,
        user: User,
        profile: TellerProfile | None,
        session_state: str | None,
        logged_in: bool,
    ) -> TellerState:
        if profile is None:
            return TellerState(user, list(self.config.default_skills), "away", None)
        in_call = profile.current_session_id is not None and session_state not in (None, "ended")
        # A teller who logged out (or whose login expired) is not there to take anyone, whatever
        # they chose last: away, so that estimates do not count them.
        chosen = profile.status if logged_in else "away"
        status = "in_call" if in_call else chosen
        return TellerState(
            user,
            list(profile.skills),
            status,
            profile.current_session_id if in_call else None,
        )

    async def set_status(
        self, teller: Principal, status: TellerStatus, address: str | None
    ) -> None:
        """Set the teller's chosen status."""
        previous = await self.teller(teller.user_id or "")
        await self._log(
            "teller.status_changed",
            teller,
            previous.user.id,
            {"status": status, "previous": previous.status},
            address,
        )
        async with self._db() as db, db.begin():
            profile = await self._profile(db, previous.user.id)
            profile.status = status
            profile.status_at = utcnow()

    async def set_skills(
        self, user_id: str, skills: list[str], by: Principal, address: str | None
    ) -> None:
        """Set a teller's skills."""
        previous = await self.teller(user_id)
        chosen = sorted(set(skills))
        await self._log(
            "teller.skills_changed",
            by,
            user_id,
            {"skills": chosen, "previous": previous.skills},
            address,
        )
        async with self._db() as db, db.begin():
            profile = await self._profile(db, user_id)
            profile.skills = chosen
            profile.updated_by = by.user_id

    async def _log(
        self,
        action: str,
        by: Principal,
        target: str,
        detail: dict[str, Any],
        address: str | None,
    ) -> None:
        """A staff member's change, logged before it is written (docs/audit-log.md section 4):
        if the log cannot take the entry, the change does not happen."""
        await self._audit.append(
            action,
            actor=by.user_id or "",
            actor_role=by.role.value,
            target=target,
            detail=detail,
            address=address,
        )

    async def _profile(self, db: DbSession, user_id: str) -> TellerProfile:
        profile = await db.get(TellerProfile, user_id)
        if profile is None:
            profile = TellerProfile(
                user_id=user_id, skills=list(self.config.default_skills), status="away"
            )
            db.add(profile)
        return profile

    # -- taking and routing ------------------------------------------------------------------

    async def take_next(
        self, teller: Principal, workers: Placement | None, address: str | None
    ) -> Taken:
        state = await self.teller(teller.user_id or "")
        if state.status == "in_call":
            raise ApiError(
                409,
                "teller_in_call",
                "You are still in a call with the last customer. End it before taking the next.",
            )
        if state.status == "away":
            raise ApiError(
                409, "teller_away", "You are marked as away. Set yourself available first."
            )
        if not state.skills:
            raise ApiError(
                409, "no_skills", "You have no businesses to serve yet; ask your supervisor."
            )
        await self.sweep()
        ticket = await self._claim(state)
        session_id, expires_at = new_id("s"), utcnow() + self._invitation_ttl
        try:
            if workers is not None:
                # Every worker full: the customer keeps their place (below), nothing is logged.
                await workers.check_room()
            # Logged before the session exists: a session opened first and then refused would
            # stay behind holding the ticket's link, and every later take of the ticket fail.
            await self._log(
                "queue.taken",
                teller,
                ticket.id,
                {
                    "session_id": session_id,
                    "business": ticket.business,
                    "elderly": ticket.elderly,
                    "assigned": ticket.assigned_to == teller.user_id,
                    "waited_seconds": waited_seconds(ticket.created_at),
                },
                address,
            )
            session = await self._store.open_session(
                teller,
                ticket.business,
                "",
                expires_at,
                workers,
                ticket.invitation_hash,
                session_id,
                via="queue",
            )
        except BaseException:
            # The customer keeps their place if the session could not be created, provided the
            # ticket is still this teller's and names no session: a take slower than the sweep's
            # grace has been given back, and may be another teller's by now, or this teller's
            # again through another take that has named its own session.
            async with self._db() as db, db.begin():
                await db.execute(
                    update(QueueTicket)
                    .where(
                        QueueTicket.id == ticket.id,
                        QueueTicket.state == "taken",
                        QueueTicket.taken_by == state.user.id,
                        QueueTicket.session_id.is_(None),
                    )
                    .values(state="waiting", taken_by=None, closed_at=None)
                )
            raise
        async with self._db() as db, db.begin():
            # Only while the ticket is still this take's: one slower than the sweep's grace was
            # given back, and may have been cancelled, expired or taken by another teller since.
            # (The sweep itself may have named this very session: an interrupted take finished.)
            named = await db.execute(
                update(QueueTicket)
                .where(
                    QueueTicket.id == ticket.id,
                    QueueTicket.state == "taken",
                    QueueTicket.taken_by == state.user.id,
                    or_(QueueTicket.session_id.is_(None), QueueTicket.session_id == session.id),
                )
                .values(session_id=session.id)
                .execution_options(synchronize_session=False)
            )
            lost = named.rowcount != 1  # type: ignore[attr-defined]
            row = None if lost else await db.get(QueueTicket, ticket.id)
            if row is not None:
                profile = await self._profile(db, state.user.id)
                profile.current_session_id = session.id
        if row is None:
            await self._take_lost(teller, ticket.id, session.id, address)
            raise ApiError(
                409,
                "ticket_lost",
                "This customer was no longer yours when their call was ready: the take took so "
                "long that their place went back to the queue, and they may have left or been "
                "taken by another teller since. Nothing was started; take next again.",
            )
        return Taken(row, session)

    async def _take_lost(
        self, teller: Principal, ticket_id: str, session_id: str, address: str | None
    ) -> None:
        """Undo a take that lost its ticket, and follow its `queue.taken` entry with the fact.

        The teller hears `ticket_lost` even if the undo fails (the database failed): the ticket
        is not theirs either way. The link it leaves behind is freed by the sweep."""
        try:
            await self._undo_take(session_id)
            undone = True
        except Exception:
            log.exception("queue_take_undo_failed", ticket_id=ticket_id, session_id=session_id)
            undone = False
        await self._audit.append_fact(
            "queue.take_lost",
            actor=teller.user_id or "",
            actor_role=teller.role.value,
            target=ticket_id,
            detail={"session_id": session_id, "undone": undone},
            address=address,
        )

    async def _undo_take(self, session_id: str) -> None:
        """End the session of a take that lost its ticket and remove its link, together: the
        link is on the ticket's digest, which the ticket's next take must be able to use."""
        await self._store.end(session_id, None, "queue_take_lost", unlink=True)

    async def _claim(self, teller: TellerState) -> QueueTicket:
        me = teller.user.id
        eligible = and_(
            QueueTicket.state == "waiting",
            QueueTicket.business.in_(teller.skills),
            or_(QueueTicket.assigned_to.is_(None), QueueTicket.assigned_to == me),
        )
        order = (
            # Not a plain comparison: NULL (unassigned) sorts differently per database.
            case((QueueTicket.assigned_to == me, 0), else_=1),
            QueueTicket.elderly.desc(),
            QueueTicket.created_at,
            QueueTicket.id,
        )
        for _ in range(_CLAIM_ROUNDS):
            async with self._db() as db:
                candidates = list(
                    await db.scalars(
                        select(QueueTicket).where(eligible).order_by(*order).limit(_CANDIDATES)
                    )
                )
            if not candidates:
                break
            for candidate in candidates:
                async with self._db() as db, db.begin():
                    won = await db.execute(
                        update(QueueTicket)
                        .where(QueueTicket.id == candidate.id, eligible)
                        .values(state="taken", taken_by=me, closed_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    candidate.state = "taken"
                    candidate.taken_by = me
                    return candidate
        raise ApiError(404, "queue_empty", "Nobody you can serve is waiting right now.")

    async def assign(
        self, ticket_id: str, teller_id: str, by: Principal, address: str | None
    ) -> QueueTicket:
        """Route a waiting ticket to one teller."""
        teller = await self.teller(teller_id)
        async with self._db() as db:
            ticket = await db.get(QueueTicket, ticket_id)
        if ticket is None:
            raise _unknown_ticket()
        if ticket.business not in teller.skills:
            raise ApiError(
                409,
                "skill_missing",
                f"{teller.user.display_name} may not serve this business; "
                "change their skills first.",
            )
        if ticket.state != "waiting":
            raise _not_waiting()
        await self._log(
            "queue.reassigned",
            by,
            ticket.id,
            {"teller_id": teller_id, "previous": ticket.assigned_to},
            address,
        )
        async with self._db() as db, db.begin():
            moved = await db.execute(
                update(QueueTicket)
                .where(QueueTicket.id == ticket_id, QueueTicket.state == "waiting")
                .values(assigned_to=teller_id)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise _not_waiting()
        ticket.assigned_to = teller_id
        return ticket

    async def waiting(self) -> list[QueueTicket]:
        await self.sweep()
        async with self._db() as db:
            query = select(QueueTicket).where(QueueTicket.state == "waiting")
            order = (QueueTicket.elderly.desc(), QueueTicket.created_at, QueueTicket.id)
            return list(await db.scalars(query.order_by(*order)))

    async def handling(self) -> HandlingTime:
        async with self._db() as db:
            return await handling_time(db, self.config)

    # -- callbacks ---------------------------------------------------------------------------

    async def callbacks(self) -> list[QueueCallback]:
        async with self._db() as db:
            query = select(QueueCallback).where(QueueCallback.state != "done")
            return list(await db.scalars(query.order_by(QueueCallback.created_at)))

    async def claim_callback(
        self, teller: Principal, callback_id: str, log: Callable[[QueueCallback], Awaitable[None]]
    ) -> tuple[QueueCallback, str]:
        """The callback's phone number, for the teller who claims it (again for the same one).

        `log` records the claim once it is made; if it refuses, a claim this call made is undone,
        so that no teller is told another one is calling the customer.
        """
        state = await self.teller(teller.user_id or "")
        me = state.user.id
        claimed = ApiError(409, "callback_claimed", "Another teller is calling this customer.")
        done = ApiError(410, "callback_done", "This callback has been completed.")
        async with self._db() as db, db.begin():
            callback = await self._callback(db, callback_id)
            if callback.business not in state.skills:
                raise ApiError(
                    403, "forbidden", "This callback is for a business you do not serve."
                )
            if callback.state == "claimed" and callback.claimed_by != me:
                raise claimed
            if callback.state == "done" or callback.sealed is None or callback.key_id is None:
                raise done
            newly = callback.state == "open"
            # Compare-and-set on what was just read: two tellers who both read it open must not
            # both be given the number.
            moved = await db.execute(
                update(QueueCallback)
                .where(
                    QueueCallback.id == callback_id,
                    QueueCallback.state == "open"
                    if newly
                    else and_(QueueCallback.state == "claimed", QueueCallback.claimed_by == me),
                )
                .values(
                    state="claimed",
                    claimed_by=me,
                    claimed_at=func.coalesce(QueueCallback.claimed_at, utcnow()),
                )
                .execution_options(synchronize_session=False)
            )
            await db.refresh(callback)
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise done if callback.state == "done" else claimed
        try:
            await log(callback)
        except BaseException:
            if newly:
                async with self._db() as db, db.begin():
                    await db.execute(
                        update(QueueCallback)
                        .where(
                            QueueCallback.id == callback.id,
                            QueueCallback.state == "claimed",
                            QueueCallback.claimed_by == me,
                        )
                        .values(state="open", claimed_by=None, claimed_at=None)
                    )
            raise
        plaintext = await asyncio.to_thread(
            self._sealer.open,
            uuid.UUID(callback.id),
            _aad(callback.id, callback.ticket_id),
            SealedRow(callback.key_id, callback.wrapped_key or b"", callback.sealed),
        )
        return callback, str(json.loads(plaintext)["phone"])

    async def finish_callback(
        self, teller: Principal, callback_id: str, log: Callable[[QueueCallback], Awaitable[None]]
    ) -> QueueCallback:
        """Mark a claimed callback done; its number is erased (kept no longer than needed).

        `log` records it once done; if it refuses, the callback is claimed again, number and all.
        """
        async with self._db() as db, db.begin():
            callback = await self._callback(db, callback_id)
            if callback.state != "claimed" or callback.claimed_by != teller.user_id:
                raise ApiError(
                    409, "callback_not_yours", "Claim this callback before completing it."
                )
            # What completing erases, put back if the log refuses it.
            kept = {
                "key_id": callback.key_id,
                "wrapped_key": callback.wrapped_key,
                "sealed": callback.sealed,
            }
            callback.state = "done"
            callback.done_at = utcnow()
            callback.key_id = callback.wrapped_key = callback.sealed = None
        try:
            await log(callback)
        except BaseException:
            async with self._db() as db, db.begin():
                await db.execute(
                    update(QueueCallback)
                    .where(QueueCallback.id == callback_id, QueueCallback.state == "done")
                    .values(state="claimed", done_at=None, **kept)
                )
            raise
        return callback

    async def _callback(self, db: DbSession, callback_id: str) -> QueueCallback:
        callback = await db.get(QueueCallback, callback_id)
        if callback is None:
            raise ApiError(404, "unknown_callback", "There is no such callback request.")
        return callback


@dataclass(frozen=True)
class Released:
    """What `release_teller` gave back."""

    cancelled: list[str]  # ids of the teller's sessions that had not started, now ended
    requeued: list[tuple[str, str]]  # (ticket id, its cancelled session id): waiting again
    unassigned: list[str]  # ids of waiting tickets routed to the teller, now in the general queue


async def release_teller(
    db: async_sessionmaker[DbSession], store: SessionStore, teller_id: str
) -> Released:
    """Give back what a disabled teller's customers wait for, since the teller cannot come.

    Sessions of theirs that have not started (nobody was in a call yet) end as TELLER_DISABLED,
    so their links say the appointment was cancelled; a worker whose room holds a customer in the
    lobby ends it at its next heartbeat (`reconcile`). A queue customer taken for such a session
    who has not opened its link is waiting again in their place (the ticket keeps its age), the
    link removed with the session, as after a take that lost its ticket. Waiting tickets routed
    to the teller go back to the general queue. Sessions in progress are left alone: they go on
    as after a dropped connection (docs/deployment.md, "Staff accounts").
    """
    async with db() as session:
        not_started = list(
            await session.scalars(
                select(CallSession.id)
                .where(CallSession.teller_id == teller_id, CallSession.state == "waiting")
                .order_by(CallSession.created_at)
            )
        )
        unopened = (
            await session.execute(
                select(QueueTicket.id, Invitation.session_id)
                .join(Invitation, Invitation.session_id == QueueTicket.session_id)
                .where(
                    QueueTicket.state == "taken",
                    QueueTicket.session_id.in_(not_started),
                    Invitation.used_at.is_(None),
                )
                .order_by(QueueTicket.created_at)
            )
        ).all()
    requeued: list[tuple[str, str]] = []
    async with db() as session, session.begin():
        # The ticket first: should the session's end fail, the sweep frees the link of a waiting
        # ticket that is still held (`queue_take_undone_late`), whereas a ticket left taken would
        # send its customer to a link that no longer works.
        for ticket_id, session_id in unopened:
            back = await session.execute(
                update(QueueTicket)
                .where(
                    QueueTicket.id == ticket_id,
                    QueueTicket.state == "taken",
                    QueueTicket.session_id == session_id,
                )
                .values(
                    state="waiting",
                    taken_by=None,
                    session_id=None,
                    closed_at=None,
                    assigned_to=None,
                )
                .execution_options(synchronize_session=False)
            )
            if back.rowcount == 1:  # type: ignore[attr-defined]
                requeued.append((ticket_id, session_id))
        routed = (QueueTicket.state == "waiting") & (QueueTicket.assigned_to == teller_id)
        unassigned = list(
            await session.scalars(
                select(QueueTicket.id).where(routed).order_by(QueueTicket.created_at)
            )
        )
        await session.execute(
            update(QueueTicket)
            .where(QueueTicket.id.in_(unassigned), routed)
            .values(assigned_to=None)
            .execution_options(synchronize_session=False)
        )
    freed = {session_id for _, session_id in requeued}
    cancelled: list[str] = []
    for session_id in not_started:
        # Only if still not started: a call that began since the read above goes on.
        ended = await store.end(
            session_id, None, TELLER_DISABLED, unlink=session_id in freed, only_if="waiting"
        )
        if ended.end_reason == TELLER_DISABLED:
            cancelled.append(session_id)
    return Released(cancelled, requeued, unassigned)


def waited_seconds(since: datetime) -> int:
    return max(0, int((utcnow() - since).total_seconds()))


def _unknown_ticket() -> ApiError:
    return ApiError(
        404,
        "ticket_unknown",
        "We could not find your place in the queue. Please join the queue again.",
    )


def _not_waiting() -> ApiError:
    return ApiError(
        409,
        "ticket_not_waiting",
        "This place in the queue is no longer waiting (taken by a teller, or a callback is "
        "requested).",
    )
