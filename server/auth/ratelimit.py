"""Sliding-window rate limits: failed logins per user and address, public endpoints per address."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import structlog
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession, exclusive
from server.db.models import LoginFailure
from server.errors import ApiError

log = structlog.get_logger(__name__)

# Addresses (or /64s) a `SlidingWindow` tracks at most: bounds a worker's memory when requests
# come from ever new addresses. Far more than one worker's customers in a window.
MAX_KEYS = 10_000
# LoginFailure kinds: a failure counted against a user, an address or a known device (the
# digest of its token), and the note that a refusal of one of those keys was reported (key
# "user:alice", "address:192.0.2.7").
_USER, _ADDRESS, _DEVICE, _REPORTED = "user", "address", "device", "refused"


def address_key(address: str) -> str:
    """What per-address limits count a client as.

    An IPv6 client is given a whole /64 (often more), so each of its addresses would have a limit
    of its own: it is counted by its /64. An IPv4-mapped address is the IPv4 address it maps.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown": the limit still holds for everything counted so
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class SlidingWindow:
    """At most `limit` hits per key within the last `window_seconds`, for at most `max_keys` keys.

    Kept in the worker's memory: with several workers each enforces its own window, which bounds
    abuse of public endpoints per worker. Logins, where the limit is a security control, use the
    shared `LoginThrottle`.

    A key is forgotten once its last hit has expired, whether or not it comes back, so the table
    holds one window's keys. With `max_keys` of them, a new key is refused until the oldest
    expires: a flood from that many addresses must neither grow the table further nor get
    through uncounted.
    """

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        # In the order of each key's last hit: the expired keys are always the first ones, so
        # forgetting them costs each hit O(1) on average, however many keys there are.
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._full = False

    def retry_after(self, key: str) -> float:
        """Seconds until another hit is allowed; 0 when it is allowed now."""
        now = self._clock()
        self._forget_expired(now)
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) < self._max_keys:
                return 0.0
            if not self._full:  # once per episode: a flood of addresses must not flood the log
                log.warning("rate_limit_table_full", keys=len(self._hits), window=self._window)
                self._full = True
            oldest = next(iter(self._hits.values()))
            return oldest[-1] + self._window - now
        while hits[0] + self._window <= now:
            hits.popleft()
        if len(hits) >= self._limit:
            return hits[0] + self._window - now
        return 0.0

    def hit(self, key: str) -> None:
        """Count a hit that `retry_after` allowed."""
        self._hits.setdefault(key, deque()).append(self._clock())
        self._hits.move_to_end(key)

    def _forget_expired(self, now: float) -> None:
        while self._hits:
            key, hits = next(iter(self._hits.items()))
            if hits[-1] + self._window > now:
                break
            del self._hits[key]
        self._full = self._full and len(self._hits) >= self._max_keys


class Throttled(ApiError):
    """A login refused by the throttle, before its password was checked."""

    def __init__(self, wait: float, *, first_in_window: bool) -> None:
        seconds = int(wait) + 1
        super().__init__(
            429,
            "rate_limited",
            f"Too many failed logins. Try again in {seconds} seconds.",
            headers={"Retry-After": str(seconds)},
        )
        # The first refusal of its user or address since it reached its limit (once per window
        # and key, across workers): what the audit log records of a throttled guesser.
        self.first_in_window = first_in_window


@dataclass(frozen=True)
class Attempt:
    """A login the throttle let through, already counted as failed (`LoginThrottle.succeeded`
    takes it back)."""

    reset: tuple[str, str]  # the (kind, key) whose count starts again if it succeeds
    failures: tuple[int, ...]  # its LoginFailure rows


@dataclass(frozen=True)
class _Refusal:
    wait: float
    unreported: list[str]  # the limited keys no refusal was reported for in this window


class LoginThrottle:
    """Failed staff logins per user and per address within a sliding window.

    Unlike `SlidingWindow`, kept in the database: every worker (on every machine) and a restarted
    worker see the same failures, so the limits hold for the whole service, not per process.

    An attempt is counted as failed before its password is checked, under a lock that every
    worker's attempts on the same user or address take: concurrent guesses each see the ones
    before them, so no more than the limit are ever checked. A login that succeeds takes its
    count back.

    An attempt from a browser the user has logged in with before (`device`) is counted against
    that device alone, with the per-user limit, and not against the user or the address:
    anyone can send a user's name with wrong passwords, which blocks the user's other attempts,
    but never the user's own browser (OWASP's "device cookies"). Devices are only ever handed
    out by a successful login.
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
        self._limits = {_USER: max_per_user, _ADDRESS: max_per_address, _DEVICE: max_per_user}
        self._window = window_seconds
        self._clock = clock

    async def attempt(self, username: str, address: str, device: str | None = None) -> Attempt:
        """Count a login attempt as failed, or raise `Throttled` if that is over a limit.

        `device`: the digest of a device token already found to be this user's.
        """
        keys = (
            {_DEVICE: device}
            if device is not None
            else {_USER: username.lower(), _ADDRESS: address_key(address)}
        )
        # Most refusals are decided here, without the lock: a flood of refused guesses must not
        # queue the service's other writes (SQLite has one writer) behind it.
        async with self._db() as db:
            refusal = await self._refusal(db, keys, self._clock())
        if refusal is not None and not refusal.unreported:
            raise Throttled(refusal.wait, first_in_window=False)
        async with self._db() as db, db.begin():
            await _lock(db, keys.items())
            now = self._clock()
            # Failures are rare: forgetting expired ones here keeps the table to one window.
            # SKIP LOCKED: attempts on other keys purge at the same time without waiting for
            # (or deadlocking with) each other.
            expired = select(LoginFailure.id).where(LoginFailure.failed_at <= now - self._window)
            await db.execute(
                delete(LoginFailure).where(
                    LoginFailure.id.in_(expired.with_for_update(skip_locked=True))
                )
            )
            refusal = await self._refusal(db, keys, now)
            if refusal is None:
                counted = [
                    LoginFailure(kind=kind, key=key, failed_at=now) for kind, key in keys.items()
                ]
                db.add_all(counted)
                await db.flush()
            else:
                db.add_all(
                    LoginFailure(kind=_REPORTED, key=key, failed_at=now)
                    for key in refusal.unreported
                )
        if refusal is not None:
            raise Throttled(refusal.wait, first_in_window=bool(refusal.unreported))
        kind = _DEVICE if device is not None else _USER
        return Attempt((kind, keys[kind]), tuple(row.id for row in counted))

    async def succeeded(self, attempt: Attempt) -> None:
        """The user's (or the device's) count starts again; the address's loses only this
        attempt (other users may have failed there)."""
        async with self._db() as db, db.begin():
            await db.execute(
                delete(LoginFailure).where(
                    or_(
                        LoginFailure.id.in_(attempt.failures),
                        and_(
                            LoginFailure.kind == attempt.reset[0],
                            LoginFailure.key == attempt.reset[1],
                        ),
                    )
                )
            )

    async def lockout(self, username: str, devices: Collection[str]) -> float:
        """Seconds until the account `username`, or the slowest of its `devices` (digests of
        their tokens), may try again; 0 when none of them is locked out."""
        keys = [(_USER, username.lower()), *((_DEVICE, device) for device in devices)]
        now = self._clock()
        async with self._db() as db:
            return max([await self._wait(db, kind, key, now) for kind, key in keys])

    async def forget(self, username: str, devices: Collection[str]) -> int:
        """An operator's unlock: the failures counted against the account `username` and its
        `devices` are cleared, and so are the notes that their refusals were reported (a new
        lock-out is logged again). The addresses' counts stay: everyone behind an address
        shares them. Returns how many failures were cleared."""
        keys = [(_USER, username.lower()), *((_DEVICE, device) for device in devices)]
        async with self._db() as db, db.begin():
            await _lock(db, keys)
            cleared = await db.execute(
                delete(LoginFailure).where(
                    or_(*(and_(LoginFailure.kind == k, LoginFailure.key == v) for k, v in keys))
                )
            )
            await db.execute(
                delete(LoginFailure).where(
                    LoginFailure.kind == _REPORTED,
                    LoginFailure.key.in_([f"{k}:{v}" for k, v in keys]),
                )
            )
        return int(cleared.rowcount)  # type: ignore[attr-defined]

    async def _refusal(self, db: DbSession, keys: Mapping[str, str], now: float) -> _Refusal | None:
        waits = {kind: await self._wait(db, kind, key, now) for kind, key in keys.items()}
        limited = [f"{kind}:{keys[kind]}" for kind, wait in waits.items() if wait > 0]
        if not limited:
            return None
        reported = set(
            await db.scalars(
                select(LoginFailure.key).where(
                    LoginFailure.kind == _REPORTED,
                    LoginFailure.key.in_(limited),
                    LoginFailure.failed_at > now - self._window,
                )
            )
        )
        return _Refusal(max(waits.values()), [key for key in limited if key not in reported])

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


async def _lock(db: DbSession, keys: Iterable[tuple[str, str]]) -> None:
    """Hold off every other worker's attempts on these keys until this transaction ends."""
    await exclusive(db, *(f"vteller/login-throttle/{kind}/{key}" for kind, key in keys))
