"""Identity records at rest, challenge choice, and the identity moment surviving a crash."""

from __future__ import annotations

import itertools
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import update

from recorder.journal import Journal
from recorder.seal.keyring import KeyUnwrapError
from server.db.models import CallSession, IdentityCheck
from server.identity.liveness import Challenge
from server.identity.records import Evidence, IdentityRecords
from server.identity.verification import choose_challenges
from tests.support.database import TELLER_ID, migrated_database


@pytest.fixture
async def records(tmp_path: Path) -> AsyncIterator[IdentityRecords]:
    async with migrated_database(tmp_path / "db.sqlite") as db:
        async with db() as session, session.begin():
            session.add(CallSession(id="s1", business="wealth", teller_id=TELLER_ID))
            session.add(CallSession(id="s2", business="wealth", teller_id=TELLER_ID))
        yield IdentityRecords(db, tmp_path / "keys" / "identity-keyring.json")


async def test_sensitive_detail_is_encrypted_and_opens_with_the_key(
    records: IdentityRecords, tmp_path: Path
) -> None:
    jpeg = b"\xff\xd8 evidence bytes \xff\xd9"
    row = await records.add(
        "s1",
        "p1",
        "card_front",
        "pass",
        "passed",
        {"fields": {"name": "欧阳明远", "id_number": "440305199911050573"}},
        [Evidence("card_front.jpg", jpeg)],
    )
    assert "欧阳明远".encode() not in row.sealed and b"440305199911050573" not in row.sealed
    assert jpeg not in row.sealed
    assert row.evidence_sha256 == [Evidence("card_front.jpg", jpeg).sha256]
    keyring = tmp_path / "keys" / "identity-keyring.json"
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    opened = await records.open(row.id)
    assert opened.detail["fields"]["id_number"] == "440305199911050573"
    assert opened.evidence == {"card_front.jpg": jpeg}
    assert await records.attempts("s1", "card_front") == 1
    assert await records.attempts("s1", "face") == 0


async def test_a_sealed_blob_moved_to_another_row_does_not_open(records: IdentityRecords) -> None:
    a = await records.add("s1", None, "face", "pass", "match", {"score": 0.8}, [])
    b = await records.add("s2", None, "face", "fail", "no_match", {"score": 0.1}, [])
    # An insider swaps a failed attempt's content for a passed one's: the AEAD binds each blob
    # to its row (record id and session id), so this is detected, not believed.
    async with records._db() as db, db.begin():
        await db.execute(
            update(IdentityCheck)
            .where(IdentityCheck.id == b.id)
            .values(sealed=a.sealed, wrapped_key=a.wrapped_key, key_id=a.key_id)
        )
    with pytest.raises((InvalidTag, KeyUnwrapError)):
        await records.open(b.id)
    assert (await records.open(a.id)).detail == {"score": 0.8}


def test_challenges_are_random_in_range_and_not_only_alternating() -> None:
    pool = {Challenge.TURN_LEFT, Challenge.TURN_RIGHT}
    seen: set[tuple[Challenge, ...]] = set()
    for _ in range(400):
        chosen = choose_challenges(pool, (2, 3))
        assert 2 <= len(chosen) <= 3
        assert len(set(chosen)) == 2  # both movements, never one throughout
        seen.add(tuple(chosen))
    # Every mixed sequence of 2 or 3 occurs (2 + 6), repeats included: a video that alternates
    # cannot count on the order.
    assert len(seen) == 8
    assert any(a == b for chosen in seen for a, b in itertools.pairwise(chosen))
    assert choose_challenges({Challenge.TURN_LEFT}, (2, 2)) == [Challenge.TURN_LEFT] * 2
    with pytest.raises(ValueError, match="no liveness challenge"):
        choose_challenges(set(), (2, 3))


def test_the_identity_moment_is_journaled_for_recovery(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "a1", {"archive_id": "a1"})
    journal.append("identity", {"identity": {"decision": "fail", "method": "automatic"}})
    journal.append("identity", {"identity": {"decision": "pass", "method": "manual"}})
    assert journal.read().identity == {"decision": "pass", "method": "manual"}
