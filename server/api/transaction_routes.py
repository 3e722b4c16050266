"""Transactions of a session: create, sign, approve, override, reject, and the supervisors' queue.

The customer's signature travels over HTTP (customer cookie + CSRF), not the signaling socket: the
answer to the upload is the place to say "blank, sign again", and a signature image may be larger
than a WebSocket message may be. docs/workflow.md has the API.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from server.api.access import require
from server.api.bodies import OverrideBody, RejectBody, TransactionBody, parse
from server.auth.principal import Principal, Role
from server.context import services
from server.db.models import CallSession, Transaction
from server.errors import ApiError, forbidden
from server.workflow.transactions.service import ChecksFailed, Decided
from server.workflow.transactions.views import approval_view, customer_view, staff_view
from server.workflow.webhooks.records import approval_event

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

READERS = (Role.TELLER, Role.EXPERT, Role.SUPERVISOR, Role.AUDITOR, Role.CUSTOMER)


async def _session_for(request: web.Request, principal: Principal, session_id: str) -> CallSession:
    """The session, if `principal` may see its transactions: its customer, its teller, experts
    invited into it, supervisors and auditors (admins never reach here: not a reader role)."""
    store = services(request).sessions
    session = await store.require(session_id)
    if principal.role is Role.TELLER:
        allowed = session.teller_id == principal.user_id
    elif principal.role is Role.AUDITOR:
        allowed = True
    else:
        allowed = await store.can_view(principal, session)
    if not allowed:
        raise forbidden("see this session's transactions")
    return session


async def _transaction(request: web.Request, principal: Principal) -> Transaction:
    row = await services(request).transactions.get(request.match_info["transaction_id"])
    await _session_for(request, principal, row.session_id)
    return row


async def _delivery(
    request: web.Request, row: Transaction, heal: bool = True
) -> dict[str, Any] | None:
    """The webhook delivery's status; `heal`: queue it if it never was (not for auditors,
    whose looking must not act)."""
    if row.state != "approved" or row.approval_record is None:
        return None
    webhooks = services(request).webhooks
    status = await webhooks.status(row.id)
    if status is None and heal:
        # Approved but never queued (the queueing failed after the approval was stored):
        # queueing is idempotent by transaction id, so it is simply done now.
        await webhooks.enqueue(row.id, approval_event(row))
        status = await webhooks.status(row.id)
    return status


async def _detail(request: web.Request, row: Transaction, principal: Principal) -> dict[str, Any]:
    transactions = services(request).transactions
    full = principal.role is Role.AUDITOR
    view = staff_view(row, full_account=full)
    view["needs_second_approval"] = transactions.needs_second_approval(row)
    view["checks"] = [c.to_dict() for c in await transactions.checks(row)]
    view["decisions"] = [
        {
            "step": d.step,
            "user_id": d.user_id,
            "role": d.role,
            "reason": d.reason,
            "at": d.at.isoformat(),
        }
        for d in await transactions.decisions(row.id)
    ]
    view["approval"] = (
        approval_view(approval_event(row), full_account=full)
        if row.approval_record is not None
        else None
    )
    view["delivery"] = await _delivery(request, row, heal=principal.role is not Role.AUDITOR)
    return view


@routes.post("/api/v1/sessions/{session_id}/transactions")
async def create_transaction(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="create transactions")
    session = await _session_for(request, teller, request.match_info["session_id"])
    if session.state == "ended":
        raise ApiError(409, "session_ended", "The session has ended; start a new one.")
    body = await parse(request, TransactionBody)
    row = await services(request).transactions.create(session, teller, body.transaction)
    return web.json_response({"transaction": await _detail(request, row, teller)}, status=201)


@routes.get("/api/v1/sessions/{session_id}/transactions")
async def list_transactions(request: web.Request) -> web.Response:
    principal = await require(request, *READERS, action="see transactions")
    session = await _session_for(request, principal, request.match_info["session_id"])
    rows = await services(request).transactions.for_session(session.id)
    if principal.role is Role.CUSTOMER:
        return web.json_response({"transactions": [customer_view(r) for r in rows]})
    full = principal.role is Role.AUDITOR
    return web.json_response({"transactions": [staff_view(r, full_account=full) for r in rows]})


@routes.get("/api/v1/transactions")
async def supervisor_queue(request: web.Request) -> web.Response:
    supervisor = await require(
        request, Role.SUPERVISOR, action="see transactions awaiting approval"
    )
    rows = await services(request).transactions.awaiting_supervisor()
    return web.json_response(
        {"transactions": [await _detail(request, r, supervisor) for r in rows]}
    )


@routes.get("/api/v1/transactions/{transaction_id}")
async def transaction_detail(request: web.Request) -> web.Response:
    principal = await require(request, *READERS, action="see transactions")
    row = await _transaction(request, principal)
    if principal.role is Role.CUSTOMER:
        return web.json_response({"transaction": customer_view(row)})
    return web.json_response({"transaction": await _detail(request, row, principal)})


@routes.get("/api/v1/transactions/{transaction_id}/signature.png")
async def signature_image(request: web.Request) -> web.Response:
    principal = await require(
        request, Role.TELLER, Role.SUPERVISOR, Role.AUDITOR, action="see signatures"
    )
    row = await _transaction(request, principal)
    svc = services(request)
    png = await svc.transactions.signature_png(row)
    if principal.role is Role.AUDITOR:
        # As with playback: an auditor sees the customer's decrypted data only on the record.
        # (The session's teller and supervisors see it in the course of their work.)
        assert principal.user_id is not None
        await svc.audit.append(
            "auditor.signature_viewed",
            actor=principal.user_id,
            actor_role=principal.role.value,
            target=row.id,
            detail={"session_id": row.session_id},
            address=request.remote,
        )
    return web.Response(
        body=png, content_type="image/png", headers={"Cache-Control": "no-store, private"}
    )


@routes.post("/api/v1/transactions/{transaction_id}/signature")
async def sign_transaction(request: web.Request) -> web.Response:
    customer = await require(request, Role.CUSTOMER, action="sign transactions")
    row = await _transaction(request, customer)
    transactions = services(request).transactions
    if request.content_type != "image/png":
        raise ApiError(
            415, "signature_not_png", "Send the signature as a PNG (Content-Type: image/png)."
        )
    png = await _read_capped(request, transactions.config.signature_max_bytes)
    fresh = await transactions.sign(row, customer, png)
    return web.json_response({"transaction": customer_view(fresh)})


async def _read_capped(request: web.Request, limit: int) -> bytes:
    # The app-wide body limit is for JSON; a signature may be larger, but never unbounded.
    too_large = ApiError(
        413, "signature_too_large", f"The signature image is larger than {limit} bytes."
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


def _decided(decided: Decided) -> dict[str, Any]:
    # Deciders are tellers and supervisors: the account masked, in the record too.
    signed = decided.signed_record
    return {
        "transaction": staff_view(decided.row),
        "checks": [c.to_dict() for c in decided.checks],
        "approval": approval_view(signed) if signed is not None else None,
    }


async def _handed_over(request: web.Request, decided: Decided) -> web.Response:
    body = _decided(decided)
    if decided.signed_record is not None:
        try:
            await services(request).webhooks.enqueue(decided.row.id, decided.signed_record)
        except Exception:
            # The approval stands (it is signed and logged); the next look at the transaction
            # queues it again (see _delivery), so nothing is lost.
            log.exception("webhook_enqueue_failed", transaction_id=decided.row.id)
        body["delivery"] = await _delivery(request, decided.row)
    return web.json_response(body)


@routes.post("/api/v1/transactions/{transaction_id}/approve")
async def approve_transaction(request: web.Request) -> web.Response:
    principal = await require(request, Role.TELLER, Role.SUPERVISOR, action="approve transactions")
    row = await _transaction(request, principal)
    try:
        decided = await services(request).transactions.approve(row, principal)
    except ChecksFailed as exc:
        return _refused(exc)
    return await _handed_over(request, decided)


@routes.post("/api/v1/transactions/{transaction_id}/override")
async def override_transaction(request: web.Request) -> web.Response:
    supervisor = await require(request, Role.SUPERVISOR, action="override approval checks")
    row = await _transaction(request, supervisor)
    body = await parse(request, OverrideBody)
    try:
        decided = await services(request).transactions.override(row, supervisor, body.reason)
    except ChecksFailed as exc:
        return _refused(exc)
    return await _handed_over(request, decided)


@routes.post("/api/v1/transactions/{transaction_id}/reject")
async def reject_transaction(request: web.Request) -> web.Response:
    principal = await require(request, Role.TELLER, Role.SUPERVISOR, action="reject transactions")
    row = await _transaction(request, principal)
    body = await parse(request, RejectBody)
    fresh = await services(request).transactions.reject(row, principal, body.reason)
    return web.json_response({"transaction": staff_view(fresh)})


def _refused(exc: ChecksFailed) -> web.Response:
    failing = [c.to_dict() for c in exc.checks if not c.passed]
    return web.json_response(
        {
            "error": {"code": exc.code, "message": exc.message},
            "checks": [c.to_dict() for c in exc.checks],
            "failing": failing,
        },
        status=exc.status,
    )
