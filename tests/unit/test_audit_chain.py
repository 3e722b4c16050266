"""The audit log format: the test vector, recomputed from the spec, and every kind of break."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorder.seal.canonical import CanonicalJsonError
from recorder.seal.signing import public_key_id
from server.audit.actions import ACTIONS
from server.audit.chain import (
    GENESIS_HASH,
    ChainWalker,
    Checkpoint,
    CheckpointFields,
    Entry,
    EntryFields,
    Verifier,
    format_time,
    verify_entries,
)
from server.audit.log import _check_detail
from tests.support.audit import documented_audit_check
from tests.vectors.generate_audit_v1 import OUT_FILE, build, render


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OUT_FILE.read_text("utf-8"))
    return loaded


def spec_canonical(document: dict[str, Any]) -> bytes:
    # For the vector's values (ASCII member names, no floats) JCS is exactly this.
    return json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def test_generator_is_deterministic() -> None:
    assert render() == OUT_FILE.read_text("utf-8")


def test_vector_hashes_recomputed_from_the_spec(vector: dict[str, Any]) -> None:
    previous = vector["genesis_prev_hash"]
    assert previous == "0" * 64
    for number, entry in enumerate(vector["entries"], start=1):
        document = {k: v for k, v in entry.items() if k not in ("entry_hash", "canonical")}
        assert document["seq"] == number
        assert document["prev_hash"] == previous
        assert set(document) == {
            "format", "seq", "at", "actor", "actor_role", "action", "target", "detail",
            "address", "prev_hash",
        }  # fmt: skip
        assert spec_canonical(document) == entry["canonical"].encode()
        assert hashlib.sha256(entry["canonical"].encode()).hexdigest() == entry["entry_hash"]
        assert document["action"] in ACTIONS
        previous = entry["entry_hash"]


def test_vector_checkpoint_signature(vector: dict[str, Any]) -> None:
    checkpoint = vector["checkpoint"]
    head = vector["entries"][-1]
    assert (checkpoint["seq"], checkpoint["entry_hash"]) == (head["seq"], head["entry_hash"])
    document = {
        "format": "vteller-audit-checkpoint/1",
        "seq": checkpoint["seq"],
        "entry_hash": checkpoint["entry_hash"],
        "at": checkpoint["at"],
        "key_id": checkpoint["key_id"],
    }
    assert spec_canonical(document) == checkpoint["canonical"].encode()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["signing_seed_hex"]))
    # Ed25519 is deterministic: the same seed and bytes give the same signature.
    assert key.sign(checkpoint["canonical"].encode()).hex() == checkpoint["signature"]
    assert public_key_id(vector["public_key_pem"].encode()) == checkpoint["key_id"]


def _chain() -> tuple[list[Entry], Checkpoint, dict[str, bytes]]:
    entries, checkpoint, signer = build()
    return entries, checkpoint, {signer.key_id: signer.public_key_pem()}


def test_the_vector_chain_verifies() -> None:
    entries, checkpoint, keys = _chain()
    report = verify_entries(entries, [checkpoint], keys)
    assert report.ok, report.render()
    assert (report.entries, report.head_seq, report.last_checkpoint_seq) == (6, 6, 6)
    assert report.render().startswith("audit log OK: 6 entries (1..6)")


def test_an_edited_entry_is_named() -> None:
    entries, checkpoint, keys = _chain()
    entries[2] = dataclasses.replace(entries[2], detail={"note": "changed"})
    report = verify_entries(entries, [checkpoint], keys)
    assert report.problems == ["entry 3: hash does not match its content (edited?)"]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link() -> None:
    entries, checkpoint, keys = _chain()
    edited = dataclasses.replace(entries[2], actor_role="admin")
    entries[2] = dataclasses.replace(edited, entry_hash=edited.compute_hash())
    report = verify_entries(entries, [checkpoint], keys)
    assert report.problems[0] == (
        "entry 4: previous hash does not match entry 3 (reordered or deleted?)"
    )


def test_a_deleted_entry_is_named() -> None:
    entries, checkpoint, keys = _chain()
    del entries[3]
    report = verify_entries(entries, [checkpoint], keys)
    assert report.problems == ["entry 4 missing (sequence jumps from 3 to 5)"]


def test_a_deleted_first_entry_is_named() -> None:
    entries, checkpoint, keys = _chain()
    report = verify_entries(entries[2:], [checkpoint], keys)
    assert report.problems == ["entries 1..2 missing (sequence jumps from 0 to 3)"]


def test_swapped_sequence_numbers_break_the_link() -> None:
    entries, checkpoint, keys = _chain()
    third, fourth = entries[2], entries[3]
    entries[2] = dataclasses.replace(fourth, seq=3)
    entries[3] = dataclasses.replace(third, seq=4)
    report = verify_entries(entries, [checkpoint], keys)
    assert report.problems == [
        "entry 3: previous hash does not match entry 2 (reordered or deleted?)"
    ]


def test_truncation_and_bad_checkpoints() -> None:
    entries, checkpoint, keys = _chain()
    report = verify_entries(entries[:4], [checkpoint], keys)
    assert report.problems == ["checkpoint at 6: entry 6 is missing (log truncated?)"]

    forged = dataclasses.replace(checkpoint, signature="00" * 64)
    report = verify_entries(entries, [forged], keys)
    assert report.problems == ["checkpoint at 6: signature invalid"]

    report = verify_entries(entries, [checkpoint], {})
    assert report.problems == [f"checkpoint at 6: signed by unknown key {checkpoint.key_id}"]

    # The whole log rewritten consistently: only the signed checkpoint still tells.
    rewritten: list[Entry] = []
    previous = GENESIS_HASH
    for entry in entries:
        fields = EntryFields(**{
            f.name: getattr(entry, f.name) for f in dataclasses.fields(EntryFields)
        } | {"prev_hash": previous, "target": "x"})  # fmt: skip
        rewritten.append(Entry(**vars(fields), entry_hash=fields.compute_hash()))
        previous = rewritten[-1].entry_hash
    report = verify_entries(rewritten, [checkpoint], keys)
    assert report.problems == [
        "checkpoint at 6: entry hash does not match entry 6 (log rewritten?)"
    ]


def _checkpoints_at(*seqs: int) -> tuple[list[Entry], list[Checkpoint], dict[str, bytes]]:
    entries, checkpoint, signer = build()
    checkpoints = []
    for seq in seqs:
        fields = CheckpointFields(seq, entries[seq - 1].entry_hash, checkpoint.at, signer.key_id)
        signature = signer.sign(fields.canonical()).hex()
        checkpoints.append(Checkpoint(**vars(fields), signature=signature))
    return entries, checkpoints, {signer.key_id: signer.public_key_pem()}


def _spacing(*seqs: int, forged: int | None = None) -> list[str]:
    """The problems of the vector's chain with checkpoints at `seqs`, one every 2 entries due."""
    entries, checkpoints, keys = _checkpoints_at(*seqs)
    checkpoints = [
        dataclasses.replace(c, signature="00" * 64) if c.seq == forged else c for c in checkpoints
    ]
    return verify_entries(entries, checkpoints, keys, checkpoint_every=2).problems


def test_the_unsigned_tail_is_never_longer_than_the_writer_leaves_it() -> None:
    assert _spacing(2, 4, 6) == []
    assert _spacing(3, 5) == []  # the head's interval, and the one before, may be unsigned
    # Gaps before a checkpoint that holds hide nothing: its signed hash binds every entry before
    # it (a log written before the spacing rule, or by the command line, has such gaps).
    assert _spacing(2, 6) == []
    assert _spacing(6) == []
    rule = "though the writer signs each time the log passes a multiple of 2 (checkpoints deleted?)"
    assert _spacing(3) == [f"entries 4..6 are not signed, {rule}"]
    assert _spacing() == [f"entries 1..6 are not signed, {rule}"]
    # A checkpoint that does not hold covers nothing.
    assert _spacing(2, 6, forged=6) == [
        "checkpoint at 6: signature invalid",
        f"entries 3..6 are not signed, {rule}",
    ]


def test_the_log_still_holds_what_this_machine_signed() -> None:
    entries, checkpoints, keys = _checkpoints_at(4, 6)
    at_4, at_6 = checkpoints

    def problems(
        log: list[Entry], kept: list[Checkpoint], signed_here: tuple[int, str]
    ) -> list[str]:
        verifier = Verifier(kept, keys, signed_here=signed_here)
        for entry in log:
            verifier.add(entry)
        return verifier.finish().problems

    assert problems(entries, [at_4, at_6], (4, entries[3].entry_hash)) == []
    assert problems(entries, [at_4, at_6], (4, "0" * 64)) == [
        "entry 4 is not the one this machine signed (log rewritten?)"
    ]
    assert problems(entries[:5], [at_4], (6, entries[5].entry_hash)) == [
        "entry 6, which this machine signed, is missing (log truncated?)"
    ]
    assert problems(entries, [at_4], (6, entries[5].entry_hash)) == [
        "the checkpoint at 6 that this machine signed is missing (checkpoints deleted?)"
    ]


def test_walker_resumes_after_a_trusted_entry() -> None:
    entries, _, _ = _chain()
    walker = ChainWalker((3, entries[2].entry_hash))
    for entry in entries[3:]:
        walker.add(entry)
    assert walker.problem is None and walker.last_seq == 6


def test_times_have_one_spelling() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_time(at) == "2026-01-02T03:04:05.000000Z"
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 2))


def test_details_are_checked() -> None:
    _check_detail("auth.login", {"reason": "x"})
    with pytest.raises(ValueError, match="not in"):
        _check_detail("auth.guess", {})
    with pytest.raises(ValueError, match="secret"):
        _check_detail("auth.login", {"password": "hunter2"})
    with pytest.raises(ValueError, match="float"):
        _check_detail("session.left", {"gap": 1.5})
    with pytest.raises(CanonicalJsonError):
        EntryFields(
            1, datetime.now(UTC), "a", "b", "auth.login", "", {"x": 0.5}, None, ""
        ).canonical()


def test_the_document_matches_the_vector_and_the_vocabulary(vector: dict[str, Any]) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "audit-log.md").read_text("utf-8")
    for entry in vector["entries"]:
        assert entry["entry_hash"] in doc
    assert vector["entries"][0]["canonical"] in doc
    assert vector["checkpoint"]["signature"] in doc
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", doc, re.MULTILINE))
    assert documented == set(ACTIONS)


def _exported_by_sqlite(vector: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The vector as `sqlite3 -json` gives it (docs/audit-log.md 6.1): times without an offset,
    `detail` as the JSON text SQLAlchemy stored (non-ASCII escaped)."""

    def sqlite_time(at: str) -> str:
        return at.replace("T", " ").removesuffix("Z")

    rows = [
        {k: v for k, v in entry.items() if k not in ("format", "canonical")}
        | {"at": sqlite_time(entry["at"]), "detail": json.dumps(entry["detail"])}
        for entry in vector["entries"]
    ]
    checkpoint = {k: v for k, v in vector["checkpoint"].items() if k != "canonical"}
    return rows, checkpoint | {"at": sqlite_time(checkpoint["at"])}


def test_the_documented_independent_check_accepts_the_vector(vector: dict[str, Any]) -> None:
    check = documented_audit_check()
    keys = [vector["public_key_pem"].encode()]
    rows, checkpoint = _exported_by_sqlite(vector)
    assert "\\u98ce" in rows[-1]["detail"]  # what makes a hash of the text itself go wrong
    assert check(rows, [checkpoint], keys) == []
    # PostgreSQL's json_agg: detail as an object, times with an offset and a trimmed fraction.
    postgres = [
        row | {"detail": entry["detail"], "at": entry["at"].replace("000Z", "+00:00")}
        for row, entry in zip(rows, vector["entries"], strict=True)
    ]
    assert postgres[0]["at"] == "2026-11-27T10:00:01.001+00:00"
    eight_hours_east = checkpoint | {"at": "2026-11-27T18:15:00+08:00"}
    assert check(postgres, [eight_hours_east], keys) == []


def test_the_documented_independent_check_names_breaks(vector: dict[str, Any]) -> None:
    check = documented_audit_check()
    keys = [vector["public_key_pem"].encode()]
    rows, checkpoint = _exported_by_sqlite(vector)
    edited = [*rows[:2], rows[2] | {"target": "FORGED"}, *rows[3:]]
    assert check(edited, [checkpoint], keys) == [
        "entry 3: hash does not match its content (edited?)"
    ]
    assert check([*rows[:3], *rows[4:]], [checkpoint], keys)[0] == (
        "entry 4 missing (sequence jumps to 5)"
    )
    assert check(rows, [checkpoint | {"entry_hash": rows[4]["entry_hash"]}], keys) == [
        "checkpoint at 6: signature invalid"
    ]
    assert check(rows, [checkpoint], []) == [
        f"checkpoint at 6: signed by unknown key {checkpoint['key_id']}"
    ]
    assert check(rows[:5], [checkpoint], keys) == [
        "checkpoint at 6: entry 6 is missing (log truncated?)"
    ]
