"""What a transaction is: the teller's request, validated, and its canonical form and hash.

Amounts are integer minor units (fen for CNY) with an ISO 4217 currency: never floats, so the
canonical JSON (recorder/seal/canonical.py) is the same in every language that checks it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from recorder.seal.canonical import canonical_json
from recorder.seal.digest import sha256_hex
from recorder.seal.manifest import format_timestamp

TRANSACTION_FORMAT = "vteller.transaction"
TRANSACTION_VERSION = 1

_Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$")]
_Account = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z]{8,34}$")]
_Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
_Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


class Amount(_Strict):
    # strict: "100.50", 100.5 and true are refused rather than coerced into some integer.
    minor: int = Field(strict=True, gt=0, le=2**53 - 1, description="minor units (fen)")
    currency: _Currency


class Purchase(_Strict):
    kind: Literal["purchase"]
    product_type: Literal["wealth", "insurance", "fund", "deposit", "other"]
    product_code: _Code
    product_name: str = Field("", max_length=64)
    amount: Amount
    account: _Account


class Service(_Strict):
    kind: Literal["service"]
    service: Literal["card_activation", "limit_change", "personal_details_update"]
    account: _Account
    # What changes, in words the customer reads and signs (e.g. {"daily_limit": "20000.00 CNY"}).
    details: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")], _Text] = Field(
        default_factory=dict, max_length=16
    )


TransactionRequest = Annotated[Purchase | Service, Field(discriminator="kind")]


def canonical_transaction(
    request: Purchase | Service,
    transaction_id: str,
    session_id: str,
    created_by: str,
    created_at: datetime,
) -> dict[str, Any]:
    """The transaction as signed and approved (docs/workflow.md, section 1)."""
    return {
        "format": TRANSACTION_FORMAT,
        "version": TRANSACTION_VERSION,
        "id": transaction_id,
        "session_id": session_id,
        "created_by": created_by,
        "created_at": format_timestamp(created_at),
        **request.model_dump(mode="json"),
    }


def transaction_sha256(document: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(document))
