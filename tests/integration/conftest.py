"""Fixtures for the integration tests."""

from __future__ import annotations

import argon2
import pytest

from server.auth import passwords

# Modules whose tests run twice, on SQLite and on a PostgreSQL database of their own (those that
# use the `server` fixture): the behaviour that rests on the database, i.e. single-use and
# compare-and-set claims, uniqueness, ordering and paging, search, time windows, and the text
# each database refuses, and the capacity a placement checks.
BOTH_DATABASES = frozenset(
    {
        "test_http_api",
        "test_queue",
        "test_transactions",
        "test_roles",
        "test_auditor_portal",
        "test_audit_log",
        "test_audit_refusals",
        "test_bad_input",
        "test_worker_capacity",
        "test_account_admin",
        "test_staff_accounts",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in BOTH_DATABASES and "database" in metafunc.fixturenames:
        metafunc.parametrize("database", ["sqlite", "postgresql"])


@pytest.fixture
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its production cost takes ~0.5 s per hash or login on a busy 2-core box. The
    hashing itself is covered by tests/unit/test_auth.py; tests that create many accounts or log
    in many times run it at the minimum cost instead."""
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(passwords, "_HASHER", cheap)
    monkeypatch.setattr(passwords, "_DUMMY_HASH", cheap.hash("vteller-timing-equaliser"))
