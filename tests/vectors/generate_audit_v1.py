"""Generate the audit log v1 test vector (docs/audit-log.md, "Test vector").

    python -m tests.vectors.generate_audit_v1 [OUT_FILE]

writes OUT_FILE (default: tests/vectors/audit-v1.json): a small fixed chain of entries with the
canonical bytes and hash of each, and one checkpoint signed with a fixed Ed25519 seed, with its
public key. Every input is fixed (Ed25519 signatures are deterministic), so the output is identical
on every run; tests/unit/test_audit_chain.py checks that and recomputes every value from the spec.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recorder.seal.signing import Signer
from server.audit.chain import (
    GENESIS_HASH,
    Checkpoint,
    CheckpointFields,
    Entry,
    EntryFields,
)
from tests.vectors.vector_file import render_json, write_vector

OUT_FILE = Path(__file__).parent / "audit-v1.json"
SIGNING_SEED = bytes(range(0xA0, 0xC0))
SESSION = "s_0123456789abcdef01234567"

# (actor, actor_role, action, target, detail, address)
ENTRIES: list[tuple[str, str, str, str, dict[str, Any], str | None]] = [
    ("system", "system", "admin.user_created", "teller1",
     {"user_id": "u_00000000000000000000000a", "role": "teller", "via": "cli"}, None),
    ("anonymous", "anonymous", "auth.login_failed", "teller1",
     {"reason": "invalid_credentials"}, "192.0.2.10"),
    ("u_00000000000000000000000a", "teller", "auth.login", "teller1", {}, "192.0.2.10"),
    ("u_00000000000000000000000a", "teller", "invitation.created", SESSION,
     {"business": "wealth", "expires_at": "2026-11-27T10:30:00+00:00"}, "192.0.2.10"),
    ("p_00000000000000000000000b", "customer", "session.joined", SESSION,
     {"rejoined": False}, None),
    ("p_00000000000000000000000c", "teller", "recording.marked", SESSION,
     {"moment": "风险揭示", "phase": "start", "media_ms": 61250}, None),
]  # fmt: skip


def build() -> tuple[list[Entry], Checkpoint, Signer]:
    entries: list[Entry] = []
    previous = GENESIS_HASH
    for seq, (actor, role, action, target, detail, address) in enumerate(ENTRIES, start=1):
        fields = EntryFields(
            seq=seq,
            at=datetime(2026, 11, 27, 10, 0, seq, 1000 * seq, tzinfo=UTC),
            actor=actor,
            actor_role=role,
            action=action,
            target=target,
            detail=detail,
            address=address,
            prev_hash=previous,
        )
        entry = Entry(**vars(fields), entry_hash=fields.compute_hash())
        entries.append(entry)
        previous = entry.entry_hash
    signer = Signer.from_seed(SIGNING_SEED)
    head = entries[-1]
    fields_cp = CheckpointFields(
        head.seq, head.entry_hash, datetime(2026, 11, 27, 10, 15, tzinfo=UTC), signer.key_id
    )
    checkpoint = Checkpoint(**vars(fields_cp), signature=signer.sign(fields_cp.canonical()).hex())
    return entries, checkpoint, signer


def generate() -> dict[str, Any]:
    entries, checkpoint, signer = build()
    return {
        "description": "vteller audit log v1 test vector; see docs/audit-log.md",
        "genesis_prev_hash": GENESIS_HASH,
        "entries": [
            entry.as_json() | {"canonical": entry.canonical().decode("utf-8")} for entry in entries
        ],
        "checkpoint": checkpoint.as_json() | {"canonical": checkpoint.canonical().decode("utf-8")},
        "signing_seed_hex": SIGNING_SEED.hex(),
        "public_key_pem": signer.public_key_pem().decode("ascii"),
    }


def render() -> str:
    return render_json(generate())


if __name__ == "__main__":
    write_vector(render, OUT_FILE)
