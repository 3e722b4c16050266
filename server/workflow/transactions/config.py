"""Transaction and approval settings (nested in server.settings.Settings as `workflow`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Check = Literal["signature", "identity_passed", "recording_sealed", "compliance_passed"]
OVERRIDABLE: tuple[Check, ...] = ("identity_passed", "compliance_passed")


class WorkflowConfig(BaseModel):
    """The approval rules (docs/workflow.md, section 3): the server enforces them, never a page."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currencies: list[str] = Field(
        default_factory=lambda: ["CNY", "USD", "HKD", "EUR"],
        description="ISO 4217 codes a transaction may use",
    )
    max_amount_minor: int = Field(
        default=10_000_000_000, ge=1, le=2**53 - 1, description="largest amount, minor units"
    )
    recorded_product_types: list[str] = Field(
        default_factory=lambda: ["wealth", "insurance"],
        description="purchases that need identity, a sealed recording and a passed compliance "
        "report before approval (so do all purchases in a session of such a business)",
    )
    second_approval_above_minor: dict[str, int] = Field(
        default_factory=lambda: {"CNY": 5_000_000, "USD": 700_000, "HKD": 5_000_000},
        description="per currency: amounts above this need a supervisor's second approval; "
        "a currency not listed always needs it",
    )
    overridable_checks: list[Check] = Field(
        default_factory=lambda: list(OVERRIDABLE),
        description="failed checks a supervisor may override with a written reason (a "
        "missing signature or recording never can by default: no trade before the record)",
    )
    override_reason_min_chars: int = Field(default=10, ge=1, le=500)
    # The Anti-Money Laundering Law (as revised in 2024) keeps transaction records for
    # at least 10 years: an approved transaction of a session never recorded outlives the 30
    # days of its customer's other data (identity.unrecorded_retention_days) until then.
    # Recorded sessions' transactions go with their archive (docs/deployment.md, "What a purge
    # erases, and what it keeps").
    transaction_retention_days: int = Field(
        default=3653,
        ge=365,
        le=36525,
        description="days after an unrecorded session ends before `vteller archive purge` "
        "erases its approved transactions (the bank's retention of transaction records)",
    )
    signature_max_bytes: int = Field(default=512 * 1024, ge=1024, le=8 * 1024 * 1024)
    signature_max_pixels: tuple[int, int] = Field(
        default=(2400, 1600), description="largest signature image, width and height"
    )
    signature_min_ink_pixels: int = Field(
        default=150, ge=1, description="fewer dark pixels than this is a blank signature"
    )
