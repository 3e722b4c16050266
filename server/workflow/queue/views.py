"""The JSON shapes of the queue API (docs/workflow-queue.md section 3).

Customers see their own ticket; staff see tickets without anything personal, callbacks with the
phone number masked to its last four digits, and tellers by status and skills.
"""

from __future__ import annotations

from typing import Any

from server.db.models import QueueCallback, QueueTicket
from server.sessions.views import user_view
from server.workflow.queue.estimate import Estimate, HandlingTime
from server.workflow.queue.phone import mask
from server.workflow.queue.service import Standing, TellerState, waited_seconds


def handling_view(handling: HandlingTime) -> dict[str, Any]:
    return {"seconds": handling.seconds, "samples": handling.samples}


def estimate_view(estimate: Estimate) -> dict[str, Any]:
    return {
        "seconds": estimate.seconds,
        "tellers": estimate.tellers,
        "handling": handling_view(estimate.handling),
    }


def _ticket_fields(ticket: QueueTicket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "topic": ticket.topic,
        "business": ticket.business,
        "elderly": ticket.elderly,
        "state": ticket.state,
    }


def customer_ticket_view(
    ticket: QueueTicket,
    standing: Standing | None,
    join_url: str | None,
    callback: QueueCallback | None,
) -> dict[str, Any]:
    return {
        **_ticket_fields(ticket),
        "created_at": ticket.created_at.isoformat(),
        "position": standing.position if standing else None,
        "estimate": estimate_view(standing.estimate) if standing else None,
        "join_url": join_url,
        "callback_phone": mask(callback.phone_hint) if callback else None,
    }


def staff_ticket_view(ticket: QueueTicket, names: dict[str, str]) -> dict[str, Any]:
    return {
        **_ticket_fields(ticket),
        "waited_seconds": waited_seconds(ticket.created_at),
        "assigned_to": ticket.assigned_to,
        "assigned_name": names.get(ticket.assigned_to or ""),
    }


def callback_view(callback: QueueCallback, names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": callback.id,
        "business": callback.business,
        "elderly": callback.elderly,
        "state": callback.state,
        "phone": mask(callback.phone_hint),
        "waited_seconds": waited_seconds(callback.created_at),
        "claimed_by": callback.claimed_by,
        "claimed_name": names.get(callback.claimed_by or ""),
    }


def teller_view(state: TellerState) -> dict[str, Any]:
    return {
        "user": user_view(state.user),
        "status": state.status,
        "skills": state.skills,
        "current_session_id": state.current_session_id,
    }
