"""An auditor in Chromium: logs in, searches, opens the archive (verified), plays it, jumps to a
key moment, sees their watermark over the players, downloads the package (which verifies
offline) and sets a legal hold; and finds the sessions that were never recorded (a failed
identity check first) and holds their evidence."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from playwright.async_api import Page, Playwright

from server.auth.principal import Role
from server.db.models import SessionHoldRecord
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import staff_login
from tests.integration.test_auditor_portal import _call
from tests.integration.test_recording import _vteller
from tests.integration.test_unrecorded_sessions import FACE_FAILED, attempts
from tests.support.server import RunningServer

TIMEOUT_MS = 30_000


async def hold(page: Page, form: str, reason: str) -> None:
    """Set the legal hold of the form whose elements' ids begin with `form`, and wait for it."""
    await page.fill(f"{form}-reason", reason)
    await page.click(f"{form}-submit")
    await page.wait_for_selector(f"{form}-submit[data-held='true']", timeout=TIMEOUT_MS)


async def test_auditor_finds_verifies_plays_seeks_exports_and_holds(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    await server.user("wang", Role.TELLER, "王柜员")
    archive_id, _ = await _call(server, "wang", "李女士", "wealth", 4)
    user_id = await server.user("audit1", Role.AUDITOR, "审计员甲")
    async with participant_page(pw) as page:
        await staff_login(page, server, "audit1")
        await page.click("#auditor-link")
        await page.wait_for_selector("#search-view:not([hidden])", timeout=TIMEOUT_MS)
        await page.fill("#customer-name", "李女士")
        await page.click("#search-submit")
        row = page.locator(f"tr[data-archive-id='{archive_id}']")
        await row.wait_for(timeout=TIMEOUT_MS)
        await row.locator("button.open-archive").click()

        status = page.locator("#verify-status[data-result]")
        await status.wait_for(timeout=TIMEOUT_MS)
        assert await status.get_attribute("data-result") == "verified"
        assert "已核验" in await status.inner_text()

        await page.click("#play")
        await page.wait_for_function(
            "() => { const v = document.querySelector('video[data-view=customer]');"
            " return v && v.readyState >= 2 && v.videoWidth > 0; }",
            timeout=TIMEOUT_MS,
        )
        moment = page.locator("li[data-mark='risk_disclosure.start']")
        target = int(await moment.get_attribute("data-ms") or 0) / 1000
        assert target > 0.5
        await page.evaluate(
            "() => document.querySelectorAll('#player-grid video').forEach(v => v.pause())"
        )
        await moment.locator("button.jump").click()
        # Seeked: every player is at the moment (the files carry Cues, so the browser can seek).
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#player-grid video')].every(v => !v.seeking)",
            timeout=TIMEOUT_MS,
        )
        positions = await page.evaluate(
            "() => [...document.querySelectorAll('#player-grid video')].map(v => v.currentTime)"
        )
        assert len(positions) == 2
        assert all(abs(p - target) < 0.5 for p in positions), (positions, target)

        watermark = page.locator("#watermark")
        assert await watermark.is_visible()
        text = await watermark.inner_text()
        assert "audit1" in text and user_id in text and "UTC" in text
        box = await watermark.bounding_box()
        video_box = await page.locator("video[data-view=customer]").bounding_box()
        assert box is not None and video_box is not None
        # Over the players, not beside them.
        assert box["y"] <= video_box["y"] + video_box["height"]
        assert box["y"] + box["height"] >= video_box["y"]

        async with page.expect_download() as download_info:
            await page.click("#export")
        download = await download_info.value
        assert download.suggested_filename == f"vteller-archive-{archive_id}.zip"
        # The browser saves it itself, from the single-use link the CSRF-checked POST handed
        # out; the page says so, with the package's name and SHA-256.
        await page.wait_for_selector(
            "#export-status[data-i18n='auditor.exportDone']", timeout=TIMEOUT_MS
        )
        status_text = await page.inner_text("#export-status")
        assert download.suggested_filename in status_text
        saved = tmp_path / "package.zip"
        await download.save_as(saved)
        assert hashlib.sha256(saved.read_bytes()).hexdigest() in status_text
        with zipfile.ZipFile(saved) as package:
            package.extractall(tmp_path / "package")
        offline = await _vteller(
            tmp_path / "elsewhere", "verify", str(tmp_path / "package" / archive_id)
        )
        assert offline.returncode == 0, offline.stdout + offline.stderr

        await hold(page, "#hold", "监管调查，保全至结案")
        assert "监管调查" in await page.inner_text("#hold-state")


async def test_auditor_holds_the_evidence_of_a_session_never_recorded(
    pw: Playwright, server: RunningServer
) -> None:
    await server.user("wang", Role.TELLER, "王柜员")
    teller = server.client()
    await teller.login("wang")
    invitation = {"business": "wealth", "customer_name": "李女士"}
    created = await teller.call("POST", "/api/v1/invitations", invitation, expect=201)
    session_id = created["session"]["id"]
    # Another customer's face did not match the card, and the call ended unrecorded.
    other = await teller.call("POST", "/api/v1/invitations", invitation, expect=201)
    impostor = other["session"]["id"]
    await attempts(server.services.sessions._db, impostor, FACE_FAILED)
    await teller.call("POST", f"/api/v1/sessions/{impostor}/end", expect=200)
    await server.user("audit1", Role.AUDITOR, "审计员甲")
    async with participant_page(pw) as page:
        await staff_login(page, server, "audit1")
        await page.click("#auditor-link")
        await page.wait_for_selector("#session-hold:not([hidden])", timeout=TIMEOUT_MS)
        # Listed by default (identity check failed, the last 30 days); the other one is not.
        row = page.locator(f"#unrecorded-rows tr[data-session-id='{impostor}']")
        await row.wait_for(timeout=TIMEOUT_MS)
        assert await page.locator("#unrecorded-rows tr").count() == 1
        assert "人脸比对" in await row.inner_text() and "未保全" in await row.inner_text()
        await row.locator("button.open-session").click()
        await page.wait_for_selector("#session-found:not([hidden])", timeout=TIMEOUT_MS)
        assert impostor in await page.inner_text("#session-summary")
        assert "face_mismatch" in await page.inner_text("#session-attempts")
        await hold(page, "#session-hold", "人脸与证件不符，疑似冒用身份")
        assert "保全中" in await row.locator("td.held").inner_text()
        assert "不会删除" in await row.locator("td.purge").inner_text()

        await page.fill("#session-id", "s_nobody")
        await page.click("#session-lookup button[type=submit]")
        await page.wait_for_function(
            "() => document.getElementById('session-error').textContent.includes('没有这个会话')",
            timeout=TIMEOUT_MS,
        )
        await page.fill("#session-id", session_id)
        await page.click("#session-lookup button[type=submit]")
        await page.wait_for_selector("#session-found:not([hidden])", timeout=TIMEOUT_MS)
        assert session_id in await page.inner_text("#session-summary")
        assert "没有身份核验记录" in await page.inner_text("#session-attempts")
        assert "未设置法律保全" in await page.inner_text("#session-status")
        await hold(page, "#session-hold", "人脸与证件不符，反欺诈调查")
        assert "反欺诈调查" in await page.inner_text("#session-status")

        # Every outcome: both, newest first, both held.
        await page.select_option("#unrecorded-identity", "all")
        await page.click("#unrecorded-submit")
        await page.wait_for_selector(
            f"#unrecorded-rows tr[data-session-id='{session_id}']", timeout=TIMEOUT_MS
        )
        listed = await page.eval_on_selector_all(
            "#unrecorded-rows tr", "rows => rows.map(r => r.dataset.sessionId)"
        )
        assert listed == [impostor, session_id]
        held = await page.locator("#unrecorded-rows td.held").all_inner_texts()
        assert held == ["保全中", "保全中"]
    async with server.services.sessions._db() as db:
        record = await db.get(SessionHoldRecord, session_id)
        listed_hold = await db.get(SessionHoldRecord, impostor)
    assert record is not None and record.held and record.reason == "人脸与证件不符，反欺诈调查"
    assert listed_hold is not None and listed_hold.held
