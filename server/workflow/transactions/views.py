"""The JSON views of a transaction: what staff see, and what the customer sees."""

from __future__ import annotations

import json
from typing import Any

from server.db.models import Transaction


def _mask(account: str) -> str:
    # The customer recognises their account by its end; the full number stays with staff.
    return "****" + account[-4:]


def staff_view(row: Transaction) -> dict[str, Any]:
    return {
        "id": row.id,
        "session_id": row.session_id,
        "state": row.state,
        "transaction": json.loads(row.content),
        "sha256": row.sha256,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "signature": (
            {
                "sha256": row.signature_sha256,
                "signed_at": row.signed_at.isoformat() if row.signed_at else None,
                "archive_id": row.signed_in_archive_id,
            }
            if row.signature_sha256
            else None
        ),
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
    }


def customer_view(row: Transaction) -> dict[str, Any]:
    content = json.loads(row.content)
    shown = {
        key: content[key]
        for key in ("kind", "product_type", "product_code", "product_name", "amount", "service")
        if key in content
    }
    shown["details"] = content.get("details", {})
    shown["account"] = _mask(content["account"])
    return {
        "id": row.id,
        "state": row.state,
        "transaction": shown,
        "sha256": row.sha256,
        "signed": row.signature_sha256 is not None,
    }
