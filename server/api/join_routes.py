"""The customer's side: checking and redeeming an invitation link."""

from __future__ import annotations

from aiohttp import web

from server.api.access import check_origin, require
from server.api.cookies import set_credential_cookie
from server.auth.principal import Role
from server.auth.service import CUSTOMER_COOKIE, CUSTOMER_CREDENTIAL_LIFETIME
from server.context import services
from server.sessions.views import participant_view, session_view

routes = web.RouteTableDef()


@routes.get("/api/v1/join/{token}")
async def check_link(request: web.Request) -> web.Response:
    status, invitation = await services(request).sessions.invitation_status(
        request.match_info["token"]
    )
    body: dict[str, object] = {"status": status, "business": None, "teller_name": None}
    if invitation is not None and status == "valid":
        body["business"] = invitation.session.business
        body["teller_name"] = invitation.session.teller.display_name
    return web.json_response(body)


@routes.post("/api/v1/join/{token}")
async def redeem(request: web.Request) -> web.Response:
    check_origin(request)
    svc = services(request)
    redemption = await svc.sessions.redeem(
        request.match_info["token"], request.cookies.get(CUSTOMER_COOKIE)
    )
    if redemption.cookie_token is not None:  # a first redemption, not the same browser reloading
        try:
            await svc.audit.append(
                "invitation.redeemed",
                actor=redemption.participant.id,
                actor_role=Role.CUSTOMER.value,
                target=redemption.session.id,
                address=request.remote,
            )
        except BaseException:
            # The claim comes before the entry because it is what keeps a link to one credential
            # when browsers race for it. Unclaimed again, the link works once the log is back: a
            # queue customer's link cannot be sent anew.
            await svc.sessions.undo_redemption(redemption)
            raise
    response = web.json_response(
        {
            "session": session_view(redemption.session, Role.CUSTOMER),
            "participant": participant_view(redemption.participant),
            "csrf_token": redemption.csrf_token,
        }
    )
    if redemption.cookie_token is not None:
        set_credential_cookie(
            response,
            svc.settings,
            CUSTOMER_COOKIE,
            redemption.cookie_token,
            path="/",
            max_age=int(CUSTOMER_CREDENTIAL_LIFETIME.total_seconds()),
        )
    return response


@routes.get("/api/v1/customer/me")
async def customer_me(request: web.Request) -> web.Response:
    customer = await require(request, Role.CUSTOMER, action="use the customer page")
    svc = services(request)
    session = await svc.sessions.require(customer.session_id or "")
    participant = await svc.sessions.participant_for(customer, session)
    return web.json_response(
        {
            "session": session_view(session, Role.CUSTOMER),
            "participant": participant_view(participant),
            "csrf_token": customer.csrf_token,
        }
    )
