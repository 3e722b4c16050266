"""The queue: the public entry page's ticket, tellers taking customers, the supervisor's dashboard.

The ticket endpoints need no login: they are limited per client address, and a ticket is reached
only through its credential (the `vteller_queue` cookie) and, for changes, the CSRF token issued
with it. Everything else is for staff, by role (docs/workflow-queue.md section 2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.api.access import check_csrf, check_origin, require
from server.api.bodies import (
    AssignBody,
    CallbackBody,
    QueueJoinBody,
    TellerSkillsBody,
    TellerStatusBody,
    parse,
)
from server.api.cookies import set_credential_cookie
from server.auth.principal import Principal, Role
from server.context import Services, services
from server.db.models import QueueCallback, QueueTicket
from server.errors import ApiError
from server.sessions.views import session_view
from server.workflow.queue.service import TellerState, invitation_token
from server.workflow.queue.views import (
    callback_view,
    customer_ticket_view,
    handling_view,
    staff_ticket_view,
    teller_view,
)

QUEUE_COOKIE = "vteller_queue"
COOKIE_PATH = "/api/v1/queue"

routes = web.RouteTableDef()


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


async def _ticket_response(
    svc: Services, ticket: QueueTicket, token: str, status: int = 200
) -> web.Response:
    standing = await svc.queue.standing(ticket) if ticket.state == "waiting" else None
    join_url = None
    # Until the session exists (a moment after the take) there is no link to follow yet.
    if ticket.state == "taken" and ticket.session_id is not None:
        join_url = f"{svc.settings.origin}/join/{invitation_token(token)}"
    callback = await svc.queue.callback_of(ticket) if ticket.state == "callback" else None
    return web.json_response(
        {
            "ticket": customer_ticket_view(ticket, standing, join_url, callback),
            "poll_seconds": svc.queue.config.poll_seconds,
            "csrf_token": ticket.csrf_token,
        },
        status=status,
    )


async def _held_ticket(request: web.Request, *, change: bool) -> tuple[QueueTicket, str]:
    """The ticket of the request's cookie; for changes, origin- and CSRF-checked."""
    svc = services(request)
    token = request.cookies.get(QUEUE_COOKIE, "")
    if not change:
        # A waiting page's poll with its ticket is not counted: many customers share one
        # address (a branch's Wi-Fi, a mobile carrier's NAT), and a poll refused would let their
        # place lapse. What cannot show a ticket is counted, so guessing is still limited.
        try:
            return await svc.queue.ticket(token, seen=True), token
        except ApiError:
            svc.queue.limit(_address(request))
            raise
    check_origin(request)
    svc.queue.limit(_address(request))
    ticket = await svc.queue.ticket(token, seen=False)
    # The ticket's CSRF token, checked exactly as a customer's is.
    holder = Principal(role=Role.CUSTOMER, display_name="", csrf_token=ticket.csrf_token)
    check_csrf(request, holder)
    return ticket, token


# -- the customer's ticket (public) ----------------------------------------------------------


@routes.post("/api/v1/queue/tickets")
async def join_queue(request: web.Request) -> web.Response:
    check_origin(request)
    svc = services(request)
    held = request.cookies.get(QUEUE_COOKIE)
    if held:
        # A second tap, or a reload of the entry page: the customer keeps their place.
        try:
            ticket = await svc.queue.ticket(held, seen=True)
        except ApiError:
            ticket = None
        if ticket is not None and ticket.state == "waiting":
            svc.queue.limit(_address(request))
            return await _ticket_response(svc, ticket, held)
    svc.queue.limit(_address(request), new_ticket=True)
    body = await parse(request, QueueJoinBody)
    created = await svc.queue.join(body.topic, body.elderly)
    ticket = created.ticket
    try:
        await svc.audit.append(
            "queue.joined",
            actor=ticket.id,
            actor_role=Role.CUSTOMER.value,
            target=ticket.id,
            detail={"topic": ticket.topic, "business": ticket.business, "elderly": ticket.elderly},
            address=request.remote,
        )
    except BaseException:
        await svc.queue.discard(ticket.id)
        raise
    response = await _ticket_response(svc, ticket, created.token, status=201)
    config = svc.queue.config
    set_credential_cookie(
        response,
        svc.settings,
        QUEUE_COOKIE,
        created.token,
        path=COOKIE_PATH,
        max_age=config.max_wait_minutes * 60 + svc.settings.invitation_ttl_minutes * 60,
    )
    return response


@routes.get("/api/v1/queue/ticket")
async def ticket_status(request: web.Request) -> web.Response:
    ticket, token = await _held_ticket(request, change=False)
    return await _ticket_response(services(request), ticket, token)


@routes.post("/api/v1/queue/ticket/cancel")
async def cancel_ticket(request: web.Request) -> web.Response:
    ticket, _ = await _held_ticket(request, change=True)
    svc = services(request)
    await svc.queue.cancel(ticket)
    await svc.audit.append_fact(
        "queue.left",
        actor=ticket.id,
        actor_role=Role.CUSTOMER.value,
        target=ticket.id,
        detail={"reason": "cancelled"},
        address=request.remote,
    )
    response = web.json_response({"ticket": {"id": ticket.id, "state": "cancelled"}})
    response.del_cookie(QUEUE_COOKIE, path=COOKIE_PATH)
    return response


@routes.post("/api/v1/queue/ticket/callback")
async def request_callback(request: web.Request) -> web.Response:
    ticket, token = await _held_ticket(request, change=True)
    body = await parse(request, CallbackBody)
    svc = services(request)

    async def log(callback: QueueCallback) -> None:
        await svc.audit.append(
            "queue.callback_requested",
            actor=ticket.id,
            actor_role=Role.CUSTOMER.value,
            target=callback.id,
            detail={"business": callback.business},
            address=request.remote,
        )

    await svc.queue.request_callback(ticket, body.phone, log)
    ticket.state = "callback"
    return await _ticket_response(svc, ticket, token, status=201)


# -- tellers ---------------------------------------------------------------------------------


def _names(tellers: list[TellerState]) -> dict[str, str]:
    return {state.user.id: state.user.display_name for state in tellers}


@routes.get("/api/v1/queue/me")
async def teller_queue(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="take customers from the queue")
    svc = services(request)
    tellers = await svc.queue.tellers()
    me = next(state for state in tellers if state.user.id == teller.user_id)
    waiting = [
        t
        for t in await svc.queue.waiting()
        if t.business in me.skills and t.assigned_to in (None, me.user.id)
    ]
    names = _names(tellers)
    callbacks = [
        c
        for c in await svc.queue.callbacks()
        if c.business in me.skills and c.claimed_by in (None, me.user.id)
    ]
    return web.json_response(
        {
            "teller": teller_view(me),
            "waiting": dict(Counter(t.business for t in waiting)),
            "elderly_waiting": sum(1 for t in waiting if t.elderly),
            "assigned_to_me": sum(1 for t in waiting if t.assigned_to == me.user.id),
            "callbacks": [callback_view(c, names) for c in callbacks],
        }
    )


@routes.post("/api/v1/queue/me/status")
async def set_status(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="set a queue status")
    body = await parse(request, TellerStatusBody)
    svc = services(request)
    await svc.queue.set_status(teller, body.status, request.remote)
    return web.json_response({"teller": teller_view(await svc.queue.teller(teller.user_id or ""))})


@routes.post("/api/v1/queue/take")
async def take_next(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="take customers from the queue")
    svc = services(request)
    taken = await svc.queue.take_next(teller, svc.workers, request.remote)
    return web.json_response(
        {
            "session": session_view(taken.session, teller.role),
            "ticket": staff_ticket_view(taken.ticket, {}),
        },
        status=201,
    )


@routes.post("/api/v1/queue/callbacks/{callback_id}/claim")
async def claim_callback(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="call customers back")
    svc = services(request)
    log = _callback_log(request, teller, "queue.callback_claimed")
    callback, phone = await svc.queue.claim_callback(teller, request.match_info["callback_id"], log)
    view = callback_view(callback, {}) | {"phone": phone}
    return web.json_response({"callback": view}, headers={"Cache-Control": "no-store"})


@routes.post("/api/v1/queue/callbacks/{callback_id}/done")
async def finish_callback(request: web.Request) -> web.Response:
    teller = await require(request, Role.TELLER, action="call customers back")
    log = _callback_log(request, teller, "queue.callback_done")
    callback = await services(request).queue.finish_callback(
        teller, request.match_info["callback_id"], log
    )
    return web.json_response({"callback": callback_view(callback, {})})


def _callback_log(
    request: web.Request, teller: Principal, action: str
) -> Callable[[QueueCallback], Awaitable[None]]:
    """The entry of a teller's step on a callback, written by the queue once the step is made."""

    async def log(callback: QueueCallback) -> None:
        await services(request).audit.append(
            action,
            actor=teller.user_id or "",
            actor_role=teller.role.value,
            target=callback.id,
            address=request.remote,
        )

    return log


# -- supervisors (and admins for skills) -----------------------------------------------------


@routes.get("/api/v1/queue/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    supervisor = await require(request, Role.SUPERVISOR, action="see the queue dashboard")
    svc = services(request)
    tellers = await svc.queue.tellers()
    names = _names(tellers)
    sessions = await svc.sessions.visible_to(supervisor)
    return web.json_response(
        {
            "queue": [staff_ticket_view(t, names) for t in await svc.queue.waiting()],
            "callbacks": [callback_view(c, names) for c in await svc.queue.callbacks()],
            "tellers": [teller_view(state) for state in tellers],
            "sessions": [session_view(s, supervisor.role) for s in sessions],
            "handling": handling_view(await svc.queue.handling()),
        }
    )


@routes.post("/api/v1/queue/tickets/{ticket_id}/assign")
async def assign(request: web.Request) -> web.Response:
    supervisor = await require(request, Role.SUPERVISOR, action="reassign waiting customers")
    body = await parse(request, AssignBody)
    svc = services(request)
    ticket = await svc.queue.assign(
        request.match_info["ticket_id"], body.teller_id, supervisor, request.remote
    )
    names = _names(await svc.queue.tellers())
    return web.json_response({"ticket": staff_ticket_view(ticket, names)})


@routes.get("/api/v1/queue/tellers")
async def list_tellers(request: web.Request) -> web.Response:
    await require(request, Role.SUPERVISOR, Role.ADMIN, action="see tellers' skills")
    tellers = await services(request).queue.tellers()
    return web.json_response({"tellers": [teller_view(state) for state in tellers]})


@routes.post("/api/v1/queue/tellers/{user_id}/skills")
async def set_skills(request: web.Request) -> web.Response:
    changer = await require(request, Role.SUPERVISOR, Role.ADMIN, action="change tellers' skills")
    body = await parse(request, TellerSkillsBody)
    svc = services(request)
    user_id = request.match_info["user_id"]
    await svc.queue.set_skills(user_id, list(body.skills), changer, request.remote)
    return web.json_response({"teller": teller_view(await svc.queue.teller(user_id))})
