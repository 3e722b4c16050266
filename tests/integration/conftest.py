"""Fixtures for the integration tests."""

from __future__ import annotations

import argon2
import pytest

from server.auth import passwords


@pytest.fixture
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its production cost takes ~0.5 s per hash or login on a busy 2-core box. The
    hashing itself is covered by tests/unit/test_auth.py; tests that create many accounts or log
    in many times run it at the minimum cost instead."""
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(passwords, "_HASHER", cheap)
    monkeypatch.setattr(passwords, "_DUMMY_HASH", cheap.hash("vteller-timing-equaliser"))
