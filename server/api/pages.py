"""The browser pages (web/) and the health endpoint."""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web
from sqlalchemy import text

from server.context import services

log = structlog.get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

routes = web.RouteTableDef()


def _page(relative: str) -> web.FileResponse:
    return web.FileResponse(
        WEB_DIR / relative, headers={"Cache-Control": "no-store", "Content-Type": "text/html"}
    )


@routes.get("/")
async def root(_: web.Request) -> web.Response:
    raise web.HTTPFound("/staff/")


@routes.get("/staff/")
async def staff_console(_: web.Request) -> web.FileResponse:
    return _page("staff/index.html")


@routes.get("/staff/call.html")
async def staff_call(_: web.Request) -> web.FileResponse:
    return _page("staff/call.html")


@routes.get("/auditor/")
async def auditor_portal(_: web.Request) -> web.FileResponse:
    return _page("auditor/index.html")


@routes.get("/join/{token}")
async def customer_page(_: web.Request) -> web.FileResponse:
    return _page("customer/index.html")


@routes.get("/visit/")
async def queue_entry(_: web.Request) -> web.FileResponse:
    return _page("queue/index.html")


@routes.get("/healthz")
async def health(request: web.Request) -> web.Response:
    """For load balancers, so without a login: whether this worker and its database answer.
    Never the version, which would tell anyone which exploits to try (it is on /metrics)."""
    try:
        async with services(request).engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        database = "ok"
    except Exception:
        # Why goes to the worker's log: the driver's exception names the database software.
        log.exception("healthz_database_unavailable")
        database = "unavailable"
    healthy = database == "ok"
    return web.json_response(
        {"status": "ok" if healthy else "degraded", "database": database},
        status=200 if healthy else 503,
    )
