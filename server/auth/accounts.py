"""Staff account administration after creation: list, disable and enable (the leaver process),
unlock a locked-out account, reset a password. Its users: `vteller admin ...` (server/cli.py), an
operator acting on any account, and the supervisor's staff page (server/api/account_routes.py),
acting on tellers' and experts' accounts only and never resetting a password (a supervisor must
never know a teller's password).

What grants access (enable, unlock, a new password) is logged before it takes effect and is
refused if the audit log cannot take it. What takes access away (disable) happens first and is
logged after the fact, like a logout: a leaver must never keep access because the log was down.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.auth.passwords import hash_password
from server.auth.principal import Role
from server.auth.ratelimit import LoginThrottle
from server.db.engine import DbSession
from server.db.models import CallSession, Participant, StaffDevice, StaffLogin, User, utcnow
from server.errors import ApiError, forbidden
from server.sessions.store import OPEN_STATES, TELLER_DISABLED, SessionStore
from server.workflow.queue.service import Released, release_teller

if TYPE_CHECKING:
    from server.audit import AuditLog
    from server.audit.chain import Entry

# A disable's reason, for the audit log: a few words at least, never an essay.
MIN_REASON_LENGTH, MAX_REASON_LENGTH = 4, 500
# The accounts a supervisor looks after on the staff page: those of the people who work in their
# branch's calls. Supervisors, auditors and admins are an operator's (`vteller admin`), so that no
# supervisor can lock out a peer or the auditors who check on them.
SUPERVISED_ROLES = frozenset({Role.TELLER, Role.EXPERT})


@dataclass(frozen=True)
class Account:
    user: User
    last_login: datetime | None  # None: never logged in
    locked_seconds: float  # until its login lock-out ends; 0 when not locked out

    def view(self) -> dict[str, Any]:
        """The account as `vteller admin list-users --json` and the staff page show it: nothing
        secret (no password hash, no login or device tokens)."""
        user = self.user
        locked = math.ceil(self.locked_seconds)
        return {
            "id": user.id,
            "username": user.username,
            "role": user.role,
            "display_name": user.display_name,
            "disabled": not user.active,
            "disabled_at": _iso(user.disabled_at),
            "disabled_reason": user.disabled_reason,
            "locked_out_seconds": locked,
            "locked_out_until": _iso(utcnow() + timedelta(seconds=locked) if locked else None),
            "last_login_at": _iso(self.last_login),
            "created_at": _iso(user.created_at),
        }


@dataclass(frozen=True)
class Disabled:
    logins_ended: int
    # ids of sessions in progress the user was the teller of or took part in
    open_sessions: list[str]
    released: Released  # what the user's customers waited for, given back
    logged: bool  # False: the audit log refused an entry (logged as an error instead)


@dataclass(frozen=True)
class StaffAccounts:
    """What account administration needs besides who acts: one per application, for the API
    (Services.accounts), which acts as the request's principal."""

    db: async_sessionmaker[DbSession]
    throttle: LoginThrottle
    audit: AuditLog

    def supervised_by(self, user_id: str, address: str | None) -> AccountAdmin:
        """Administration by the supervisor `user_id` (the staff page): of tellers and experts
        only (SUPERVISED_ROLES), never their own account."""
        return AccountAdmin(
            self.db,
            self.throttle,
            self.audit,
            actor=user_id,
            actor_role=Role.SUPERVISOR.value,
            address=address,
            roles=SUPERVISED_ROLES,
        )


class AccountAdmin:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        throttle: LoginThrottle,
        audit: AuditLog,
        *,
        actor: str,
        actor_role: str,
        address: str | None = None,
        roles: frozenset[Role] | None = None,
    ) -> None:
        """`actor`, `actor_role`: who acts, as the audit log names them; `address`: where from,
        for the log (a request's). `roles`: the accounts of these roles only may be listed and
        acted on, and never the actor's own (the staff page's supervisor: SUPERVISED_ROLES);
        None: every account (an operator)."""
        self._db = db
        self._throttle = throttle
        self._audit = audit
        self._actor = actor
        self._actor_role = actor_role
        self._address = address
        self._roles = roles

    async def accounts(self) -> list[Account]:
        query = select(User).order_by(User.username)
        if self._roles is not None:
            query = query.where(User.role.in_(self._roles), User.id != self._actor)
        async with self._db() as db:
            users = (await db.scalars(query)).all()
            last_logins: dict[str, datetime] = {
                user_id: at
                for user_id, at in await db.execute(
                    select(StaffLogin.user_id, func.max(StaffLogin.created_at)).group_by(
                        StaffLogin.user_id
                    )
                )
            }
            devices = await _devices(db, [user.id for user in users])
        return [
            Account(
                user,
                last_logins.get(user.id),
                await self._throttle.lockout(user.username, devices.get(user.id, [])),
            )
            for user in users
        ]

    async def username(self, user_id: str) -> str:
        """The login name of the account with this id, if this actor may act on it."""
        async with self._db() as db:
            user = await db.scalar(select(User).where(User.id == user_id))
        if user is None:
            raise _unknown(f"with the id {user_id!r}; GET /api/v1/staff/accounts lists them")
        return self._allowed(user).username

    async def lockout(self, username: str) -> float:
        """Seconds until the account's login lock-out ends; 0 when it is not locked out."""
        async with self._db() as db:
            user = await self._target(db, username)
            devices = await _devices(db, [user.id])
        return await self._throttle.lockout(user.username, devices.get(user.id, []))

    async def disable(self, username: str, reason: str) -> Disabled:
        """Disable the account and end its logins at once: every request with its cookies is
        refused from now on, and its open call connections are closed at their next login
        check (`ws_login_check_seconds`), as after a logout. A teller's customers who wait for
        them are given back: sessions not started cancelled, queue tickets requeued
        (`release_teller`)."""
        reason = reason.strip()
        if not MIN_REASON_LENGTH <= len(reason) <= MAX_REASON_LENGTH:
            raise ApiError(
                400,
                "invalid_reason",
                f"The reason needs {MIN_REASON_LENGTH} to {MAX_REASON_LENGTH} characters "
                '(e.g. "left the bank"); the audit log keeps it.',
            )
        async with self._db() as db, db.begin():
            user = await self._target(db, username)
            # Compare-and-set: of two operators disabling at once, one disables and logs it.
            done = await db.execute(
                update(User)
                .where(User.id == user.id, User.active.is_(True))
                .values(active=False, disabled_at=utcnow(), disabled_reason=reason)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise ApiError(
                    409,
                    "already_disabled",
                    f"{username!r} is already disabled (since {_when(user.disabled_at)}: "
                    f"{user.disabled_reason or 'no reason recorded'}); nothing was changed.",
                )
            ended = await _end_logins(db, user.id)
            sessions = list(
                await db.scalars(
                    select(CallSession.id)
                    .where(
                        CallSession.state.in_(OPEN_STATES),
                        (CallSession.teller_id == user.id)
                        | CallSession.id.in_(
                            select(Participant.session_id).where(Participant.user_id == user.id)
                        ),
                    )
                    .order_by(CallSession.created_at)
                )
            )
        # Logged before the release: should the database fail during it, the disable that did
        # happen is in the log all the same.
        entries = [
            await self._audit.append_fact(
                "admin.user_disabled",
                actor=self._actor,
                actor_role=self._actor_role,
                target=username,
                detail={"user_id": user.id, "reason": reason, "logins_ended": ended},
                address=self._address,
            )
        ]
        released = await release_teller(self._db, SessionStore(self._db), user.id)
        entries += await self._log_release(user, released)
        return Disabled(
            ended,
            [s for s in sessions if s not in released.cancelled],
            released,
            logged=None not in entries,
        )

    async def _log_release(self, user: User, released: Released) -> list[Entry | None]:
        """What a disable gave back, as the entries the same change makes elsewhere; after the
        fact, like the disable."""
        back = {"teller_id": None, "previous": user.id, "reason": TELLER_DISABLED}
        facts: list[tuple[str, str, dict[str, Any]]] = [
            ("session.ended", s, {"reason": TELLER_DISABLED}) for s in released.cancelled
        ]
        facts += [("queue.reassigned", t, back | {"session_id": s}) for t, s in released.requeued]
        facts += [("queue.reassigned", t, back) for t in released.unassigned]
        return [
            await self._audit.append_fact(
                action,
                actor=self._actor,
                actor_role=self._actor_role,
                target=target,
                detail=detail,
                address=self._address,
            )
            for action, target, detail in facts
        ]

    async def enable(self, username: str) -> None:
        """Let the account log in again. Its logins ended by the disable stay ended."""
        async with self._db() as db:
            user = await self._target(db, username)
        if user.active:
            raise ApiError(409, "not_disabled", f"{username!r} is not disabled; nothing to do.")
        await self._log("admin.user_enabled", user, {"disabled_reason": user.disabled_reason})
        async with self._db() as db, db.begin():
            await db.execute(
                update(User)
                .where(User.id == user.id)
                .values(active=True, disabled_at=None, disabled_reason=None)
            )

    async def unlock(self, username: str) -> int:
        """Clear the account's login lock-out: the failed logins counted against it and
        against its browsers. Returns how many failures were cleared."""
        async with self._db() as db:
            user = await self._target(db, username)
            devices = await _devices(db, [user.id])
        await self._log("admin.user_unlocked", user, {})
        return await self._throttle.forget(user.username, devices.get(user.id, []))

    async def reset_password(self, username: str, password: str) -> int:
        """Set a new password and end the account's logins (a password reset is often because
        the old one leaked: whoever used it must be out too). Returns how many logins ended."""
        # Argon2 takes a tenth of a second or more of CPU; the rules are create-user's.
        password_hash = await asyncio.to_thread(hash_password, password)
        async with self._db() as db:
            user = await self._target(db, username)
        await self._log("admin.password_reset", user, {})
        async with self._db() as db, db.begin():
            await db.execute(
                update(User).where(User.id == user.id).values(password_hash=password_hash)
            )
            return await _end_logins(db, user.id)

    async def _log(self, action: str, user: User, detail: dict[str, Any]) -> None:
        await self._audit.append(
            action,
            actor=self._actor,
            actor_role=self._actor_role,
            target=user.username,
            detail={"user_id": user.id} | detail,
            address=self._address,
        )

    async def _target(self, db: DbSession, username: str) -> User:
        user = await db.scalar(select(User).where(User.username == username))
        if user is None:
            raise _unknown(
                f"named {username!r} (names are case-sensitive); "
                "`vteller admin list-users` lists them"
            )
        return self._allowed(user)

    def _allowed(self, user: User) -> User:
        """`user`, if this actor may act on their account; a refusal (403 forbidden, which the
        API audits as access.denied) if not."""
        if self._roles is None:
            return user
        if user.id == self._actor:
            # Never one's own: a supervisor locked out or disabled asks someone else, so that
            # no one can undo what was done to them (or cover their own tracks).
            raise forbidden("manage your own account here; an operator does (`vteller admin`)")
        if user.role not in self._roles:
            raise forbidden(f"manage {user.role} accounts; an operator does (`vteller admin`)")
        return user


def _unknown(which: str) -> ApiError:
    return ApiError(404, "unknown_user", f"There is no staff account {which}.")


async def _devices(db: DbSession, user_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each user's live browsers, by the digests the login throttle counts them under."""
    found: dict[str, list[str]] = {}
    rows = await db.execute(
        select(StaffDevice.user_id, StaffDevice.token_hash).where(
            StaffDevice.user_id.in_(user_ids), StaffDevice.expires_at > utcnow()
        )
    )
    for user_id, token_hash in rows:
        found.setdefault(user_id, []).append(token_hash)
    return found


async def _end_logins(db: DbSession, user_id: str) -> int:
    """Revoke the user's open logins and forget their browsers (whose logins would otherwise
    keep a throttle of their own); returns how many logins were open."""
    now = utcnow()
    ended = await db.execute(
        update(StaffLogin)
        .where(
            StaffLogin.user_id == user_id,
            StaffLogin.revoked_at.is_(None),
            StaffLogin.expires_at > now,
        )
        .values(revoked_at=now)
    )
    await db.execute(delete(StaffDevice).where(StaffDevice.user_id == user_id))
    return int(ended.rowcount)  # type: ignore[attr-defined]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at is not None else "an unknown time"
