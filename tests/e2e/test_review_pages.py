"""A supervisor in Chromium works the review queue: a real recorded call, analysed by the server
(real recognition, faces and a signed report), leaves moments it cannot decide; the supervisor
sees one with the analysis' reasons, plays it in the auditor portal (which opens the archive and
starts at the moment), comes back, is told a too-short note is not enough, and approves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, Playwright, Route, expect
from sqlalchemy import select

from server.auth.principal import Role
from server.db.models import AuditEntry, ComplianceReview
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import staff_login
from tests.integration.test_auditor_portal import _call
from tests.integration.test_compliance_jobs import _analysed, analysing_server
from tests.support import server as support

TIMEOUT_MS = 60_000

# The script the call follows (it replaces the shipped wealth script by id). The bots show
# coloured frames, not faces, and share no screen: the risk disclosure, marked but with no
# document shown, is a case for review; the closing is never marked, so it is one too.
SCRIPT = {
    "id": "bank_wealth_product",
    "version": "review.1",
    "title": "复核测试话术",
    "moments": [
        {
            "id": "risk_disclosure",
            "title": "风险揭示",
            "visible": {"teller": False, "customers": 0},
            "document_on_screen": True,
        },
        {"id": "closing", "title": "结束语", "visible": {"teller": False, "customers": 0}},
    ],
}


@pytest.fixture
async def analysing(tmp_path: Path) -> AsyncIterator[support.RunningServer]:
    async with analysing_server(tmp_path, SCRIPT) as running:
        yield running


async def _review(server: support.RunningServer, review_id: int) -> ComplianceReview:
    reviews = await server.services.analysis.reviews(None)
    return next(r for r in reviews if r.id == review_id)


async def _play_from_moment(page: Page, moment: str) -> tuple[float, list[float]]:
    """Starts playback; the mark's time and where each player's first seek landed."""
    mark = page.locator(f"li[data-mark='{moment}.start']")
    target = int(await mark.get_attribute("data-ms") or 0) / 1000
    # Media events do not bubble, but a capturing listener on the document sees them all.
    await page.evaluate(
        "() => { window.seeks = new Map();"
        " document.addEventListener('seeked', (e) => {"
        "   if (!window.seeks.has(e.target)) window.seeks.set(e.target, e.target.currentTime);"
        " }, true); }"
    )
    await page.click("#play")
    await page.wait_for_function(
        "() => { const players = [...document.querySelectorAll('#player-grid video')];"
        " return players.length > 0 && players.every((v) => window.seeks.has(v)); }",
        timeout=TIMEOUT_MS,
    )
    landed: list[float] = await page.evaluate(
        "() => [...document.querySelectorAll('#player-grid video')].map((v) => window.seeks.get(v))"
    )
    return target, landed


async def test_supervisor_reviews_a_moment_with_its_playback(
    pw: Playwright, analysing: support.RunningServer
) -> None:
    server = analysing
    await server.user("wang", Role.TELLER, "王柜员")
    archive_id, session_id = await _call(server, "wang", "李女士", "wealth", 6)
    job = await _analysed(server, archive_id)
    assert job["decision"] == "needs_review"
    open_reviews = {r.moment: r for r in await server.services.analysis.reviews("open")}
    assert set(open_reviews) == {"risk_disclosure", "closing"}
    review = open_reviews["risk_disclosure"]
    boss_id = await server.user("boss", Role.SUPERVISOR, "赵主管")

    async with participant_page(pw) as page:
        await staff_login(page, server, "boss")
        item = page.locator(f".review-item[data-id='{review.id}']")
        await expect(item).to_be_visible(timeout=TIMEOUT_MS)
        await expect(item.locator(".review-title")).to_contain_text("风险揭示")
        await expect(item.locator(".review-reasons")).to_contain_text("no document shown")
        await expect(item).to_contain_text(archive_id)
        await expect(item).to_contain_text(session_id)
        unmarked = page.locator(f".review-item[data-id='{open_reviews['closing'].id}']")
        await expect(unmarked.locator(".review-reasons")).to_contain_text("not marked")

        # The link opens the archive itself in the auditor portal, not the search.
        await item.locator("a.review-play").click()
        await page.wait_for_url("**/auditor/?*", timeout=TIMEOUT_MS)
        status = page.locator("#verify-status[data-result]")
        await status.wait_for(timeout=TIMEOUT_MS)
        assert await status.get_attribute("data-result") == "verified"
        assert archive_id in await page.inner_text("#archive-title")
        assert await page.locator("#search-view").is_hidden()
        await expect(page.locator("li.mark-target")).to_have_attribute(
            "data-mark", "risk_disclosure.start"
        )
        await expect(page.locator("#target-status")).to_contain_text("风险揭示")
        target, landed = await _play_from_moment(page, "risk_disclosure")
        assert target > 1.0  # marked halfway through the call, not at its start
        assert len(landed) == 2
        assert all(abs(position - target) < 0.5 for position in landed), (landed, target)

        await page.go_back()
        item = page.locator(f".review-item[data-id='{review.id}']")
        await expect(item).to_be_visible(timeout=TIMEOUT_MS)
        await item.locator(".review-note").fill("短")
        await item.locator("button.review-reject").click()
        await expect(item.locator(".review-error")).to_contain_text("至少 4 个字")
        assert (await _review(server, review.id)).state == "open"

        note = "已回看录像：产品说明书已口头说明，同意通过"
        await item.locator(".review-note").fill(note)
        # While the approval is on its way, "reject" cannot be sent too.
        held = asyncio.Event()

        async def hold(route: Route) -> None:
            await held.wait()
            await route.continue_()

        await page.route(f"**/api/v1/reviews/{review.id}", hold)
        await item.locator("button.review-approve").click()
        await expect(item.locator("button.review-reject")).to_be_disabled()
        await expect(item.locator("button.review-approve")).to_be_disabled()
        held.set()
        await expect(item).to_have_count(0, timeout=TIMEOUT_MS)
        await expect(unmarked).to_be_visible()

    decided = await _review(server, review.id)
    assert (decided.state, decided.note, decided.decided_by) == ("approved", note, boss_id)
    assert (await _review(server, open_reviews["closing"].id)).state == "open"
    async with server.services.sessions._db() as db:
        reviewed = list(
            await db.scalars(select(AuditEntry).where(AuditEntry.action == "compliance.reviewed"))
        )
    assert [(e.actor, e.target) for e in reviewed] == [(boss_id, archive_id)]
