"""Request authentication, role checks, CSRF and origin checks for the HTTP routes."""

from __future__ import annotations

from aiohttp import web

from server.api.middleware import Handler, logged_path
from server.auth.principal import Principal, Role
from server.auth.service import CUSTOMER_COOKIE, STAFF_COOKIE
from server.auth.tokens import same
from server.context import services
from server.errors import ApiError, HiddenRefusal, forbidden, not_authenticated

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PRINCIPALS = web.RequestKey("principals", list[Principal])


async def principals(request: web.Request) -> list[Principal]:
    """Every valid principal the request's cookies prove (staff first), cached per request."""
    if _PRINCIPALS in request:
        return request[_PRINCIPALS]
    auth = services(request).auth
    found: list[Principal] = []
    if (token := request.cookies.get(STAFF_COOKIE)) and (
        staff := await auth.staff_principal(token)
    ):
        found.append(staff)
    if (token := request.cookies.get(CUSTOMER_COOKIE)) and (
        customer := await auth.customer_principal(token)
    ):
        found.append(customer)
    request[_PRINCIPALS] = found
    return found


async def staff_login_holds(request: web.Request, staff: Principal) -> bool:
    """Whether the staff login this request was admitted with still stands: not logged out,
    the account not disabled. Read afresh, for a connection that outlives its admission."""
    token = request.cookies.get(STAFF_COOKIE)
    again = await services(request).auth.staff_principal(token, expired_ok=True) if token else None
    return again is not None and again.user_id == staff.user_id and again.role == staff.role


async def require(request: web.Request, *roles: Role, action: str) -> Principal:
    """The request's principal with one of `roles`, CSRF-checked for state-changing methods."""
    found = await principals(request)
    if not found:
        raise not_authenticated()
    for principal in found:
        if principal.role in roles:
            if request.method in UNSAFE_METHODS:
                check_csrf(request, principal)
            return principal
    raise forbidden(action)


def check_csrf(request: web.Request, principal: Principal) -> None:
    sent = request.headers.get("X-CSRF-Token", "")
    if not sent or not same(sent, principal.csrf_token):
        raise ApiError(
            403,
            "csrf_failed",
            "The security token of this page is missing or stale. Reload the page and try again.",
        )


def check_origin(request: web.Request) -> None:
    """Refuse cross-site use of cookie-less endpoints (login, join) and of WebSockets."""
    origin = request.headers.get("Origin")
    allowed = {services(request).settings.origin, f"{request.scheme}://{request.host}"}
    if origin is not None and origin.rstrip("/") not in allowed:
        raise ApiError(403, "bad_origin", "Requests must come from this service's own pages.")


async def note_refusal(
    request: web.Request,
    status: int,
    code: str,
    reason: str,
    *,
    method: str | None = None,
    principal: Principal | None = None,
    hidden: str | None = None,
) -> None:
    """Count a 401 or 403, and audit an authorization refusal of a principal (access.denied).
    `method`: the request's, or the type of a message refused inside a call; `principal`: the
    one refused, when the request proves several and one was admitted (a call's); `hidden`:
    the truth behind a 404 answered on purpose (server.errors.HiddenRefusal).

    Refused CSRF tokens and origins are counted, not audited: a page on another site can make a
    logged-in browser send them, so they are not the principal's doing.
    """
    denials = services(request).denials
    # Only principals already looked up: a refusal must not wait for (or fail on) the database.
    found = [principal] if principal is not None else request.get(_PRINCIPALS)
    if found and (hidden is not None or (status == 403 and code == "forbidden")):
        refusal = denials.refused(
            found[0],  # staff first: a staff login is what a probe of staff routes uses
            method=method or request.method,
            route=logged_path(request),
            path_ids=dict(request.match_info),
            reason=reason if hidden is None else f"answered {status} {code}: {hidden}",
            address=request.remote,
            status=status,
            code=code,
        )
        if hidden is None:
            await refusal
        else:
            # Written beside the answer, not waited for: a 404 that waited for the log would
            # take longer than one for an object that does not exist, and so tell them apart.
            denials.later(refusal)
    elif status in (401, 403):
        denials.count(status, code)


@web.middleware
async def refusals_noted(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        hidden = exc.refusal if isinstance(exc, HiddenRefusal) else None
        await note_refusal(request, exc.status, exc.code, exc.message, hidden=hidden)
        raise
