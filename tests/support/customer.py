"""What the database holds about a session's customer, beyond identity records: written the way
the server writes it, and read back column by column, for tests of its erasure at the end of
retention (server/auditor/purge.py)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.canonical import canonical_json
from server.db import models
from server.db.engine import DbSession
from server.workflow.transactions import request as tx
from tests.support.database import TELLER_ID

CUSTOMER_NAME = "李小龙"
TELLER_NAME = "王柜员"
ACCOUNT = "6222020200112233445"
NEW_ADDRESS = "北京市朝阳区建国路88号"
CHAT = f"我的手机号是13800138000，地址{NEW_ADDRESS}"
NOTE = f"{CUSTOMER_NAME}听完风险提示后才确认"
REASON = f"{CUSTOMER_NAME}的身份已在柜台当面核实"
PHONE_HINT = "8000"


@dataclass(frozen=True)
class Paper:
    """One transaction of the session as the database holds it now."""

    state: str
    content: dict[str, Any]
    sha256: str
    amount_minor: int | None
    signature_sha256: str | None
    signature_sealed: bytes | None
    approval_record: str | None
    approval_signature: str | None
    reasons: list[str | None]
    delivery: tuple[str, str, str | None] | None  # state, body, last_error


@dataclass(frozen=True)
class CustomerData:
    customer_name: str
    participants: list[tuple[str, str]]  # (role, display name)
    chat: list[str]
    notes: list[str | None]
    callbacks: list[tuple[str, bytes | None]]  # (phone hint, sealed phone number)
    transactions: dict[str, Paper]  # by what `add_customer_data` calls them


async def add_customer_data(
    db: async_sessionmaker[DbSession], session_id: str, archive_id: str | None = None
) -> None:
    """Into the existing session `session_id`: the invitation's name, the customer and the teller
    as participants with a chat message each, a queue ticket the customer took with a callback,
    a compliance review with a note (of `archive_id`, if given), and three signed transactions:
    `purchase` approved and delivered, `service` (a change of address) approved and still being
    delivered, `rejected` rejected with a reason."""
    async with db() as session, session.begin():
        call = await session.get(models.CallSession, session_id)
        assert call is not None
        call.customer_name = CUSTOMER_NAME
        customer = models.Participant(
            session_id=session_id, role="customer", display_name=CUSTOMER_NAME
        )
        teller = models.Participant(
            session_id=session_id, role="teller", user_id=TELLER_ID, display_name=TELLER_NAME
        )
        ticket = models.QueueTicket(
            token_hash=models.new_id("h"),
            invitation_hash=models.new_id("h"),
            csrf_token="csrf",
            topic="wealth",
            business="wealth",
            state="taken",
            session_id=session_id,
        )
        session.add_all([customer, teller, ticket])
        await session.flush()
        session.add_all(
            [
                models.ChatMessage(session_id=session_id, participant_id=customer.id, text=CHAT),
                models.ChatMessage(session_id=session_id, participant_id=teller.id, text="请稍等"),
                models.QueueCallback(
                    id=str(uuid.uuid4()),
                    ticket_id=ticket.id,
                    business="wealth",
                    phone_hint=PHONE_HINT,
                    key_id="k",
                    wrapped_key=b"w",
                    sealed=b"sealed phone number",
                ),
            ]
        )
        if archive_id is not None:
            session.add(
                models.ComplianceReview(
                    archive_id=archive_id, session_id=session_id, moment="risk", note=NOTE
                )
            )
        requests: dict[str, tx.Purchase | tx.Service] = {
            "purchase": tx.Purchase.model_validate(
                {
                    "kind": "purchase",
                    "product_type": "wealth",
                    "product_code": "WM-2025-01",
                    "product_name": "稳健理财1号",
                    "amount": {"minor": 5_000_000, "currency": "CNY"},
                    "account": ACCOUNT,
                }
            ),
            "service": tx.Service.model_validate(
                {
                    "kind": "service",
                    "service": "personal_details_update",
                    "account": ACCOUNT,
                    "details": {"address": NEW_ADDRESS},
                }
            ),
            "rejected": tx.Purchase.model_validate(
                {
                    "kind": "purchase",
                    "product_type": "fund",
                    "product_code": "F-1",
                    "amount": {"minor": 100, "currency": "CNY"},
                    "account": ACCOUNT,
                }
            ),
        }
        for name, request in requests.items():
            transaction_id, now = f"t_{session_id}_{name}", models.utcnow()
            document = tx.canonical_transaction(request, transaction_id, session_id, TELLER_ID, now)
            approved = name != "rejected"
            record = {"transaction": document, "customer": CUSTOMER_NAME}
            session.add(
                models.Transaction(
                    id=transaction_id,
                    session_id=session_id,
                    kind=request.kind,
                    amount_minor=request.amount.minor if isinstance(request, tx.Purchase) else None,
                    currency="CNY" if isinstance(request, tx.Purchase) else None,
                    content=canonical_json(document).decode("utf-8"),
                    sha256=tx.transaction_sha256(document),
                    state="approved" if approved else "rejected",
                    created_by=TELLER_ID,
                    signature_id=str(uuid.uuid4()),
                    signature_sha256="c" * 64,
                    signature_key_id="k",
                    signature_wrapped_key=b"w",
                    signature_sealed=b"sealed signature image",
                    signed_at=now,
                    approval_record=json.dumps(record) if approved else None,
                    approval_signature="sig" if approved else None,
                    decided_at=now,
                )
            )
            await session.flush()
            session.add(
                models.TransactionDecision(
                    transaction_id=transaction_id,
                    step="checker" if approved else "reject",
                    user_id=TELLER_ID,
                    role="supervisor",
                    reason=None if name == "purchase" else REASON,
                )
            )
            if approved:
                delivered = name == "purchase"
                session.add(
                    models.WebhookDelivery(
                        transaction_id=transaction_id,
                        event_type="transaction.approved",
                        body=json.dumps({"record": record}),
                        event_sha256="e" * 64,
                        state="delivered" if delivered else "pending",
                        next_attempt_at=None if delivered else now,
                        delivered_at=now if delivered else None,
                    )
                )


async def customer_data(db: async_sessionmaker[DbSession], session_id: str) -> CustomerData:
    """The columns `add_customer_data` filled, as they are now."""
    async with db() as session:
        call = await session.get(models.CallSession, session_id)
        assert call is not None
        participants = await session.scalars(
            select(models.Participant)
            .where(models.Participant.session_id == session_id)
            .order_by(models.Participant.role)
        )
        chat = await session.scalars(
            select(models.ChatMessage.text)
            .where(models.ChatMessage.session_id == session_id)
            .order_by(models.ChatMessage.id)
        )
        notes = await session.scalars(
            select(models.ComplianceReview.note).where(
                models.ComplianceReview.session_id == session_id
            )
        )
        callbacks = await session.execute(
            select(models.QueueCallback.phone_hint, models.QueueCallback.sealed)
            .join(models.QueueTicket, models.QueueTicket.id == models.QueueCallback.ticket_id)
            .where(models.QueueTicket.session_id == session_id)
        )
        transactions = {}
        for row in await session.scalars(
            select(models.Transaction).where(models.Transaction.session_id == session_id)
        ):
            reasons = await session.scalars(
                select(models.TransactionDecision.reason).where(
                    models.TransactionDecision.transaction_id == row.id
                )
            )
            delivery = await session.scalar(
                select(models.WebhookDelivery).where(
                    models.WebhookDelivery.transaction_id == row.id
                )
            )
            transactions[row.id.rsplit("_", 1)[1]] = Paper(
                row.state,
                json.loads(row.content),
                row.sha256,
                row.amount_minor,
                row.signature_sha256,
                row.signature_sealed,
                row.approval_record,
                row.approval_signature,
                list(reasons),
                (delivery.state, delivery.body, delivery.last_error) if delivery else None,
            )
        return CustomerData(
            call.customer_name,
            [(p.role, p.display_name) for p in participants],
            list(chat),
            list(notes),
            [(hint, sealed) for hint, sealed in callbacks],
            transactions,
        )
