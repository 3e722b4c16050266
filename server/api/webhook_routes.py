"""Deliveries of approved transactions to the core bank: the list, and retrying a failed one."""

from __future__ import annotations

from aiohttp import web

from server.api.access import require
from server.auth.principal import Role
from server.context import services
from server.errors import ApiError, Rule, invalid
from server.workflow.webhooks.records import STATES

routes = web.RouteTableDef()
MAX_LIMIT = 500


@routes.get("/api/v1/webhooks/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    # Auditors read which transactions reached the core bank; only supervisors act on them.
    await require(request, Role.SUPERVISOR, Role.AUDITOR, action="see webhook deliveries")
    state = request.query.get("state", "all")
    if state not in (*STATES, "all"):
        raise invalid("state", Rule.CHOICE, f"use {', '.join(STATES)} or all (got {state!r})")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", Rule.RANGE, f"a whole number from 1 to {MAX_LIMIT}")
    webhooks = services(request).webhooks
    deliveries = await webhooks.deliveries(None if state == "all" else state, limit)
    return web.json_response({"enabled": webhooks.enabled, "deliveries": deliveries})


@routes.get("/api/v1/webhooks/deliveries/{key}")
async def show_delivery(request: web.Request) -> web.Response:
    await require(request, Role.SUPERVISOR, Role.AUDITOR, action="see webhook deliveries")
    webhooks = services(request).webhooks
    row = await webhooks.find(request.match_info["key"])
    if row is None:
        raise ApiError(404, "unknown_delivery", "No delivery has this transaction or id.")
    return web.json_response({"delivery": webhooks.view(row)})


@routes.post("/api/v1/webhooks/deliveries/{key}/retry")
async def retry_delivery(request: web.Request) -> web.Response:
    supervisor = await require(request, Role.SUPERVISOR, action="retry webhook deliveries")
    assert supervisor.user_id is not None
    delivery = await services(request).webhooks.retry(
        request.match_info["key"],
        actor=supervisor.user_id,
        actor_role=supervisor.role.value,
        via="api",
        address=request.remote,
    )
    return web.json_response({"delivery": delivery})
