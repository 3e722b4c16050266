"""The JSON shapes of docs/protocol.md section 1.2 (User, Session, Participant, Event, Chat)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.auth.principal import Role
from server.db.models import CallSession, ChatMessage, Participant, SessionEvent, User


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
    }


def participant_view(participant: Participant) -> dict[str, Any]:
    return {
        "id": participant.id,
        "role": participant.role,
        "display_name": participant.display_name,
        "state": participant.state,
        "joined_at": _time(participant.joined_at),
        "left_at": _time(participant.left_at),
    }


def session_view(session: CallSession, viewer_role: Role) -> dict[str, Any]:
    participants = [
        participant_view(p)
        for p in session.participants
        # Supervisors observe silently: a customer is never shown them.
        if not (viewer_role is Role.CUSTOMER and p.role == Role.SUPERVISOR.value)
    ]
    return {
        "id": session.id,
        "business": session.business,
        "state": session.state,
        # A customer (anyone, through the public queue) sees the teller's name, never the
        # staff login, which would let them lock the account with failed logins.
        "teller": {"display_name": session.teller.display_name}
        if viewer_role is Role.CUSTOMER
        else user_view(session.teller),
        "customer_name": session.customer_name,
        "created_at": _time(session.created_at),
        "started_at": _time(session.started_at),
        "ended_at": _time(session.ended_at),
        "participants": participants,
        "ws_url": ws_url(session),
    }


def ws_url(session: CallSession) -> str:
    """Where the session's signaling lives: on the worker that hosts it."""
    path = f"/ws/v1/sessions/{session.id}"
    if session.worker is None:
        return path
    return session.worker.url.replace("http", "ws", 1) + path


def event_view(event: SessionEvent) -> dict[str, Any]:
    return {
        "type": event.type,
        "participant_id": event.participant_id,
        "at": _time(event.at),
        "detail": event.detail,
    }


def chat_view(message: ChatMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "participant_id": message.participant_id,
        "sender_name": message.participant.display_name,
        "role": message.participant.role,
        "text": message.text,
        "sent_at": _time(message.sent_at),
    }
