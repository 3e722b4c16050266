"""The approval record: the signed statement that a transaction was approved, and on what grounds.

Version 1 (docs/workflow.md, section 4). The record binds the transaction's hash to the hashes of
the customer's signature image, the sealed recording's manifest and its compliance report, lists
the checks as evaluated and every approval and override, and is signed with the worker's Ed25519
key (the one that signs manifests and reports; recorder/seal/signing.py) over its canonical JSON.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from recorder.seal.canonical import canonical_json
from recorder.seal.digest import sha256_hex
from recorder.seal.manifest import format_timestamp
from recorder.seal.signing import Signer, verify
from server.workflow.transactions.rules import CheckResult, Facts

APPROVAL_FORMAT = "vteller.approval"
APPROVAL_VERSION = 1


class ApprovalRecordError(ValueError):
    """A signed approval record that does not verify."""


def approval_record(
    transaction: dict[str, Any],
    facts: Facts,
    signature: dict[str, str],
    checks: list[CheckResult],
    decisions: list[dict[str, Any]],
    approved_at: datetime,
    signing_key_id: str,
) -> dict[str, Any]:
    """`signature`: {"image_sha256", "signed_at"}; `decisions`: maker, checker and overrides."""
    recording = (
        {"archive_id": facts.archive_id, "manifest_sha256": facts.manifest_sha256}
        if facts.archive_id is not None and facts.manifest_sha256 is not None
        else None
    )
    compliance = (
        {
            "report": facts.report_object,
            "report_sha256": facts.report_sha256,
            "decision": facts.report_decision,
        }
        if facts.report_object is not None
        else None
    )
    identity = (
        {"decision": facts.identity, "method": facts.identity_method}
        if facts.identity is not None
        else None
    )
    return {
        "format": APPROVAL_FORMAT,
        "version": APPROVAL_VERSION,
        "transaction": transaction,
        "transaction_sha256": sha256_hex(canonical_json(transaction)),
        "signature": signature,
        "recording": recording,
        "compliance": compliance,
        "identity": identity,
        "checks": [{"check": c.check, "passed": c.passed, "reason": c.reason} for c in checks],
        "decisions": decisions,
        "approved_at": format_timestamp(approved_at),
        "signing_key_id": signing_key_id,
    }


def sign_approval(record: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """The signed form delivered to the core bank: {"record", "signature" (base64)}."""
    if record["signing_key_id"] != signer.key_id:
        raise ValueError(f"record names key {record['signing_key_id']}, signer is {signer.key_id}")
    signature = signer.sign(canonical_json(record))
    return {"record": record, "signature": base64.b64encode(signature).decode("ascii")}


def verify_approval(signed: dict[str, Any], public_keys: dict[str, bytes]) -> dict[str, Any]:
    """The record if `signed` verifies with one of `public_keys` (by key id), else raises."""
    record = signed.get("record")
    if not isinstance(record, dict):
        raise ApprovalRecordError("no record object")
    if record.get("format") != APPROVAL_FORMAT or record.get("version") != APPROVAL_VERSION:
        raise ApprovalRecordError("not a version 1 approval record")
    pem = public_keys.get(str(record.get("signing_key_id")))
    if pem is None:
        raise ApprovalRecordError(f"unknown signing key {record.get('signing_key_id')!r}")
    try:
        signature = base64.b64decode(str(signed.get("signature")), validate=True)
    except binascii.Error as exc:
        raise ApprovalRecordError("signature is not base64") from exc
    if not verify(pem, signature, canonical_json(record)):
        raise ApprovalRecordError("the signature does not match the record")
    if record.get("transaction_sha256") != sha256_hex(canonical_json(record["transaction"])):
        raise ApprovalRecordError("transaction_sha256 does not match the transaction")
    return record
