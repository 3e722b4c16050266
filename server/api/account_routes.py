"""The supervisor's staff accounts page: list the tellers' and experts' accounts, unlock one
locked out after failed logins, disable a leaver's, enable one again. What each does, and what
the audit log keeps of it, is `vteller admin`'s (server/auth/accounts.py); a password reset
stays with the operator, since a supervisor must never know a teller's password."""

from __future__ import annotations

from aiohttp import web

from server.api.access import require
from server.api.bodies import DisableAccountBody, parse
from server.auth.accounts import AccountAdmin
from server.auth.principal import Role
from server.context import services

routes = web.RouteTableDef()


async def _admin(request: web.Request, action: str) -> AccountAdmin:
    """Account administration as the request's supervisor (refused to any other role)."""
    supervisor = await require(request, Role.SUPERVISOR, action=action)
    assert supervisor.user_id is not None  # staff
    return services(request).accounts.supervised_by(supervisor.user_id, request.remote)


async def _target(request: web.Request, action: str) -> tuple[AccountAdmin, str]:
    """The request's supervisor's administration, and the login name of the account its path
    names, once it is one the supervisor may act on."""
    admin = await _admin(request, action)
    return admin, await admin.username(request.match_info["account_id"])


@routes.get("/api/v1/staff/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    admin = await _admin(request, "manage staff accounts")
    return web.json_response({"accounts": [a.view() for a in await admin.accounts()]})


@routes.post("/api/v1/staff/accounts/{account_id}/unlock")
async def unlock_account(request: web.Request) -> web.Response:
    admin, username = await _target(request, "unlock staff accounts")
    return web.json_response({"cleared": await admin.unlock(username)})


@routes.post("/api/v1/staff/accounts/{account_id}/disable")
async def disable_account(request: web.Request) -> web.Response:
    admin, username = await _target(request, "disable staff accounts")
    body = await parse(request, DisableAccountBody)
    done = await admin.disable(username, body.reason)
    released = done.released
    return web.json_response(
        {
            "logins_ended": done.logins_ended,
            "open_sessions": done.open_sessions,
            "released": {
                "cancelled": released.cancelled,
                "requeued": [ticket for ticket, _ in released.requeued],
                "unassigned": released.unassigned,
            },
            "logged": done.logged,
        }
    )


@routes.post("/api/v1/staff/accounts/{account_id}/enable")
async def enable_account(request: web.Request) -> web.Response:
    admin, username = await _target(request, "enable staff accounts")
    await admin.enable(username)
    return web.json_response({"enabled": True})
