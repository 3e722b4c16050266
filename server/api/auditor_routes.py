"""The auditor portal's API (docs/auditor.md): search, open and verify, play, export, legal hold
(of an archive, or of a session never recorded).

Auditors may do all of it. Supervisors may search, open and play archives (they review the
moments the analysis could not decide, and need to see them), but neither export a package nor
change a legal hold, nor list or look up sessions to hold. Admins, tellers, experts and
customers are refused everything.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from recorder.seal.manifest import Manifest
from server.api.access import require
from server.api.bodies import (
    ArchiveSearchBody,
    LegalHoldBody,
    UnrecordedSessionsQuery,
    parse,
    parse_query,
)
from server.auditor.exporting import DOWNLOAD_SECONDS, PackageZip
from server.auditor.idhash import CardNameError, IdNumberError
from server.auditor.index import SearchQuery
from server.auditor.purge import UnrecordedQuery
from server.auditor.service import Actor, AuditorPortal, PortalError
from server.auth.principal import Role
from server.context import services
from server.errors import ApiError, HiddenRefusal, Rule, invalid

routes = web.RouteTableDef()

_READERS = (Role.AUDITOR, Role.SUPERVISOR)
# At most 18 digits: no recording is that large, and int() refuses strings over 4,300 digits
# (a Range it cannot parse is ignored, as RFC 9110 allows: the whole recording is sent).
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")
_STREAM_CHUNK = 256 * 1024


def _portal(request: web.Request) -> AuditorPortal:
    return services(request).auditor


async def _actor(request: web.Request, *roles: Role, action: str) -> Actor:
    return Actor(await require(request, *roles, action=action), request.remote)


def _api_error(exc: PortalError) -> ApiError:
    if exc.refusal is not None:
        return HiddenRefusal(exc.code, str(exc), exc.refusal)
    return ApiError(exc.status, exc.code, str(exc))


def _manifest_view(manifest: Manifest) -> dict[str, Any]:
    """What the page shows of the signed manifest: who, the timeline, gaps, the transactions
    signed; no key material."""
    identity = manifest.identity or {}
    compliance = manifest.compliance or {}
    return {
        "status": manifest.status,
        "business": manifest.business,
        "script": compliance.get("script"),
        "created_at": manifest.created_at,
        "finalized_at": manifest.finalized_at,
        "participants": [
            {"id": p.id, "role": p.role, "name": p.display_name} for p in manifest.participants
        ],
        "marks": [{"name": m.name, "media_ms": m.media_ms} for m in manifest.marks],
        "gaps": [g.model_dump() for g in manifest.gaps],
        "identity": identity.get("decision"),
        "signing_key_id": manifest.signing_key_id,
        "transactions": [
            {
                "id": t.id,
                "media_ms": t.media_ms,
                "signed_at": t.signed_at,
                "image_in_archive": manifest.signature_attachment(t) is not None,
            }
            for t in manifest.transactions or []
        ],
    }


@routes.post("/api/v1/auditor/search")
async def search(request: web.Request) -> web.Response:
    actor = await _actor(request, *_READERS, action="search archives")
    body = await parse(request, ArchiveSearchBody)
    query = SearchQuery(**body.model_dump())
    try:
        found = await _portal(request).search(actor, query)
    except IdNumberError as exc:
        raise invalid("id_number", Rule.FORMAT, str(exc)) from exc
    except CardNameError as exc:
        raise invalid("customer_name", Rule.FORMAT, str(exc)) from exc
    return web.json_response(
        {
            "archives": found.items,
            "total": found.total,
            "page": found.page,
            "page_size": found.page_size,
        }
    )


@routes.get("/api/v1/auditor/archives/{archive_id}")
async def open_archive(request: web.Request) -> web.Response:
    actor = await _actor(request, *_READERS, action="open archives")
    try:
        entry, verified = await _portal(request).open(actor, request.match_info["archive_id"])
    except PortalError as exc:
        raise _api_error(exc) from exc
    manifest = verified.report.manifest
    return web.json_response(
        {
            "archive": entry,
            "verification": verified.view(),
            "manifest": _manifest_view(manifest) if manifest is not None else None,
            "viewer": {"id": actor.user_id, "username": actor.principal.username},
        }
    )


@routes.post("/api/v1/auditor/archives/{archive_id}/playback")
async def start_playback(request: web.Request) -> web.Response:
    actor = await _actor(request, *_READERS, action="play recordings")
    archive_id = request.match_info["archive_id"]
    try:
        prepared = await _portal(request).play(actor, archive_id)
    except PortalError as exc:
        raise _api_error(exc) from exc
    base = f"/api/v1/auditor/archives/{archive_id}/media"
    return web.json_response(
        {
            "views": [
                {"name": v.name, "url": f"{base}/{v.name}.webm", "duration_ms": v.duration_ms}
                for v in prepared.views.values()
            ],
            "viewer": {"id": actor.user_id, "username": actor.principal.username},
        }
    )


@routes.get("/api/v1/auditor/archives/{archive_id}/media/{view}.webm")
async def media(request: web.Request) -> web.Response:
    actor = await _actor(request, *_READERS, action="play recordings")
    try:
        data = await _portal(request).media(
            actor, request.match_info["archive_id"], request.match_info["view"]
        )
    except PortalError as exc:
        raise _api_error(exc) from exc
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-store",
        "Content-Disposition": "inline",
    }
    found = _RANGE.match(request.headers.get("Range", ""))
    if not found or not (found[1] or found[2]):
        return web.Response(body=data, content_type="video/webm", headers=headers)
    size = len(data)
    if found[1]:
        start, end = int(found[1]), int(found[2]) if found[2] else size - 1
    else:  # a suffix: the last N bytes
        start, end = max(size - int(found[2]), 0), size - 1
    end = min(end, size - 1)
    if start >= size or start > end:
        raise ApiError(
            416,
            "bad_range",
            "The requested byte range is outside the recording.",
            headers={"Content-Range": f"bytes */{size}"},
        )
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return web.Response(
        status=206, body=data[start : end + 1], content_type="video/webm", headers=headers
    )


@routes.get("/api/v1/auditor/archives/{archive_id}/signatures/{transaction_id}.png")
async def signature(request: web.Request) -> web.Response:
    actor = await _actor(request, *_READERS, action="see signatures")
    try:
        png = await _portal(request).signature(
            actor, request.match_info["archive_id"], request.match_info["transaction_id"]
        )
    except PortalError as exc:
        raise _api_error(exc) from exc
    return web.Response(
        body=png, content_type="image/png", headers={"Cache-Control": "no-store, private"}
    )


@routes.post("/api/v1/auditor/archives/{archive_id}/export")
async def export(request: web.Request) -> web.Response:
    actor = await _actor(request, Role.AUDITOR, action="export archives")
    archive_id = request.match_info["archive_id"]
    try:
        token, package = await _portal(request).export(actor, archive_id)
    except PortalError as exc:
        raise _api_error(exc) from exc
    return web.json_response(
        {
            "download": {
                "url": f"/api/v1/auditor/downloads/{token}",
                "filename": _package_filename(archive_id),
                "bytes": package.size,
                "sha256": package.sha256,
                "expires_in": DOWNLOAD_SECONDS,
            }
        }
    )


@routes.get("/api/v1/auditor/downloads/{token}")
async def download(request: web.Request) -> web.StreamResponse:
    # A GET the browser saves to disk itself, however large the package. Following the link
    # needs its token, which only the CSRF-checked export handed to this login's page: another
    # site can make the browser GET this URL, but cannot know it.
    actor = await _actor(request, Role.AUDITOR, action="export archives")
    try:
        async with _portal(request).download(actor, request.match_info["token"]) as found:
            return await _stream_zip(request, found.package, _package_filename(found.archive_id))
    except PortalError as exc:
        raise _api_error(exc) from exc


@routes.get("/api/v1/auditor/archives/{archive_id}/export")
async def export_by_get(_: web.Request) -> web.Response:
    # Exporting hands out evidence and is logged: a link or an image on another site could
    # make an auditor's browser GET it with their cookies, but never send the page's CSRF token.
    raise ApiError(
        405,
        "method_not_allowed",
        "Exports are POST requests carrying the page's X-CSRF-Token header (the auditor portal "
        "sends them), answered with a single-use download link; a GET exports nothing.",
        headers={"Allow": "POST"},
    )


def _package_filename(archive_id: str) -> str:
    return f"vteller-archive-{archive_id}.zip"


async def _stream_zip(
    request: web.Request, package: PackageZip, filename: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(package.size),
            "Cache-Control": "no-store",
            "X-Content-SHA256": package.sha256,
        }
    )
    await response.prepare(request)
    with package.path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, _STREAM_CHUNK):
            await response.write(chunk)
    await response.write_eof()
    return response


HoldChange = Callable[[Actor, str, bool, str], Awaitable[dict[str, Any]]]


async def _change_hold(request: web.Request, key: str, change: HoldChange) -> web.Response:
    """Set or clear a legal hold (of an archive, or of a session never recorded): auditors."""
    actor = await _actor(request, Role.AUDITOR, action="set or clear legal holds")
    body = await parse(request, LegalHoldBody)
    try:
        hold = await change(actor, request.match_info[key], body.held, body.reason)
    except PortalError as exc:
        raise _api_error(exc) from exc
    return web.json_response({"hold": hold})


@routes.post("/api/v1/auditor/archives/{archive_id}/hold")
async def legal_hold(request: web.Request) -> web.Response:
    return await _change_hold(request, "archive_id", _portal(request).set_hold)


@routes.get("/api/v1/auditor/sessions")
async def unrecorded_sessions(request: web.Request) -> web.Response:
    # A GET: its criteria are days and an identity outcome, nothing that must stay out of URLs.
    actor = await _actor(request, Role.AUDITOR, action="list sessions to hold")
    query = parse_query(request, UnrecordedSessionsQuery)
    found, more = await _portal(request).unrecorded(actor, UnrecordedQuery(**query.model_dump()))
    return web.json_response({"sessions": found, "more": more, "limit": query.limit})


@routes.get("/api/v1/auditor/sessions/{session_id}")
async def open_session(request: web.Request) -> web.Response:
    actor = await _actor(request, Role.AUDITOR, action="look up sessions to hold")
    try:
        found = await _portal(request).session(actor, request.match_info["session_id"])
    except PortalError as exc:
        raise _api_error(exc) from exc
    return web.json_response({"session": found})


@routes.post("/api/v1/auditor/sessions/{session_id}/hold")
async def session_hold(request: web.Request) -> web.Response:
    return await _change_hold(request, "session_id", _portal(request).set_session_hold)
