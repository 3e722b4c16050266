"""Static files are revalidated on every use, so an upgrade never runs a cached old module."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import _revalidate_static


async def _other(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_static_files_are_revalidated_and_answered_304_when_unchanged(
    tmp_path: Path,
) -> None:
    (tmp_path / "page.js").write_text("export {};\n")
    app = web.Application()
    app.router.add_static("/static/", tmp_path)
    app.router.add_get("/other", _other)
    app.on_response_prepare.append(_revalidate_static)
    async with TestClient(TestServer(app)) as client:
        first = await client.get("/static/page.js")
        assert first.headers["Cache-Control"] == "no-cache"
        etag = first.headers["ETag"]
        again = await client.get("/static/page.js", headers={"If-None-Match": etag})
        assert again.status == 304
        assert again.headers["Cache-Control"] == "no-cache"
        other = await client.get("/other")
        assert "Cache-Control" not in other.headers
