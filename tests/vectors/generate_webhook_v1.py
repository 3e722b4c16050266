"""Generate the webhook v1 test vector (docs/webhooks.md, "Test vector").

    python -m tests.vectors.generate_webhook_v1 [OUT_FILE]

writes OUT_FILE (default: tests/vectors/webhook-v1.json): one webhook request, its body, headers
and both signatures, made by vteller's own code from fixed inputs (a fixed secret, Ed25519 seed and
timestamp; Ed25519 signatures are deterministic), so the output is identical on every run;
tests/unit/test_webhook_vector.py checks that and recomputes every value from the spec.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recorder.seal.signing import Signer
from server.workflow.webhooks.signing import envelope_body, request_headers, signed_bytes
from tests.vectors.vector_file import render_json, write_vector

OUT_FILE = Path(__file__).parent / "webhook-v1.json"
SECRET = "vteller-webhook-test-vector-secret-0001"
SIGNING_SEED = bytes(range(0xA0, 0xC0))
TIMESTAMP = 1795780800
DELIVERY_ID = "wh_0a1b2c3d4e5f60718293a4b5"
TRANSACTION_ID = "t_5f0c2d9a61b84e7c93d1a2b4"
CREATED_AT = datetime(2026, 11, 27, 10, 0, 0, 120000, tzinfo=UTC)
# An approval record with its transaction, shaped as docs/workflow.md describes; what matters here
# is that it is arbitrary nested JSON with non-ASCII text and integer amounts.
EVENT: dict[str, Any] = {
    "approval": {
        "transaction_id": TRANSACTION_ID,
        "transaction_sha256": "3b7e1f0c" * 8,
        "manifest_sha256": "9d2a44e1" * 8,
        "approved_by": ["u_00000000000000000000000a"],
        "approved_at": "2026-11-27T09:59:58.000000Z",
    },
    "key_id": "a18112b0b7b4225f",
    "signature": "00" * 64,
    "transaction": {
        "id": TRANSACTION_ID,
        "kind": "purchase",
        "product_code": "WM-2026-07",
        "product_name": "稳健理财 7 号",
        "amount_minor": 5000000,
        "currency": "CNY",
        "account": "6222********1234",
    },
}


def generate() -> dict[str, Any]:
    signer = Signer.from_seed(SIGNING_SEED)
    body = envelope_body(DELIVERY_ID, TRANSACTION_ID, CREATED_AT, EVENT)
    headers = request_headers(
        secret=SECRET,
        signer=signer,
        timestamp=TIMESTAMP,
        body=body,
        transaction_id=TRANSACTION_ID,
        delivery_id=DELIVERY_ID,
        attempt=1,
    )
    return {
        "description": "vteller webhook v1 test vector; see docs/webhooks.md",
        "secret": SECRET,
        "signing_seed_hex": SIGNING_SEED.hex(),
        "public_key_pem": signer.public_key_pem().decode("ascii"),
        "key_id": signer.key_id,
        "timestamp": TIMESTAMP,
        "envelope": json.loads(body),
        "body": body.decode("utf-8"),
        "signed_bytes": signed_bytes(TIMESTAMP, body).decode("utf-8"),
        "hmac_sha256": headers["Vteller-Signature"].removeprefix("v1="),
        "ed25519_signature": headers["Vteller-Ed25519-Signature"],
        "headers": headers,
    }


def render() -> str:
    return render_json(generate())


if __name__ == "__main__":
    write_vector(render, OUT_FILE)
