"""Which checks a transaction must pass before it is approved, judged from the database.

The facts are read fresh at every decision (never taken from a page): the customer's signature,
the session's identity result, the recording the customer signed in and whether it is sealed,
and that recording's compliance report with its review items. docs/workflow.md, section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import (
    Archive,
    CallSession,
    ComplianceReport,
    ComplianceReview,
    SessionEvent,
    Transaction,
)
from server.workflow.transactions.config import Check, WorkflowConfig


@dataclass(frozen=True)
class Facts:
    """What the rules look at; the approval record carries the same values."""

    signed: bool
    recorded_product: bool  # a wealth/insurance purchase, or a purchase in such a session
    identity: str | None  # the session's latest identity decision: pass | fail | None
    identity_method: str | None
    archive_id: str | None  # the recording the customer signed in
    archive_status: str | None  # recording | sealed | interrupted
    manifest_sha256: str | None
    report_state: str | None  # queued | running | done | failed
    report_decision: str | None  # pass | fail | needs_review
    report_object: str | None
    report_sha256: str | None
    open_reviews: int
    approved_reviews: int
    rejected_reviews: int


# Not a rule (a decision refuses it before evaluating them, and it is never overridden): the
# preview of a transaction's checks shows it among them, so that a page never shows every check
# passing while approval is refused (Transactions.checks).
RecordingSignature = Literal["recording_signature"]


@dataclass(frozen=True)
class CheckResult:
    check: Check | RecordingSignature
    passed: bool
    reason: str  # stable code
    message: str  # what to do (shown to the teller and the supervisor)

    def to_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "passed": self.passed,
            "reason": self.reason,
            "message": self.message,
        }


async def gather_facts(db: AsyncSession, row: Transaction, config: WorkflowConfig) -> Facts:
    session = await db.get(CallSession, row.session_id)
    assert session is not None  # a foreign key
    recorded_types = set(config.recorded_product_types)
    recorded = row.kind == "purchase" and (
        row.product_type in recorded_types or session.business in recorded_types
    )
    identity = await db.scalar(
        select(SessionEvent)
        .where(SessionEvent.session_id == row.session_id, SessionEvent.type == "identity_result")
        .order_by(SessionEvent.id.desc())
        .limit(1)
    )
    archive = await db.get(Archive, row.signed_in_archive_id) if row.signed_in_archive_id else None
    report = (
        await db.get(ComplianceReport, row.signed_in_archive_id)
        if row.signed_in_archive_id
        else None
    )
    states = (
        list(
            await db.scalars(
                select(ComplianceReview.state).where(
                    ComplianceReview.archive_id == row.signed_in_archive_id
                )
            )
        )
        if row.signed_in_archive_id
        else []
    )
    return Facts(
        signed=row.signature_sha256 is not None,
        recorded_product=recorded,
        identity=identity.detail.get("decision") if identity else None,
        identity_method=identity.detail.get("method") if identity else None,
        archive_id=archive.id if archive else None,
        archive_status=archive.status if archive else None,
        manifest_sha256=archive.manifest_sha256 if archive else None,
        report_state=report.state if report else None,
        report_decision=report.decision if report else None,
        report_object=report.report_object if report else None,
        report_sha256=report.report_sha256 if report else None,
        open_reviews=states.count("open"),
        approved_reviews=states.count("approved"),
        rejected_reviews=states.count("rejected"),
    )


def evaluate(facts: Facts) -> list[CheckResult]:
    """Every check that applies, passed or not, in the order a teller works through them."""
    results = [_signature(facts)]
    if facts.recorded_product:
        results += [_identity(facts), _recording(facts), _compliance(facts)]
    return results


def _signature(facts: Facts) -> CheckResult:
    if facts.signed:
        return CheckResult("signature", True, "signed", "The customer signed.")
    return CheckResult(
        "signature",
        False,
        "not_signed",
        "The customer has not signed yet: ask them to review and sign on their screen.",
    )


def _identity(facts: Facts) -> CheckResult:
    if facts.identity == "pass":
        return CheckResult("identity_passed", True, "passed", "Identity verified.")
    if facts.identity == "fail":
        return CheckResult(
            "identity_passed",
            False,
            "identity_failed",
            "Identity verification failed: verify again, or ask a supervisor to override.",
        )
    return CheckResult(
        "identity_passed",
        False,
        "identity_missing",
        "Identity has not been verified in this session: run identity verification first.",
    )


def _recording(facts: Facts) -> CheckResult:
    if facts.archive_id is None:
        return CheckResult(
            "recording_sealed",
            False,
            "not_signed_while_recording",
            "The customer did not sign during a dual recording: start the recording, ask the "
            "customer to sign again, then stop the recording.",
        )
    if facts.archive_status == "recording":
        return CheckResult(
            "recording_sealed",
            False,
            "recording_running",
            "The dual recording is still running: stop it so that it is sealed.",
        )
    if facts.archive_status != "sealed" or facts.manifest_sha256 is None:
        return CheckResult(
            "recording_sealed",
            False,
            "recording_incomplete",
            f"The recording ended as {facts.archive_status}: record again and have the "
            "customer sign during the new recording.",
        )
    return CheckResult("recording_sealed", True, "sealed", "The dual recording is sealed.")


def _compliance(facts: Facts) -> CheckResult:
    if facts.report_state != "done" or facts.report_decision is None:
        return CheckResult(
            "compliance_passed",
            False,
            "report_pending",
            "The compliance analysis of the recording has not finished: wait for its report.",
        )
    if facts.report_decision == "fail" or facts.rejected_reviews:
        return CheckResult(
            "compliance_passed",
            False,
            "report_failed",
            "The compliance report failed: record the sales script again, or ask a supervisor "
            "to override with a reason.",
        )
    # An undecided moment is not a pass until a supervisor approved it.
    if facts.open_reviews or (facts.report_decision != "pass" and not facts.approved_reviews):
        return CheckResult(
            "compliance_passed",
            False,
            "review_open",
            f"{facts.open_reviews} moment(s) of the recording await a supervisor's review: "
            "ask a supervisor to review them.",
        )
    return CheckResult("compliance_passed", True, "passed", "The compliance report passes.")
