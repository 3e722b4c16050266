"""Password hashing, failed-login throttling and bearer-token helpers (server/auth)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import argon2
import pytest
from argon2.profiles import RFC_9106_LOW_MEMORY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.auth import passwords, service
from server.auth.passwords import (
    MIN_PASSWORD_LENGTH,
    WeakPasswordError,
    hash_password,
    verify_password,
)
from server.auth.ratelimit import LoginThrottle, Throttled
from server.auth.service import AuthService
from server.auth.tokens import digest, new_token, same
from server.db.engine import DbSession
from server.db.models import LoginFailure, User
from server.errors import ApiError
from tests.support.database import migrated_database

GOOD = "correct-horse-battery"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SpyHasher:
    """Records which hashes are verified, then verifies with the real hasher."""

    def __init__(self, real: argon2.PasswordHasher) -> None:
        self.real = real
        self.verified: list[str] = []

    def verify(self, password_hash: str, password: str) -> bool:
        self.verified.append(password_hash)
        return self.real.verify(password_hash, password)


# -- passwords -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(GOOD)


def test_hash_is_salted_argon2id_with_rfc_9106_parameters(stored: str) -> None:
    assert stored.startswith("$argon2id$")
    assert GOOD not in stored
    assert argon2.extract_parameters(stored) == RFC_9106_LOW_MEMORY


def test_hashes_of_one_password_differ(stored: str) -> None:
    again = hash_password(GOOD)
    assert again != stored
    assert verify_password(again, GOOD)


def test_verify_accepts_right_and_refuses_wrong_password(stored: str) -> None:
    assert verify_password(stored, GOOD) is True
    assert verify_password(stored, GOOD + "x") is False
    assert verify_password(stored, GOOD.upper()) is False
    assert verify_password(stored, "") is False


def test_verify_refuses_a_corrupt_stored_hash() -> None:
    assert verify_password("not-an-argon2-hash", GOOD) is False
    assert verify_password("", GOOD) is False


@pytest.mark.parametrize("password", ["", "short", "x" * (MIN_PASSWORD_LENGTH - 1)])
def test_weak_password_is_refused(password: str) -> None:
    with pytest.raises(WeakPasswordError, match=str(MIN_PASSWORD_LENGTH)):
        hash_password(password)
    assert issubclass(WeakPasswordError, ValueError)


def test_minimum_length_password_is_accepted() -> None:
    assert MIN_PASSWORD_LENGTH == 12
    password = "x" * MIN_PASSWORD_LENGTH
    assert verify_password(hash_password(password), password)


def test_unknown_user_costs_a_real_verification(
    monkeypatch: pytest.MonkeyPatch, stored: str
) -> None:
    """No stored hash still runs argon2 (against a dummy of the same cost) and returns False."""
    spy = SpyHasher(passwords._HASHER)
    monkeypatch.setattr(passwords, "_HASHER", spy)
    assert verify_password(None, GOOD) is False
    assert spy.verified == [passwords._DUMMY_HASH]
    # The same work as for a real account: identical argon2 parameters.
    dummy = argon2.extract_parameters(passwords._DUMMY_HASH)
    assert dummy == argon2.extract_parameters(stored)


def test_the_dummy_hash_password_does_not_log_anyone_in() -> None:
    assert verify_password(None, "vteller-timing-equaliser") is False


def test_known_user_verifies_against_its_own_hash(
    monkeypatch: pytest.MonkeyPatch, stored: str
) -> None:
    spy = SpyHasher(passwords._HASHER)
    monkeypatch.setattr(passwords, "_HASHER", spy)
    assert verify_password(stored, GOOD) is True
    assert spy.verified == [stored]


# -- login throttle --------------------------------------------------------------------------


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "throttle.db") as factory:
        yield factory


def throttle(
    db: async_sessionmaker[DbSession], clock: FakeClock, per_user: int = 3, per_address: int = 5
) -> LoginThrottle:
    return LoginThrottle(db, per_user, per_address, window_seconds=100, clock=clock)


async def refused(limiter: LoginThrottle, username: str, address: str) -> Throttled:
    with pytest.raises(Throttled) as refusal:
        await limiter.attempt(username, address)
    return refusal.value


async def test_throttle_allows_until_the_per_user_limit(
    database: async_sessionmaker[DbSession],
) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock)
    for attempt in range(3):
        await limiter.attempt("alice", f"10.0.0.{attempt}")
        clock.advance(1)
    # Three failures from three addresses: alice is blocked from anywhere...
    limited = await refused(limiter, "alice", "10.9.9.9")
    assert (limited.status, limited.code, limited.headers) == (
        429,
        "rate_limited",
        {"Retry-After": "98"},
    )
    assert "98 seconds" in limited.message
    await refused(limiter, "ALICE", "10.9.9.9")  # any case
    # ...while other users on those addresses are not.
    await limiter.attempt("bob", "10.0.0.0")


async def test_throttle_per_address(database: async_sessionmaker[DbSession]) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock, per_user=3, per_address=5)
    for n in range(5):
        await limiter.attempt(f"user{n}", "192.0.2.7")
    assert (await refused(limiter, "someone-new", "192.0.2.7")).headers["Retry-After"] == "101"
    await limiter.attempt("someone-new", "192.0.2.8")
    # One failure each: no user is blocked on its own account.
    await limiter.attempt("user0", "198.51.100.1")


async def test_an_ipv6_client_is_counted_by_its_64(
    database: async_sessionmaker[DbSession],
) -> None:
    # A /64 is one client's (often the least it is given): its addresses share one count.
    limiter = throttle(database, FakeClock(), per_user=10, per_address=2)
    await limiter.attempt("user0", "2001:db8:1:2::1")
    await limiter.attempt("user1", "2001:db8:1:2:ffff:ffff:ffff:ffff")
    await refused(limiter, "user2", "2001:db8:1:2::abcd")
    await limiter.attempt("user2", "2001:db8:1:3::1")  # the next /64 is someone else
    # An IPv4 client seen through an IPv6 socket is its IPv4 address.
    await limiter.attempt("user3", "::ffff:192.0.2.1")
    await limiter.attempt("user4", "192.0.2.1")
    await refused(limiter, "user5", "192.0.2.1")


async def test_throttle_window_slides_with_the_clock(
    database: async_sessionmaker[DbSession],
) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock)
    for _ in range(3):
        await limiter.attempt("alice", "10.0.0.1")
        clock.advance(10)
    # Failures at t=0, 10, 20 (relative); now t=30: the oldest expires at t=100.
    assert (await refused(limiter, "alice", "10.0.0.1")).headers["Retry-After"] == "71"
    clock.advance(69.5)
    assert (await refused(limiter, "alice", "10.0.0.1")).headers["Retry-After"] == "1"
    clock.advance(0.5)  # exactly the window: the first failure no longer counts
    await limiter.attempt("alice", "10.0.0.1")
    # Three failures inside the window again (t=10, 20, 100): blocked until t=10 expires.
    assert (await refused(limiter, "alice", "10.0.0.1")).headers["Retry-After"] == "11"
    clock.advance(100)
    await limiter.attempt("alice", "10.0.0.1")


async def test_success_resets_the_user_and_takes_back_its_own_attempt(
    database: async_sessionmaker[DbSession],
) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock, per_user=3, per_address=4)
    for _ in range(2):
        await limiter.attempt("alice", "10.0.0.1")
    await limiter.succeeded(await limiter.attempt("Alice", "10.0.0.1"))
    # The user counter starts again: two more failures do not reach three.
    for _ in range(2):
        await limiter.attempt("alice", "10.0.0.1")
    # The address keeps the four failures (not the success): its limit.
    await refused(limiter, "bob", "10.0.0.1")
    await limiter.attempt("alice", "10.0.0.2")


async def test_a_known_device_is_counted_apart_from_its_user_and_address(
    database: async_sessionmaker[DbSession],
) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock, per_user=3, per_address=2)
    for n in range(3):
        await limiter.attempt("alice", f"203.0.113.{n}")
    await refused(limiter, "alice", "10.0.0.1")  # anyone else is blocked...
    # ...but not alice's own browser, and its success leaves the others' lock standing.
    await limiter.succeeded(await limiter.attempt("alice", "10.0.0.1", device="d1"))
    await refused(limiter, "alice", "10.0.0.2")
    # Its failures do not count against the address either; its own limit is the user's.
    for _ in range(3):
        await limiter.attempt("alice", "203.0.113.0", device="d1")
    with pytest.raises(Throttled):
        await limiter.attempt("alice", "10.0.0.1", device="d1")
    await limiter.attempt("bob", "203.0.113.0")  # the address's 2nd failure, not its 5th
    await limiter.attempt("alice", "10.0.0.1", device="d2")


async def test_retry_after_is_the_longest_of_both_limits(
    database: async_sessionmaker[DbSession],
) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock, per_user=2, per_address=2)
    await limiter.attempt("alice", "10.0.0.1")  # t=0
    clock.advance(30)
    await limiter.attempt("bob", "10.0.0.1")  # t=30: address full, oldest expires at t=100
    await limiter.attempt("alice", "10.0.0.2")  # t=30: alice full, oldest expires at t=100
    clock.advance(20)
    await limiter.attempt("bob", "10.0.0.3")  # t=50: bob full, oldest expires at t=130
    assert (await refused(limiter, "alice", "10.0.0.1")).headers["Retry-After"] == "51"
    assert (await refused(limiter, "bob", "10.0.0.1")).headers["Retry-After"] == "81"


async def test_every_worker_sees_the_same_failures(
    database: async_sessionmaker[DbSession],
) -> None:
    # Two workers (two throttles on one database): failures on either count against both, so
    # N workers do not allow N times the attempts, and neither does a restarted worker.
    clock = FakeClock()
    first, second = throttle(database, clock), throttle(database, clock)
    await first.attempt("alice", "10.0.0.1")
    await second.attempt("alice", "10.0.0.2")
    attempt = await first.attempt("alice", "10.0.0.3")
    await refused(second, "alice", "10.0.0.4")
    await refused(throttle(database, clock), "alice", "10.0.0.4")
    await first.succeeded(attempt)
    await second.attempt("alice", "10.0.0.4")


async def test_concurrent_guesses_get_no_more_checks_than_the_limit(
    database: async_sessionmaker[DbSession], stored: str
) -> None:
    """A burst of guesses at once: each is counted before its password is checked, so all but
    the limit are refused unchecked (on SQLite every session is a connection of its own)."""
    async with database() as db, db.begin():
        db.add(
            User(id="u2", username="alice", display_name="A", role="teller", password_hash=stored)
        )
    checked: list[str] = []

    def verify(password_hash: str | None, password: str) -> bool:
        checked.append(password)
        return verify_password(password_hash, password)

    auth = AuthService(database, throttle(database, FakeClock(), per_user=5, per_address=20), 1)

    async def guess(n: int) -> str:
        try:
            await auth.login("alice", f"guess-{n}", "10.0.0.1")
        except ApiError as error:
            return error.code
        return "logged_in"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "verify_password", verify)
        codes = await asyncio.gather(*(guess(n) for n in range(30)))
    assert sorted(Counter(codes).items()) == [("invalid_credentials", 5), ("rate_limited", 25)]
    assert len(checked) == 5
    # Nor does the right password get past it now.
    with pytest.raises(Throttled):
        await auth.login("alice", GOOD, "10.0.0.2")


async def test_a_refusal_is_reported_once_per_key_and_window(
    database: async_sessionmaker[DbSession],
) -> None:
    """What the audit log records of a throttled guesser: the first refusal of each user or
    address that is over its limit, then nothing until the window has passed."""
    clock = FakeClock()
    first, second = (
        throttle(database, clock, per_user=2, per_address=3),
        throttle(database, clock, per_user=2, per_address=3),
    )
    for _ in range(2):
        await first.attempt("alice", "10.0.0.1")
    assert (await refused(first, "alice", "10.0.0.1")).first_in_window
    # Not again for alice, from any address, in any worker.
    assert not (await refused(second, "alice", "10.0.0.1")).first_in_window
    assert not (await refused(first, "ALICE", "10.0.0.2")).first_in_window
    # Another user (over the address's limit of 3 now) is refused because of the address: new.
    await first.attempt("bob", "10.0.0.1")
    assert (await refused(second, "carol", "10.0.0.1")).first_in_window
    assert not (await refused(first, "dave", "10.0.0.1")).first_in_window
    clock.advance(60)
    assert not (await refused(first, "alice", "10.0.0.3")).first_in_window
    # A window later her failures, and the report, have expired: over the limit again, the
    # first refusal is reported again.
    clock.advance(40)
    for _ in range(2):
        await first.attempt("alice", "10.0.0.4")
    assert (await refused(first, "alice", "10.0.0.4")).first_in_window
    assert not (await refused(second, "alice", "10.0.0.4")).first_in_window


async def test_expired_failures_are_forgotten(database: async_sessionmaker[DbSession]) -> None:
    clock = FakeClock()
    limiter = throttle(database, clock, per_address=3)
    for n in range(3):
        await limiter.attempt(f"user{n}", "10.0.0.1")
    await refused(limiter, "user3", "10.0.0.1")  # and its report
    clock.advance(100)
    await limiter.attempt("alice", "10.0.0.2")
    async with database() as db:
        keys = set(await db.scalars(select(LoginFailure.key)))
    assert keys == {"alice", "10.0.0.2"}


async def test_throttle_uses_the_wall_clock_by_default(
    database: async_sessionmaker[DbSession],
) -> None:
    # Unix time, not a monotonic clock: workers on other machines compare the same timestamps.
    limiter = LoginThrottle(database, 1, 1, window_seconds=60)
    await limiter.attempt("alice", "10.0.0.1")
    async with database() as db:
        at = await db.scalar(select(LoginFailure.failed_at).limit(1))
    assert at is not None and abs(at - time.time()) < 5
    wait = int((await refused(limiter, "alice", "10.0.0.1")).headers["Retry-After"])
    assert 55 < wait <= 61


# -- tokens ----------------------------------------------------------------------------------


def test_digest_is_sha256_hex_of_utf8() -> None:
    assert digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest("令牌") == hashlib.sha256("令牌".encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest(new_token()))
    assert digest("a") != digest("b")


def test_new_tokens_are_long_random_and_url_safe() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token)  # 32 random bytes


def test_same_compares_exactly() -> None:
    token = new_token()
    assert same(token, token)
    assert same("令牌", "令牌")
    assert not same(token, token[:-1])
    assert not same(token, token + "x")
    assert not same(token, token.upper() if token != token.upper() else token.lower())
    assert not same("", token)


def test_tokens_from_undecodable_headers_are_just_wrong() -> None:
    # aiohttp hands header bytes that are not UTF-8 over as lone surrogates.
    sent = b"\xff\xfe".decode("utf-8", "surrogateescape")
    token = new_token()
    assert not same(sent, token) and not same(token, sent)
    assert same(sent, sent)
    assert re.fullmatch(r"[0-9a-f]{64}", digest(sent)) and digest(sent) != digest(token)
    assert digest("\ud800") != digest(sent)


# -- customer credentials --------------------------------------------------------------------


async def test_a_customer_credential_ends_a_day_after_redemption_or_with_the_call(
    database: async_sessionmaker[DbSession],
) -> None:
    from datetime import timedelta

    from server.db.models import CallSession, Participant, utcnow

    async with database() as db, db.begin():
        db.add(
            User(
                id="u-cred",
                username="cred-teller",
                role="teller",
                display_name="T",
                password_hash="x",
            )
        )
        for sid in ("s-fresh", "s-old", "s-ended"):
            db.add(CallSession(id=sid, business="general", teller_id="u-cred", state="active"))
        db.add_all(
            Participant(
                id=f"p-{sid}",
                session_id=f"s-{sid}",
                role="customer",
                display_name="客户",
                credential_hash=digest(f"token-{sid}"),
                csrf_token="csrf",
                created_at=utcnow() - age,
            )
            for sid, age in (
                ("fresh", timedelta(hours=23)),
                ("old", timedelta(hours=25)),
                ("ended", timedelta(minutes=5)),
            )
        )
    async with database() as db, db.begin():
        ended = await db.get(CallSession, "s-ended")
        assert ended is not None
        ended.state = "ended"
    auth = AuthService(
        database, LoginThrottle(database, 5, 20, window_seconds=900), session_hours=8
    )
    fresh = await auth.customer_principal("token-fresh")
    assert fresh is not None and fresh.participant_id == "p-fresh"
    assert await auth.customer_principal("token-old") is None
    assert await auth.customer_principal("token-ended") is None
    assert await auth.customer_principal("token-unknown") is None
