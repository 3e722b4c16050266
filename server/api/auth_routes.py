"""Staff login, logout, whoami; account creation by admins."""

from __future__ import annotations

from aiohttp import web

from server.api.access import check_origin, require
from server.api.bodies import LoginBody, NewUserBody, parse
from server.api.cookies import set_credential_cookie
from server.audit import ANONYMOUS, AuditUnavailable
from server.auth.principal import STAFF_ROLES, Role
from server.auth.ratelimit import Throttled
from server.auth.service import DEVICE_COOKIE, DEVICE_COOKIE_PATH, DEVICE_LIFETIME, STAFF_COOKIE
from server.context import Services, services
from server.errors import ApiError
from server.sessions.views import user_view

routes = web.RouteTableDef()


@routes.post("/api/v1/auth/login")
async def login(request: web.Request) -> web.Response:
    check_origin(request)
    body = await parse(request, LoginBody)
    svc = services(request)
    address = request.remote or "unknown"
    try:
        done = await svc.auth.login(
            body.username, body.password, address, request.cookies.get(DEVICE_COOKIE)
        )
    except Throttled as exc:
        # No password was checked: once a user or address shows as throttled in the log, more
        # of the same is noise that anyone could write without limit. A fact, never refused:
        # the throttle has already marked this window's refusal reported, so an entry the log
        # cannot take goes to the error log whole rather than nowhere.
        if exc.first_in_window:
            await _login_failed(svc, body.username, exc.code, address, fact=True)
        raise
    except ApiError as exc:  # a checked guess: every one must show in the log
        await _login_failed(svc, body.username, exc.code, address)
        raise
    # Before the cookie is handed out: a login the log does not show never takes effect, and
    # its row is revoked (it would count the user as logged in, e.g. on the queue's board).
    user = done.user
    try:
        await svc.audit.append(
            "auth.login",
            actor=user.id,
            actor_role=user.role,
            target=user.username,
            detail={"device": "new" if done.device else "known"},
            address=address,
        )
    except AuditUnavailable:
        await svc.auth.logout(done.token)
        raise
    response = web.json_response({"user": user_view(user), "csrf_token": done.csrf})
    set_credential_cookie(
        response,
        svc.settings,
        STAFF_COOKIE,
        done.token,
        path="/",
        max_age=int(svc.settings.staff_session_hours * 3600),
    )
    if done.device is not None:
        set_credential_cookie(
            response,
            svc.settings,
            DEVICE_COOKIE,
            done.device,
            path=DEVICE_COOKIE_PATH,
            max_age=int(DEVICE_LIFETIME.total_seconds()),
        )
    return response


async def _login_failed(
    svc: Services, username: str, reason: str, address: str, *, fact: bool = False
) -> None:
    await (svc.audit.append_fact if fact else svc.audit.append)(
        "auth.login_failed",
        actor=ANONYMOUS,
        actor_role=ANONYMOUS,
        target=username,  # at most 64 characters (LoginBody)
        detail={"reason": reason},
        address=address,
    )


@routes.post("/api/v1/auth/logout")
async def logout(request: web.Request) -> web.Response:
    principal = await require(request, *STAFF_ROLES, action="log out")
    await services(request).auth.logout(request.cookies[STAFF_COOKIE])
    # A fact: leaving must never be refused (an open login is the unsafe side).
    await services(request).audit.append_fact(
        "auth.logout",
        actor=principal.user_id or "",
        actor_role=principal.role.value,
        target=principal.username or "",
        address=request.remote,
    )
    response = web.json_response({"ok": True})
    response.del_cookie(STAFF_COOKIE, path="/")
    return response


@routes.get("/api/v1/auth/me")
async def me(request: web.Request) -> web.Response:
    principal = await require(request, *STAFF_ROLES, action="use the staff console")
    return web.json_response(
        {
            "user": {
                "id": principal.user_id,
                "username": principal.username,
                "display_name": principal.display_name,
                "role": principal.role.value,
            },
            "csrf_token": principal.csrf_token,
        }
    )


@routes.post("/api/v1/admin/users")
async def create_user(request: web.Request) -> web.Response:
    admin = await require(request, Role.ADMIN, action="manage accounts")
    body = await parse(request, NewUserBody)
    svc = services(request)
    user = await svc.auth.new_user(body.username, body.password, body.display_name, body.role)
    await svc.audit.append(
        "admin.user_created",
        actor=admin.user_id or "",
        actor_role=admin.role.value,
        target=user.username,
        detail={"user_id": user.id, "role": user.role, "via": "api"},
        address=request.remote,
    )
    await svc.auth.add_user(user)
    return web.json_response({"user": user_view(user)}, status=201)
