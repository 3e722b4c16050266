"""Turns every failure of an API route into the documented JSON error shape; the request's path
as logs may show it."""

from __future__ import annotations

import errno
import re
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from server.errors import ApiError, Rule, invalid
from server.nul import NUL, REFUSAL

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A path segment long enough to be a credential (tokens are 43 characters, server/auth/tokens.py).
_LONG_SEGMENT = re.compile(r"(?<=/)[^/]{16,}")


def logged_path(request: web.BaseRequest) -> str:
    """The request's path with its route's variables as their names: `/join/{token}`.

    Some variables are bearer credentials (a customer's invitation link is `/join/{token}`), and
    logs are read by more people, and kept longer, than a credential may be. A path no route
    matched has each segment long enough to be a credential replaced: a link pasted under a
    wrong prefix must not reach the log either.
    """
    # Read directly: a request refused before routing (malformed) has none, and `match_info`
    # asserts that it has.
    match_info: web.UrlMappingMatchInfo | None = getattr(request, "_match_info", None)
    resource = match_info.route.resource if match_info is not None else None
    if isinstance(resource, web.DynamicResource):
        return resource.canonical
    if isinstance(resource, web.PlainResource | web.StaticResource):
        return request.path  # a fixed path, or a file's under /static/
    return _LONG_SEGMENT.sub("{redacted}", request.path)


def error_body(
    code: str, message: str, details: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message, **(details or {})}}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(
            error_body(exc.code, exc.message, exc.details), status=exc.status, headers=exc.headers
        )
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(
            error_body("payload_too_large", "The request body is too large."), status=413
        )
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return web.json_response(error_body(code, exc.reason), status=exc.status)
    except Exception:
        log.exception("request_failed", path=logged_path(request), method=request.method)
        return web.json_response(
            error_body("internal", "Something went wrong on our side; it has been logged."),
            status=500,
        )


@web.middleware
async def unnameable_paths(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Path variables that name nothing, whose lookup fails rather than finding nothing: NUL
    (`%00`), which PostgreSQL refuses in a query, and static file names longer than the file
    system takes."""
    for name, value in request.match_info.items():
        if NUL in value:
            raise invalid(name, Rule.FORMAT, REFUSAL)
    try:
        return await handler(request)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG and isinstance(
            request.match_info.route.resource, web.StaticResource
        ):
            raise web.HTTPNotFound() from exc
        raise


# Styles come from the pages' CSS files only (style attributes and <style> blocks are refused);
# scripts set styles through element.style, which a policy does not govern. connect-src allows
# any ws:/wss: origin because a session's signaling may be on another worker's origin (ws_url),
# and a page cannot learn of a worker added after it loaded: a call moved there by a failover,
# the usual case when machines are replaced one by one, would be refused its reconnection.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self' ws: wss:; style-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# A self-contained page made on the server (the compliance report): its own inline styles, and
# nothing else at all, no scripts in particular.
SELF_CONTAINED_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
    """On every response as it is prepared, not in a middleware: answers no middleware returns
    (an HTTPException on a page or /metrics, a 404 of no route, a download streamed from its
    handler) must carry them too."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault(
        "Permissions-Policy", "camera=(self), microphone=(self), display-capture=(self)"
    )
