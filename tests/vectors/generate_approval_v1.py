"""Generate the approval record v1 test vector (docs/workflow.md, section 5).

    python -m tests.vectors.generate_approval_v1 [OUT_FILE]

writes OUT_FILE (default: tests/vectors/approval-v1.json): one transaction, the signed approval
record built from it with the code that builds real ones, the canonical bytes that are signed,
their hashes, and the public key of the fixed Ed25519 seed. Every input is fixed (Ed25519
signatures are deterministic), so the output is identical on every run;
tests/unit/test_approval_record.py checks that and verifies the vector from the spec.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recorder.seal.canonical import canonical_json
from recorder.seal.digest import sha256_hex
from recorder.seal.signing import Signer
from server.workflow.transactions.approvals import approval_record, sign_approval
from server.workflow.transactions.request import Purchase, canonical_transaction
from server.workflow.transactions.rules import Facts, evaluate
from tests.vectors.vector_file import render_json, write_vector

OUT_FILE = Path(__file__).parent / "approval-v1.json"
SIGNING_SEED = bytes(range(0xC0, 0xE0))
SESSION = "s_0123456789abcdef01234567"
TELLER = "u_00000000000000000000000a"
SUPERVISOR = "u_00000000000000000000000c"

# What the rules saw: every check passes (also the unit tests' starting point).
FACTS = Facts(
    signed=True,
    recorded_product=True,
    identity="pass",
    identity_method="automatic",
    archive_id="0190d1e8-5a5b-7c3d-9e4f-a0b1c2d3e4f5",
    archive_status="sealed",
    manifest_sha256="5f" * 32,
    report_state="done",
    report_decision="pass",
    report_object="report-001.json",
    report_sha256="a1" * 32,
    open_reviews=0,
    approved_reviews=0,
    rejected_reviews=0,
)


def build() -> tuple[dict[str, Any], dict[str, Any], Signer]:
    """(transaction, signed approval record, signer)."""
    request = Purchase.model_validate(
        {
            "kind": "purchase",
            "product_type": "wealth",
            "product_code": "WM-2026-088",
            "product_name": "稳健理财88号",
            "amount": {"minor": 6_000_000, "currency": "CNY"},
            "account": "6222020200112233445",
        }
    )
    transaction = canonical_transaction(
        request,
        "t_00000000000000000000000f",
        SESSION,
        TELLER,
        datetime(2026, 11, 27, 10, 5, 0, tzinfo=UTC),
    )
    signer = Signer.from_seed(SIGNING_SEED)
    record = approval_record(
        transaction,
        FACTS,
        {"image_sha256": "c3" * 32, "signed_at": "2026-11-27T10:08:12.345Z"},
        evaluate(FACTS),
        [
            {
                "step": "maker",
                "user_id": TELLER,
                "role": "teller",
                "at": "2026-11-27T10:40:00.000Z",
            },
            {
                "step": "checker",
                "user_id": SUPERVISOR,
                "role": "supervisor",
                "at": "2026-11-27T10:52:30.000Z",
            },
        ],
        datetime(2026, 11, 27, 10, 52, 30, tzinfo=UTC),
        signer.key_id,
    )
    return transaction, sign_approval(record, signer), signer


def generate() -> dict[str, Any]:
    transaction, signed, signer = build()
    canonical = canonical_json(signed["record"])
    return {
        "description": "vteller approval record v1 test vector; see docs/workflow.md",
        "transaction_canonical": canonical_json(transaction).decode("utf-8"),
        "transaction_sha256": sha256_hex(canonical_json(transaction)),
        "signed": signed,
        "record_canonical": canonical.decode("utf-8"),
        "record_sha256": sha256_hex(canonical),
        "signing_seed_hex": SIGNING_SEED.hex(),
        "public_key_pem": signer.public_key_pem().decode("ascii"),
    }


def render() -> str:
    return render_json(generate())


if __name__ == "__main__":
    write_vector(render, OUT_FILE)
