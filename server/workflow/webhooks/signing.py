"""The bytes and headers of one webhook request (docs/webhooks.md, sections 2-4).

The body is fixed when the delivery is queued, so every attempt sends the same bytes; only the
timestamp, and with it the signatures, change from one attempt to the next.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

from recorder.seal.canonical import canonical_json
from recorder.seal.signing import Signer
from server.audit.chain import format_time

VERSION = 1
EVENT_TYPE = "transaction.approved"
USER_AGENT = f"vteller-webhook/{VERSION}"

TIMESTAMP_HEADER = "Vteller-Timestamp"
SIGNATURE_HEADER = "Vteller-Signature"
ED25519_HEADER = "Vteller-Ed25519-Signature"
KEY_ID_HEADER = "Vteller-Key-Id"
DELIVERY_HEADER = "Vteller-Delivery-Id"
ATTEMPT_HEADER = "Vteller-Attempt"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def envelope_body(
    delivery_id: str, transaction_id: str, created_at: datetime, event: dict[str, Any]
) -> bytes:
    """Canonical JSON of the envelope; raises CanonicalJsonError for floats or non-JSON values."""
    return canonical_json(
        {
            "version": VERSION,
            "event_type": EVENT_TYPE,
            "delivery_id": delivery_id,
            "transaction_id": transaction_id,
            "created_at": format_time(created_at),
            "event": event,
        }
    )


def signed_bytes(timestamp: int, body: bytes) -> bytes:
    # The timestamp is inside the signed bytes, so a captured request cannot be replayed later
    # with a fresh timestamp.
    return str(timestamp).encode("ascii") + b"." + body


def hmac_signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(
        secret.encode("utf-8"), signed_bytes(timestamp, body), hashlib.sha256
    ).hexdigest()


def request_headers(
    *,
    secret: str,
    signer: Signer,
    timestamp: int,
    body: bytes,
    transaction_id: str,
    delivery_id: str,
    attempt: int,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: transaction_id,
        DELIVERY_HEADER: delivery_id,
        ATTEMPT_HEADER: str(attempt),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"v1={hmac_signature(secret, timestamp, body)}",
        KEY_ID_HEADER: signer.key_id,
        ED25519_HEADER: signer.sign(signed_bytes(timestamp, body)).hex(),
    }
