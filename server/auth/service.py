"""Staff logins and the resolution of cookies to principals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.auth.passwords import hash_password, verify_password
from server.auth.principal import STAFF_ROLES, Principal, Role
from server.auth.ratelimit import LoginThrottle
from server.auth.tokens import digest, new_token
from server.db.engine import DbSession
from server.db.models import (
    CallSession,
    Participant,
    StaffDevice,
    StaffLogin,
    User,
    new_id,
    utcnow,
)
from server.errors import ApiError

STAFF_COOKIE = "vteller_staff"
CUSTOMER_COOKIE = "vteller_customer"
# A customer's credential also ends a day after the link was redeemed, whatever the session's
# state: a call nobody ended must not leave it able to sign what a teller creates days later.
CUSTOMER_CREDENTIAL_LIFETIME = timedelta(hours=24)
# The browser a staff member logged in with: its attempts are throttled apart from everyone
# else's on the account (LoginThrottle). Sent to the login only.
DEVICE_COOKIE = "vteller_device"
DEVICE_COOKIE_PATH = "/api/v1/auth/login"
# Long enough to span holidays; a device unused that long is throttled as any other browser.
DEVICE_LIFETIME = timedelta(days=90)


@dataclass(frozen=True)
class Login:
    user: User
    token: str  # the staff cookie
    csrf: str
    device: str | None  # a new device cookie; None when the login came from a known device


class AuthService:
    def __init__(
        self, db: async_sessionmaker[DbSession], throttle: LoginThrottle, session_hours: float
    ) -> None:
        self._db = db
        self._throttle = throttle
        self._session_lifetime = timedelta(hours=session_hours)

    async def new_user(self, username: str, password: str, display_name: str, role: Role) -> User:
        """The account `add_user` would store, checked and its password hashed, not yet stored.

        Split from `add_user` so the creation is logged in between: an account stored before
        its entry would be usable, and its name taken, if the log then refused the entry.
        """
        if role not in STAFF_ROLES:
            raise ApiError(400, "invalid_role", "Customers have no accounts; they join by link.")
        # Argon2 takes a tenth of a second or more of CPU: never on the event loop, where it
        # would freeze every call of this worker.
        password_hash = await asyncio.to_thread(hash_password, password)
        async with self._db() as db:
            await _refuse_taken(db, username)
        return User(
            id=new_id("u"),
            username=username,
            display_name=display_name or username,
            role=role.value,
            password_hash=password_hash,
        )

    async def add_user(self, user: User) -> User:
        async with self._db() as db, db.begin():
            await _refuse_taken(db, user.username)  # by another admin since `new_user`
            db.add(user)
        return user

    async def login(
        self, username: str, password: str, address: str, device: str | None = None
    ) -> Login:
        """`device`: the device cookie the browser sent, if any.

        Over a limit, raises `Throttled` without looking at the password.
        """
        known = await self._known_device(username, device) if device else None
        # Counted as failed from here until it succeeds: a guess that fails in any way (also
        # by an error, or the worker stopping) stays counted.
        attempt = await self._throttle.attempt(username, address, known)
        async with self._db() as db:
            user = await db.scalar(select(User).where(User.username == username))
        ok = await asyncio.to_thread(
            verify_password, user.password_hash if user else None, password
        )
        if user is None or not ok:
            raise ApiError(401, "invalid_credentials", "Wrong username or password.")
        if not user.active:
            # Said only to someone who knows the password: a leaver, or a colleague whose
            # account was disabled by mistake, learns whom to ask; a guesser learns nothing.
            raise ApiError(
                403,
                "account_disabled",
                "This account has been disabled. If you should still have access, ask your "
                "administrator to enable it.",
            )
        await self._throttle.succeeded(attempt)
        token, csrf = new_token(), new_token()
        new_device = None if known else new_token()
        async with self._db() as db, db.begin():
            db.add(
                StaffLogin(
                    token_hash=digest(token),
                    user_id=user.id,
                    csrf_token=csrf,
                    expires_at=utcnow() + self._session_lifetime,
                )
            )
            if new_device is not None:
                # Each new browser adds one: the user's expired ones go at the same time.
                await db.execute(
                    delete(StaffDevice).where(
                        StaffDevice.user_id == user.id, StaffDevice.expires_at <= utcnow()
                    )
                )
                db.add(
                    StaffDevice(
                        token_hash=digest(new_device),
                        user_id=user.id,
                        expires_at=utcnow() + DEVICE_LIFETIME,
                    )
                )
        return Login(user, token, csrf, new_device)

    async def _known_device(self, username: str, device: str) -> str | None:
        """The digest of `device` if it is a live device of the user `username`, else None (a
        device of another user, e.g. a colleague's on a shared computer, counts as unknown)."""
        hashed = digest(device)
        async with self._db() as db:
            found = await db.scalar(
                select(StaffDevice.token_hash)
                .join(User, User.id == StaffDevice.user_id)
                .where(
                    StaffDevice.token_hash == hashed,
                    StaffDevice.expires_at > utcnow(),
                    User.username == username,
                )
            )
        return found

    async def logout(self, token: str) -> None:
        async with self._db() as db, db.begin():
            login = await db.scalar(
                select(StaffLogin).where(StaffLogin.token_hash == digest(token))
            )
            if login is not None and login.revoked_at is None:
                login.revoked_at = utcnow()

    async def staff_principal(self, token: str, *, expired_ok: bool = False) -> Principal | None:
        """The staff member a login token proves; `expired_ok` for a connection admitted before
        the login expired (a call is not cut at the hour), never for a logout or a disabled
        account."""
        async with self._db() as db:
            login = await db.scalar(
                select(StaffLogin).where(StaffLogin.token_hash == digest(token))
            )
        if login is None or login.revoked_at is not None:
            return None
        if login.expires_at <= utcnow() and not expired_ok:
            return None
        user = login.user
        if not user.active:
            return None
        return Principal(
            role=Role(user.role),
            display_name=user.display_name,
            csrf_token=login.csrf_token,
            user_id=user.id,
            username=user.username,
        )

    async def customer_principal(self, token: str) -> Principal | None:
        # A customer's credential is good for one call only: once the session ends (or the
        # credential's lifetime) it proves nothing, so nothing can be signed or seen on the
        # customer's behalf after the call.
        async with self._db() as db:
            participant = await db.scalar(
                select(Participant)
                .join(CallSession, CallSession.id == Participant.session_id)
                .where(
                    Participant.credential_hash == digest(token),
                    CallSession.state != "ended",
                    Participant.created_at > utcnow() - CUSTOMER_CREDENTIAL_LIFETIME,
                )
            )
        if participant is None or participant.csrf_token is None:
            return None
        return Principal(
            role=Role.CUSTOMER,
            display_name=participant.display_name,
            csrf_token=participant.csrf_token,
            participant_id=participant.id,
            session_id=participant.session_id,
        )


async def _refuse_taken(db: DbSession, username: str) -> None:
    if await db.scalar(select(User.id).where(User.username == username)) is not None:
        raise ApiError(409, "user_exists", f"A user named {username!r} already exists.")
