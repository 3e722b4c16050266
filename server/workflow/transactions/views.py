"""The JSON views of a transaction: what staff see, what auditors see, and what the customer sees.

The account (a bank account or card number) is shown whole only where a function needs it: the
auditor's views, the signed approval record delivered to the core bank and the archive. The
teller typed it in and the supervisor checks that it is the customer's by its last digits, so
their pages, experts' and the customer's get it masked (docs/workflow.md, section 4).
"""

from __future__ import annotations

import json
from typing import Any

from server.db.models import ERASED, Transaction


def _mask_account(account: str) -> str:
    """6222020200112233445 -> ****3445: the end is how a customer or a supervisor recognises an
    account; the rest would let a page's reader use it. An account erased at the end of its
    retention (server/auditor/purge.py) is shown as such."""
    return account if account == ERASED else "****" + account[-4:]


def _masked(content: dict[str, Any]) -> dict[str, Any]:
    return content | {"account": _mask_account(content["account"])}


def staff_view(row: Transaction, *, full_account: bool = False) -> dict[str, Any]:
    """`full_account`: for auditors only; everyone else gets the account masked."""
    content = json.loads(row.content)
    return {
        "id": row.id,
        "session_id": row.session_id,
        "state": row.state,
        "transaction": content if full_account else _masked(content),
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


def approval_view(signed: dict[str, Any], *, full_account: bool = False) -> dict[str, Any]:
    """A signed approval record as staff see it. Masked, the record no longer verifies against
    its signature: the verifiable one is the auditor's (`full_account`) and the core bank's."""
    if full_account:
        return signed
    record = signed["record"]
    return signed | {"record": record | {"transaction": _masked(record["transaction"])}}


def customer_view(row: Transaction) -> dict[str, Any]:
    content = json.loads(row.content)
    shown = {
        key: content[key]
        for key in ("kind", "product_type", "product_code", "product_name", "amount", "service")
        if key in content
    }
    shown["details"] = content.get("details", {})
    shown["account"] = _mask_account(content["account"])
    return {
        "id": row.id,
        "state": row.state,
        "transaction": shown,
        "sha256": row.sha256,
        "signed": row.signature_sha256 is not None,
    }
