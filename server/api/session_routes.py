"""Invitations, session lists and details, experts, ending a session."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp import web

from server.api.access import require
from server.api.bodies import ExpertBody, InvitationBody, parse
from server.auth.principal import Role
from server.context import services
from server.db.models import new_id, utcnow
from server.errors import ApiError, Rule, forbidden, invalid
from server.recording import script as sales_script
from server.sessions.views import (
    chat_view,
    event_view,
    participant_view,
    session_view,
    user_view,
)
from server.signaling.protocol import ProtocolError

routes = web.RouteTableDef()


@routes.post("/api/v1/invitations")
async def create_invitation(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="invite customers")
    body = await parse(request, InvitationBody)
    svc = services(request)
    ttl = timedelta(minutes=body.ttl_minutes or svc.settings.invitation_ttl_minutes)
    session_id, expires_at = new_id("s"), utcnow() + ttl
    await svc.workers.check_room()  # every worker full: refused before anything is logged
    # Logged first: a session created and then refused by the log would stay in the list.
    await svc.audit.append(
        "invitation.created",
        actor=teller.user_id or "",
        actor_role=teller.role.value,
        target=session_id,
        detail={"business": body.business, "expires_at": expires_at.isoformat()},
        address=request.remote,
    )
    created = await svc.sessions.create_invitation(
        teller, body.business, body.customer_name, expires_at, svc.workers, session_id
    )
    return web.json_response(
        {
            "session": session_view(created.session, teller.role),
            "invitation_url": f"{svc.settings.origin}/join/{created.token}",
            "expires_at": created.expires_at.isoformat(),
        },
        status=201,
    )


@routes.get("/api/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    principal = await require(
        request, Role.TELLER, Role.EXPERT, Role.SUPERVISOR, action="list sessions"
    )
    sessions = await services(request).sessions.visible_to(principal)
    return web.json_response({"sessions": [session_view(s, principal.role) for s in sessions]})


@routes.get("/api/v1/sessions/{session_id}")
async def session_detail(request: web.Request) -> web.Response:
    principal = await require(
        request, Role.TELLER, Role.EXPERT, Role.SUPERVISOR, action="view sessions"
    )
    store = services(request).sessions
    session = await store.require(request.match_info["session_id"])
    if not await store.can_view(principal, session):
        raise forbidden("view this session")
    events = await store.events(session.id)
    chat = await store.chat(session.id)
    # Each read is its own snapshot: reading the session again after its events means a client
    # that sees it moved (session_interrupted) also sees the worker it moved to (ws_url).
    session = await store.require(session.id)
    return web.json_response(
        {
            "session": session_view(session, principal.role),
            "events": [event_view(e) for e in events],
            "chat": [chat_view(m) for m in chat],
        }
    )


@routes.get("/api/v1/sessions/{session_id}/script")
async def session_script(request: web.Request) -> web.Response:
    """The sales script the session's recording will follow, for the teller to read from."""
    principal = await require(
        request, Role.TELLER, Role.EXPERT, Role.SUPERVISOR, action="view sessions"
    )
    svc = services(request)
    session = await svc.sessions.require(request.match_info["session_id"])
    if not await svc.sessions.can_view(principal, session):
        raise forbidden("view this session")
    settings = svc.settings
    try:
        script = await asyncio.to_thread(
            sales_script.choose,
            session.business,
            request.query.get("script"),
            settings.compliance_scripts_dir,
        )
    except ProtocolError as exc:
        raise ApiError(404, "unknown_script", exc.message) from exc
    values = sales_script.known_values(session, settings.bank_name)
    return web.json_response({"script": sales_script.view(script, values)})


@routes.post("/api/v1/sessions/{session_id}/experts")
async def invite_expert(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="invite experts")
    body = await parse(request, ExpertBody)
    svc = services(request)
    participant = await svc.sessions.new_expert(
        teller, request.match_info["session_id"], body.username
    )
    # Logged before the row exists: with the row the expert already sees the session and may join.
    await svc.audit.append(
        "expert.invited",
        actor=teller.user_id or "",
        actor_role=teller.role.value,
        target=participant.session_id,
        address=request.remote,
        detail={"expert_user_id": participant.user_id, "participant_id": participant.id},
    )
    await svc.sessions.add_expert(teller, participant)
    return web.json_response({"participant": participant_view(participant)}, status=201)


@routes.post("/api/v1/sessions/{session_id}/end")
async def end_session(request: web.Request) -> web.Response:
    principal = await require(request, Role.TELLER, Role.CUSTOMER, action="end sessions")
    svc = services(request)
    session = await svc.sessions.require(request.match_info["session_id"])
    participant = await svc.sessions.participant_for(principal, session)
    if participant.role not in (Role.TELLER.value, Role.CUSTOMER.value):
        raise forbidden("end this session")
    if session.state == "ended":
        raise ApiError(410, "session_ended", "This session has already ended.")
    ended = await svc.rooms.end_session(session.id, by=participant.id)
    return web.json_response({"session": session_view(ended, principal.role)})


@routes.get("/api/v1/staff")
async def list_staff(request: web.Request) -> web.Response:
    await require(request, Role.TELLER, action="list staff")
    role = request.query.get("role", Role.EXPERT.value)
    if role != Role.EXPERT.value:
        raise invalid("role", Rule.CHOICE, "only experts can be listed here.")
    staff = await services(request).sessions.staff(Role.EXPERT)
    return web.json_response({"staff": [user_view(u) for u in staff]})
