"""Sliding-window rate limits: failed logins per user and address, public endpoints per address."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession
from server.db.models import LoginFailure


class SlidingWindow:
    """At most `limit` hits per key within the last `window_seconds`.

    Kept in the worker's memory: with several workers each enforces its own window, which bounds
    abuse of public endpoints per worker. Logins, where the limit is a security control, use the
    shared `LoginThrottle`.
    """

    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until another hit is allowed; 0 when it is allowed now."""
        now = self._clock()
        hits = self._prune(key, now)
        if len(hits) >= self._limit:
            return hits[0] + self._window - now
        return 0.0

    def hit(self, key: str) -> None:
        self._hits.setdefault(key, deque()).append(self._clock())

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)

    def _prune(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] + self._window <= now:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits


class LoginThrottle:
    """Failed staff logins per user and per address within a sliding window.

    Unlike `SlidingWindow`, kept in the database: every worker (on every machine) and a restarted
    worker see the same failures, so the limits hold for the whole service, not per process.
    """

    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        max_per_user: int,
        max_per_address: int,
        window_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._limits = {"user": max_per_user, "address": max_per_address}
        self._window = window_seconds
        self._clock = clock

    async def retry_after(self, username: str, address: str) -> float:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        now = self._clock()
        async with self._db() as db:
            waits = [
                await self._wait(db, kind, key, now)
                for kind, key in (("user", username.lower()), ("address", address))
            ]
        return max(waits)

    async def failed(self, username: str, address: str) -> None:
        now = self._clock()
        async with self._db() as db, db.begin():
            # Failures are rare: forgetting expired ones here keeps the table to one window.
            await db.execute(
                delete(LoginFailure).where(LoginFailure.failed_at <= now - self._window)
            )
            db.add(LoginFailure(kind="user", key=username.lower(), failed_at=now))
            db.add(LoginFailure(kind="address", key=address, failed_at=now))

    async def succeeded(self, username: str) -> None:
        """The user's count starts again; its address's does not (other users failed there)."""
        async with self._db() as db, db.begin():
            await db.execute(
                delete(LoginFailure).where(
                    LoginFailure.kind == "user", LoginFailure.key == username.lower()
                )
            )

    async def _wait(self, db: DbSession, kind: str, key: str, now: float) -> float:
        # The limit-th newest failure inside the window: once it expires, fewer than `limit`
        # remain and one more attempt is allowed.
        limit = self._limits[kind]
        at = await db.scalar(
            select(LoginFailure.failed_at)
            .where(
                LoginFailure.kind == kind,
                LoginFailure.key == key,
                LoginFailure.failed_at > now - self._window,
            )
            .order_by(LoginFailure.failed_at.desc())
            .offset(limit - 1)
            .limit(1)
        )
        return 0.0 if at is None else at + self._window - now
