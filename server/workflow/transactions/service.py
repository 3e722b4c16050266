"""Transactions in a session: created by the teller, signed by the customer, approved by rule.

States (docs/workflow.md, section 2):

    awaiting_signature -> signed -> (teller approves, every check passes)
        -> approved                      amount within the four-eyes threshold
        -> awaiting_second_approval      above it: a supervisor approves -> approved
    signed -> (teller approves, an overridable check fails) -> awaiting_override
        -> a supervisor overrides with a reason -> approved
    any state before approved -> rejected

Every step is written to the audit log before it takes effect (an action the log cannot show does
not happen), and state changes are compare-and-set, so two people deciding at once cannot both
win. A decision's compare-and-set also names the signature its checks judged: should the customer
sign again meanwhile, the decision is refused (409 signature_changed) rather than approving a
signature nobody checked. A decision on a transaction signed in a sealed recording also reads
that recording's stored manifest: it must bind the very signature the row holds (409
signature_not_in_recording otherwise). The maker (the teller who created it) can never be the
checker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.canonical import canonical_json
from recorder.seal.digest import sha256_hex
from recorder.seal.manifest import format_timestamp
from recorder.seal.signing import Signer
from server.audit.log import AuditLog
from server.auth.principal import Principal, Role
from server.crypto.rows import RowSealer, SealedRow
from server.db.engine import DbSession
from server.db.models import (
    CallSession,
    SessionEvent,
    Transaction,
    TransactionDecision,
    new_id,
    utcnow,
)
from server.errors import ApiError, Rule, invalid
from server.recording.room import Audience
from server.signaling.protocol import server_message
from server.workflow.transactions.approvals import approval_record, sign_approval
from server.workflow.transactions.config import WorkflowConfig
from server.workflow.transactions.request import (
    Purchase,
    Service,
    canonical_transaction,
    transaction_sha256,
)
from server.workflow.transactions.rules import CheckResult, Facts, evaluate, gather_facts
from server.workflow.transactions.signatures import SignatureRejected, validate_signature
from server.workflow.transactions.views import customer_view, staff_view

OPEN_STATES = ("awaiting_signature", "signed", "awaiting_override", "awaiting_second_approval")
SIGNABLE_STATES = ("awaiting_signature", "signed", "awaiting_override")
# What a supervisor's queue shows.
SUPERVISOR_STATES = ("awaiting_override", "awaiting_second_approval")

# (session id, transaction id, its sha256, the signature image's sha256, the image) -> archive id
Bind = Callable[[str, str, str, str, bytes], Awaitable[str | None]]
# (archive id, its sealed manifest's sha256, transaction id) -> the signature's sha256 that manifest
# binds for the transaction, None if none (bindings.RecordedSignatures.bound)
Bound = Callable[[str, str, str], Awaitable[str | None]]
Notify = Callable[[str, dict[str, Any], Audience], Awaitable[None]]


class ChecksFailed(ApiError):
    """Approval refused: which checks fail, and what to do about each."""

    def __init__(self, message: str, checks: list[CheckResult]) -> None:
        super().__init__(409, "checks_failed", message)
        self.checks = checks


@dataclass(frozen=True)
class Decided:
    """The outcome of an approval step; `signed_record` is set once finally approved."""

    row: Transaction
    checks: list[CheckResult]
    signed_record: dict[str, Any] | None


def _aad(signature_id: str, transaction_id: str) -> bytes:
    return f"vteller/signature/v1\x00{signature_id}\x00{transaction_id}".encode()


def _conflict(row: Transaction, what: str) -> ApiError:
    return ApiError(409, "wrong_state", f"The transaction is {row.state}; it cannot {what} now.")


def _signature_changed() -> ApiError:
    return ApiError(
        409,
        "signature_changed",
        "The customer signed again while this request was under way: reload the transaction, "
        "check its new signature and try again.",
    )


class Transactions:
    def __init__(
        self,
        db: async_sessionmaker[DbSession],
        config: WorkflowConfig,
        signer: Signer,
        audit: AuditLog,
        keyring_path: Path,
        bind: Bind,
        notify: Notify,
        bound: Bound,
    ) -> None:
        self._db = db
        self.config = config
        self._signer = signer
        self._audit = audit
        self._sealer = RowSealer(keyring_path)
        self._bind = bind
        self._notify = notify
        self._bound = bound
        # Per transaction: one signing at a time binds into the recording and writes the row.
        self._signing: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- reading -------------------------------------------------------------------------------

    async def get(self, transaction_id: str) -> Transaction:
        async with self._db() as db:
            row = await db.get(Transaction, transaction_id)
        if row is None:
            raise ApiError(404, "unknown_transaction", "There is no such transaction.")
        return row

    async def for_session(self, session_id: str) -> list[Transaction]:
        async with self._db() as db:
            query = select(Transaction).where(Transaction.session_id == session_id)
            return list(await db.scalars(query.order_by(Transaction.created_at)))

    async def awaiting_supervisor(self) -> list[Transaction]:
        async with self._db() as db:
            query = select(Transaction).where(Transaction.state.in_(SUPERVISOR_STATES))
            return list(await db.scalars(query.order_by(Transaction.created_at)))

    async def decisions(self, transaction_id: str) -> list[TransactionDecision]:
        async with self._db() as db:
            query = select(TransactionDecision).where(
                TransactionDecision.transaction_id == transaction_id
            )
            return list(await db.scalars(query.order_by(TransactionDecision.id)))

    async def checks(self, row: Transaction) -> list[CheckResult]:
        """The checks as a decision would judge them now, for the pages. While a decision is
        still possible, that includes whether the sealed recording binds the signature: a
        decision refuses before its checks otherwise, and the page must not show all passing."""
        async with self._db() as db:
            facts = await gather_facts(db, row, self.config)
        results = evaluate(facts)
        if row.state in OPEN_STATES and facts.archive_id and facts.manifest_sha256:
            try:
                await self._same_signature_as_recorded(row, facts.archive_id, facts.manifest_sha256)
            except ApiError as exc:
                results.append(CheckResult("recording_signature", False, exc.code, exc.message))
            else:
                message = "The sealed recording binds this very signature."
                results.append(CheckResult("recording_signature", True, "bound", message))
        return results

    async def signature_png(self, row: Transaction) -> bytes:
        if (
            row.signature_id is None
            or row.signature_key_id is None
            or row.signature_wrapped_key is None
            or row.signature_sealed is None
        ):
            raise ApiError(404, "not_signed", "The customer has not signed this transaction.")
        sealed = SealedRow(row.signature_key_id, row.signature_wrapped_key, row.signature_sealed)
        return await asyncio.to_thread(
            self._sealer.open, uuid.UUID(row.signature_id), _aad(row.signature_id, row.id), sealed
        )

    def needs_second_approval(self, row: Transaction) -> bool:
        if row.kind != "purchase" or row.amount_minor is None or row.currency is None:
            return False
        threshold = self.config.second_approval_above_minor.get(row.currency)
        return threshold is None or row.amount_minor > threshold

    # -- the teller ----------------------------------------------------------------------------

    async def create(
        self, session: CallSession, teller: Principal, request: Purchase | Service
    ) -> Transaction:
        assert teller.user_id is not None
        if isinstance(request, Purchase):
            if request.amount.currency not in self.config.currencies:
                raise invalid(
                    "transaction.amount.currency",
                    Rule.CHOICE,
                    f"{request.amount.currency} is not accepted; "
                    f"use one of {', '.join(self.config.currencies)}.",
                )
            if request.amount.minor > self.config.max_amount_minor:
                raise invalid(
                    "transaction.amount.minor",
                    Rule.RANGE,
                    "larger than this service accepts "
                    f"({self.config.max_amount_minor} minor units).",
                )
        row = Transaction(
            id=new_id("t"), session_id=session.id, created_by=teller.user_id, created_at=utcnow()
        )
        document = canonical_transaction(
            request, row.id, session.id, teller.user_id, row.created_at
        )
        row.kind = request.kind
        row.content = canonical_json(document).decode("utf-8")
        row.sha256 = transaction_sha256(document)
        row.state = "awaiting_signature"
        if isinstance(request, Purchase):
            row.product_type = request.product_type
            row.amount_minor = request.amount.minor
            row.currency = request.amount.currency
        await self._log(
            "transaction.created",
            row,
            teller.user_id,
            teller.role,
            kind=row.kind,
            product_type=row.product_type,
            amount_minor=row.amount_minor,
            currency=row.currency,
            sha256=row.sha256,
        )
        async with self._db() as db, db.begin():
            db.add(row)
        await self._announce(row)
        return row

    # -- the customer --------------------------------------------------------------------------

    async def sign(self, row: Transaction, customer: Principal, png: bytes) -> Transaction:
        assert customer.participant_id is not None
        if row.state not in SIGNABLE_STATES:
            raise _conflict(row, "be signed")
        # The customer's credential already stops working with the session; this holds even for
        # a request that was admitted just before the session ended.
        async with self._db() as db:
            session_state = await db.scalar(
                select(CallSession.state).where(CallSession.id == row.session_id)
            )
        if session_state == "ended":
            raise ApiError(
                409,
                "session_ended",
                "The video session has ended, so this transaction can no longer be signed; the "
                "teller can start a new session.",
            )
        try:
            signature = await asyncio.to_thread(validate_signature, png, self.config)
        except SignatureRejected as exc:
            raise ApiError(400, exc.code, str(exc)) from exc
        signature_id = str(uuid.uuid4())
        sealed = await asyncio.to_thread(
            self._sealer.seal, uuid.UUID(signature_id), _aad(signature_id, row.id), png
        )
        # The manifest keeps the last binding it was given and the row the last write: two
        # signings interleaved between the two would leave them naming different signatures. Only
        # the worker hosting the session's room binds, so a lock here orders every signing that
        # binds; one signing elsewhere (bound to no recording) loses the row's compare-and-set.
        # A signing that finds the signature changed since its request read the row refuses
        # before binding, so the loser never replaces the winner's binding.
        lock = self._signing.setdefault(row.id, asyncio.Lock())
        async with lock:
            async with self._db() as db:
                current = await db.scalar(
                    select(Transaction.signature_id).where(Transaction.id == row.id)
                )
            if current != row.signature_id:
                raise _signature_changed()
            await self._log(
                "transaction.signed",
                row,
                customer.participant_id,
                customer.role,
                sha256=row.sha256,
                signature_sha256=signature.sha256,
            )
            # Into the running recording's manifest, if one runs: the approval rules need it.
            archive_id = await self._bind(row.session_id, row.id, row.sha256, signature.sha256, png)
            values = {
                "state": "signed",
                "signature_id": signature_id,
                "signature_sha256": signature.sha256,
                "signature_key_id": sealed.key_id,
                "signature_wrapped_key": sealed.wrapped_key,
                "signature_sealed": sealed.sealed,
                "signed_at": utcnow(),
                "signed_in_archive_id": archive_id,
            }
            fresh = await self._transition(row, SIGNABLE_STATES, values, "be signed")
        async with self._db() as db, db.begin():
            # The session's own record shows the signature too (its hash, never the image).
            db.add(
                SessionEvent(
                    session_id=row.session_id,
                    participant_id=customer.participant_id,
                    type="transaction_signed",
                    detail={
                        "transaction_id": row.id,
                        "sha256": row.sha256,
                        "signature_sha256": signature.sha256,
                        "archive_id": archive_id,
                    },
                )
            )
        await self._announce(fresh)
        return fresh

    # -- approvals -----------------------------------------------------------------------------

    async def approve(self, row: Transaction, principal: Principal) -> Decided:
        if principal.role is Role.TELLER:
            return await self._maker_approves(row, principal)
        return await self._checker_approves(row, principal)

    async def _maker_approves(self, row: Transaction, teller: Principal) -> Decided:
        assert teller.user_id is not None
        if teller.user_id != row.created_by:
            raise ApiError(403, "forbidden", "Only the teller who created it approves it first.")
        if row.state not in SIGNABLE_STATES:
            raise _conflict(row, "be approved by the teller")
        facts, checks = await self._judge(row)
        failed = [c for c in checks if not c.passed]
        if failed:
            overridable = all(c.check in self.config.overridable_checks for c in failed)
            if overridable and row.state == "signed":
                await self._to_supervisor(row, teller, checks, ("signed",), "awaiting_override")
            raise ChecksFailed(
                "The transaction cannot be approved yet"
                + (": a supervisor may override with a reason." if overridable else "."),
                checks,
            )
        if self.needs_second_approval(row):
            row = await self._to_supervisor(
                row, teller, checks, ("signed", "awaiting_override"), "awaiting_second_approval"
            )
            return Decided(row, checks, None)
        maker = self._decision(row, teller, "maker", None, checks)
        return await self._finish(row, maker, facts, checks, ("signed", "awaiting_override"))

    async def _to_supervisor(
        self,
        row: Transaction,
        teller: Principal,
        checks: list[CheckResult],
        states: tuple[str, ...],
        state: str,
    ) -> Transaction:
        """The maker's approval that leaves the final word to a supervisor. A final approval is
        logged by `_finish` instead (`transaction.approved`, with the maker's step)."""
        assert teller.user_id is not None
        await self._log(
            "transaction.maker_approved",
            row,
            teller.user_id,
            teller.role,
            sha256=row.sha256,
            state=state,
            failing=[c.check for c in checks if not c.passed],
        )
        maker = self._decision(row, teller, "maker", None, checks)
        fresh = await self._transition(
            row, states, {"state": state}, "wait for a supervisor", maker
        )
        await self._announce(fresh)
        return fresh

    async def _checker_approves(self, row: Transaction, supervisor: Principal) -> Decided:
        await self._not_the_maker(row, supervisor)
        # Also from awaiting_override: the checks that failed for the teller may pass by now.
        if row.state not in SUPERVISOR_STATES:
            raise _conflict(row, "take a supervisor's approval")
        facts, checks = await self._judge(row)
        if not all(c.passed for c in checks):
            raise ChecksFailed("A check does not pass: override with a reason or reject.", checks)
        checker = self._decision(row, supervisor, "checker", None, checks)
        return await self._finish(row, checker, facts, checks, SUPERVISOR_STATES)

    async def override(self, row: Transaction, supervisor: Principal, reason: str) -> Decided:
        await self._not_the_maker(row, supervisor)
        if len(reason) < self.config.override_reason_min_chars:
            raise ApiError(
                400,
                "reason_too_short",
                f"Write why the failed checks are overridden (at least "
                f"{self.config.override_reason_min_chars} characters).",
            )
        if row.state not in SUPERVISOR_STATES:
            raise _conflict(row, "be overridden")
        facts, checks = await self._judge(row)
        failed = [c for c in checks if not c.passed]
        if not failed:
            raise ApiError(409, "nothing_to_override", "Every check passes: approve instead.")
        fixed = [c for c in failed if c.check not in self.config.overridable_checks]
        if fixed:
            raise ChecksFailed("These checks can never be overridden.", checks)
        assert supervisor.user_id is not None
        await self._log(
            "transaction.overridden",
            row,
            supervisor.user_id,
            supervisor.role,
            checks=[c.check for c in failed],
            reason=reason,
        )
        overrider = self._decision(row, supervisor, "override", reason, checks)
        return await self._finish(row, overrider, facts, checks, SUPERVISOR_STATES)

    async def reject(self, row: Transaction, principal: Principal, reason: str) -> Transaction:
        assert principal.user_id is not None
        if row.state not in OPEN_STATES:
            raise _conflict(row, "be rejected")
        await self._log(
            "transaction.rejected", row, principal.user_id, principal.role, reason=reason
        )
        fresh = await self._transition(
            row,
            OPEN_STATES,
            {"state": "rejected", "decided_at": utcnow()},
            "be rejected",
            self._decision(row, principal, "reject", reason, []),
            # Whichever signature it holds, a rejected transaction is not carried out.
            same_signature=False,
        )
        await self._announce(fresh)
        return fresh

    # -- internals -----------------------------------------------------------------------------

    async def _log(
        self, action: str, row: Transaction, actor: str, role: Role, **detail: Any
    ) -> None:
        """An audit entry about the transaction; each names the session it was made in."""
        await self._audit.append(
            action,
            actor=actor,
            actor_role=role.value,
            target=row.id,
            detail={"session_id": row.session_id, **detail},
        )

    async def _judge(self, row: Transaction) -> tuple[Facts, list[CheckResult]]:
        async with self._db() as db:
            facts = await gather_facts(db, row, self.config)
        if facts.archive_id is not None and facts.manifest_sha256 is not None:
            await self._same_signature_as_recorded(row, facts.archive_id, facts.manifest_sha256)
        return facts, evaluate(facts)

    async def _same_signature_as_recorded(
        self, row: Transaction, archive_id: str, manifest_sha256: str
    ) -> None:
        """The approval record names the recording's manifest as the proof of what the customer
        signed: that manifest must bind the signature the row holds (the signing lock keeps the
        two equal, on the one worker that binds; this does not rely on it)."""
        recorded = await self._bound(archive_id, manifest_sha256, row.id)
        if recorded == row.signature_sha256:
            return
        raise ApiError(
            409,
            "signature_not_in_recording",
            f"The sealed recording {archive_id} does not bind the signature this transaction "
            f"holds (it binds {'none' if recorded is None else 'another one'} for it), so it "
            "does not prove what the customer signed: have the customer sign again during a "
            "new dual recording and stop it, then approve (a transaction awaiting a second "
            "approval cannot be signed again: reject it and create it anew).",
        )

    async def _not_the_maker(self, row: Transaction, supervisor: Principal) -> None:
        if supervisor.user_id == row.created_by or any(
            d.user_id == supervisor.user_id for d in await self.decisions(row.id)
        ):
            raise ApiError(
                403,
                "four_eyes",
                "You already acted on this transaction; a different supervisor must decide.",
            )

    @staticmethod
    def _decision(
        row: Transaction,
        principal: Principal,
        step: str,
        reason: str | None,
        checks: list[CheckResult],
    ) -> TransactionDecision:
        """A decision, stored by `_transition` only together with the state change it makes."""
        assert principal.user_id is not None
        return TransactionDecision(
            transaction_id=row.id,
            step=step,
            user_id=principal.user_id,
            role=principal.role.value,
            reason=reason,
            checks={c.check: c.passed for c in checks},
            at=utcnow(),
        )

    async def _finish(
        self,
        row: Transaction,
        decision: TransactionDecision,
        facts: Facts,
        checks: list[CheckResult],
        states: tuple[str, ...],
    ) -> Decided:
        approved_at = utcnow()
        # This decision is not stored yet: should the log refuse it, no row remains to count
        # against four eyes on a retry or to show up in a later round's signed record.
        steps = [*await self.decisions(row.id), decision]
        # The round that approved: from the maker's last approval (an earlier one may have been
        # refused by the checks) to the checker's or overrider's decision.
        last_maker = max(i for i, d in enumerate(steps) if d.step == "maker")
        decisions = [
            {
                "step": d.step,
                "user_id": d.user_id,
                "role": d.role,
                "at": format_timestamp(d.at),
                **({"reason": d.reason} if d.reason is not None else {}),
            }
            for d in steps[last_maker:]
        ]
        assert row.signature_sha256 is not None and row.signed_at is not None
        record = approval_record(
            json.loads(row.content),
            facts,
            {"image_sha256": row.signature_sha256, "signed_at": format_timestamp(row.signed_at)},
            checks,
            decisions,
            approved_at,
            self._signer.key_id,
        )
        signed = await asyncio.to_thread(sign_approval, record, self._signer)
        await self._log(
            "transaction.approved",
            row,
            decisions[-1]["user_id"],
            Role(decisions[-1]["role"]),
            sha256=row.sha256,
            manifest_sha256=facts.manifest_sha256,
            record_sha256=sha256_hex(canonical_json(record)),
            steps=[d["step"] for d in decisions],
        )
        fresh = await self._transition(
            row,
            states,
            {
                "state": "approved",
                "decided_at": approved_at,
                "approval_record": canonical_json(record).decode("utf-8"),
                "approval_signature": signed["signature"],
            },
            "be approved",
            decision,
        )
        await self._announce(fresh)
        return Decided(fresh, checks, signed)

    async def _transition(
        self,
        row: Transaction,
        states: tuple[str, ...],
        values: dict[str, Any],
        what: str,
        decision: TransactionDecision | None = None,
        *,
        same_signature: bool = True,
    ) -> Transaction:
        """Compare-and-set from `states`; with `same_signature`, only while the row still holds
        the signature `row` held when the caller judged it (None: still unsigned)."""
        guard = [Transaction.id == row.id, Transaction.state.in_(states)]
        if same_signature:
            guard.append(
                Transaction.signature_id.is_(None)
                if row.signature_id is None
                else Transaction.signature_id == row.signature_id
            )
        async with self._db() as db, db.begin():
            result = await db.execute(update(Transaction).where(*guard).values(**values))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                now = await db.get(Transaction, row.id, populate_existing=True)
                assert now is not None
                if same_signature and now.signature_id != row.signature_id:
                    raise _signature_changed()
                raise _conflict(now, what)
            # In the same database transaction: a decision is there exactly when its state
            # change is, so whoever loses a race leaves nothing behind either.
            if decision is not None:
                db.add(decision)
            fresh = await db.get(Transaction, row.id, populate_existing=True)
        assert fresh is not None
        return fresh

    async def _announce(self, row: Transaction) -> None:
        """Push the new state to the session's staff and customer (live on this worker)."""
        staff = server_message("transaction", transaction=staff_view(row))
        await self._notify(row.session_id, staff, "staff")
        customer = server_message("transaction", transaction=customer_view(row))
        await self._notify(row.session_id, customer, "customer")
