"""A sealed recording, decrypted as an auditor would, plays in Chromium."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from playwright.async_api import Playwright

from bench.media import free_port
from tests.e2e.browser import participant_page
from tests.integration.test_lipsync import decrypt
from tests.integration.test_recording import recorded_call
from tests.support.bot import dominant
from tests.support.server import RunningServer

PLAYER = '<video id="v" src="/recording.webm" muted autoplay></video>'


async def test_the_decrypted_recording_plays_in_chromium(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    webm = await decrypt(server, await recorded_call(server, 4))

    async def player(_: web.Request) -> web.Response:
        return web.Response(text=PLAYER, content_type="text/html")

    async def recording(_: web.Request) -> web.Response:
        return web.Response(body=webm, content_type="video/webm")

    app = web.Application()
    app.router.add_get("/", player)
    app.router.add_get("/recording.webm", recording)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with participant_page(pw) as page:
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function(
                "() => { const v = document.getElementById('v');"
                " return v.videoWidth > 0 && v.currentTime > 1; }",
                timeout=20_000,
            )
            state = await page.evaluate(
                "() => { const v = document.getElementById('v'); const c = document.createElement"
                "('canvas'); c.width = v.videoWidth; c.height = v.videoHeight; const g ="
                " c.getContext('2d'); g.drawImage(v, 0, 0); const d = g.getImageData(0, 0, c.width,"
                " c.height).data; let r = 0, gr = 0, b = 0; for (let i = 0; i < d.length; i += 4)"
                " { r += d[i]; gr += d[i + 1]; b += d[i + 2]; } const n = d.length / 4;"
                " return {error: v.error && v.error.message, width: v.videoWidth,"
                " rgb: [r / n, gr / n, b / n]}; }"
            )
    finally:
        await runner.cleanup()
    assert state["error"] is None
    assert state["width"] == 320  # the real picture size, from the VP8 bitstream
    # The first video track is the teller's camera: the teller's colour.
    assert dominant(tuple(int(c) for c in state["rgb"])) == "blue"  # type: ignore[arg-type]
