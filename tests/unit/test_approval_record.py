"""The approval record v1 test vector, checked from the spec (docs/workflow.md, section 5)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from recorder.seal.signing import public_key_id
from server.workflow.transactions.approvals import ApprovalRecordError, verify_approval
from tests.vectors.generate_approval_v1 import OUT_FILE, render


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OUT_FILE.read_text("utf-8"))
    return loaded


def spec_canonical(document: Any) -> bytes:
    # JCS for this vector (BMP-only member names, no floats): sorted keys, no whitespace, UTF-8.
    return json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def test_generator_is_deterministic() -> None:
    assert render() == OUT_FILE.read_text("utf-8")


def test_hashes_and_signature_from_the_spec(vector: dict[str, Any]) -> None:
    record = vector["signed"]["record"]
    canonical = spec_canonical(record)
    assert canonical.decode() == vector["record_canonical"]
    assert hashlib.sha256(canonical).hexdigest() == vector["record_sha256"]
    transaction = spec_canonical(record["transaction"])
    assert transaction.decode() == vector["transaction_canonical"]
    assert hashlib.sha256(transaction).hexdigest() == record["transaction_sha256"]
    assert record["transaction_sha256"] == vector["transaction_sha256"]
    pem = vector["public_key_pem"].encode()
    assert record["signing_key_id"] == public_key_id(pem)
    key = load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    key.verify(base64.b64decode(vector["signed"]["signature"]), canonical)
    assert record["transaction"]["amount"] == {"minor": 6000000, "currency": "CNY"}
    assert [d["step"] for d in record["decisions"]] == ["maker", "checker"]


def test_the_verifier_accepts_the_vector_and_refuses_any_change(vector: dict[str, Any]) -> None:
    keys = {public_key_id(vector["public_key_pem"].encode()): vector["public_key_pem"].encode()}
    assert verify_approval(vector["signed"], keys) == vector["signed"]["record"]
    changed = copy.deepcopy(vector["signed"])
    changed["record"]["transaction"]["amount"]["minor"] = 6000001
    with pytest.raises(ApprovalRecordError, match="signature"):
        verify_approval(changed, keys)
    rebound = copy.deepcopy(vector["signed"])
    rebound["record"]["recording"]["manifest_sha256"] = "00" * 32
    with pytest.raises(ApprovalRecordError):
        verify_approval(rebound, keys)
    with pytest.raises(ApprovalRecordError, match="unknown signing key"):
        verify_approval(vector["signed"], {})
    garbled = vector["signed"] | {"signature": "not base64!"}
    with pytest.raises(ApprovalRecordError, match="base64"):
        verify_approval(garbled, keys)
