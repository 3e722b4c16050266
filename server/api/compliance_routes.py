"""The after-call compliance analysis: progress and reports of a session, the review queue."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from compliance.report import render_html
from server.api.access import require
from server.api.bodies import ReviewBody, parse
from server.api.middleware import SELF_CONTAINED_POLICY
from server.auth.principal import Principal, Role
from server.context import services
from server.db.models import ComplianceReport, ComplianceReview
from server.errors import ApiError, Rule, forbidden, invalid
from server.recording.analysis import AnalysisError

routes = web.RouteTableDef()

_MAX_ROW_ID = 2**63 - 1


def _row_id(text: str) -> int | None:
    """An integer primary key from the path, or None when no row can have it: the database's
    integers are signed 64-bit, and a larger one overflows in the driver rather than matching
    nothing."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(_MAX_ROW_ID)):
        return None
    value = int(text)
    return value if 1 <= value <= _MAX_ROW_ID else None


def _job_view(job: ComplianceReport) -> dict[str, Any]:
    return {
        "archive_id": job.archive_id,
        "state": job.state,
        "stage": job.stage,
        "progress": job.progress,
        "decision": job.decision,
        "report": job.report_object,
        "error": job.error,
        "updated_at": job.updated_at.isoformat(),
    }


def _review_view(review: ComplianceReview) -> dict[str, Any]:
    return {
        "id": review.id,
        "archive_id": review.archive_id,
        "session_id": review.session_id,
        "moment": review.moment,
        "reasons": review.reasons,
        "state": review.state,
        "note": review.note,
        "decided_by": review.decided_by,
        "created_at": review.created_at.isoformat(),
    }


async def _may_read(request: web.Request, principal: Principal, session_id: str) -> None:
    """Auditors read every archive's report; staff those of sessions they may view."""
    if principal.role is Role.AUDITOR:
        return
    store = services(request).sessions
    if not await store.can_view(principal, await store.require(session_id)):
        raise forbidden("read this session's compliance reports")


@routes.get("/api/v1/sessions/{session_id}/compliance")
async def session_compliance(request: web.Request) -> web.Response:
    principal = await require(
        request, Role.TELLER, Role.SUPERVISOR, Role.AUDITOR, action="read compliance reports"
    )
    session_id = request.match_info["session_id"]
    await _may_read(request, principal, session_id)
    jobs = await services(request).analysis.for_session(session_id)
    return web.json_response({"reports": [_job_view(j) for j in jobs]})


async def _report(request: web.Request) -> dict[str, Any]:
    principal = await require(
        request, Role.TELLER, Role.SUPERVISOR, Role.AUDITOR, action="read compliance reports"
    )
    analysis = services(request).analysis
    job = await analysis.job(request.match_info["archive_id"])
    if job is None:
        raise ApiError(404, "unknown_report", "No analysis of this archive is known.")
    await _may_read(request, principal, job.session_id)
    if job.state != "done":
        raise ApiError(
            409, "report_not_ready", f"The analysis is {job.state} ({job.stage}); try later."
        )
    try:
        return await analysis.read_report(job)
    except AnalysisError as exc:
        raise ApiError(503, "report_unavailable", str(exc)) from exc


@routes.get("/api/v1/archives/{archive_id}/report")
async def report_json(request: web.Request) -> web.Response:
    return web.json_response({"report": await _report(request)})


@routes.get("/api/v1/archives/{archive_id}/report.html")
async def report_html(request: web.Request) -> web.Response:
    return web.Response(
        text=render_html(await _report(request)),
        content_type="text/html",
        headers={"Content-Security-Policy": SELF_CONTAINED_POLICY},
    )


@routes.get("/api/v1/reviews")
async def list_reviews(request: web.Request) -> web.Response:
    await require(request, Role.SUPERVISOR, Role.AUDITOR, action="see the review queue")
    state = request.query.get("state", "open")
    if state not in ("open", "approved", "rejected", "all"):
        raise invalid("state", Rule.CHOICE, "use open, approved, rejected or all")
    reviews = await services(request).analysis.reviews(None if state == "all" else state)
    return web.json_response({"reviews": [_review_view(r) for r in reviews]})


@routes.post("/api/v1/reviews/{review_id}")
async def decide_review(request: web.Request) -> web.Response:
    supervisor = await require(request, Role.SUPERVISOR, action="decide reviews")
    body = await parse(request, ReviewBody)
    unknown = ApiError(404, "unknown_review", "There is no such review.")
    review_id = _row_id(request.match_info["review_id"])
    if review_id is None:
        raise unknown
    try:
        assert supervisor.user_id is not None
        review = await services(request).analysis.decide(
            review_id, supervisor.user_id, body.decision, body.note
        )
    except KeyError as exc:
        raise unknown from exc
    except AnalysisError as exc:
        raise ApiError(409, "already_decided", str(exc)) from exc
    return web.json_response({"review": _review_view(review)})
