"""Every page, in its main states, in both languages and with large text on a phone, passes
axe-core's WCAG 2 A/AA rules with no violation of impact "serious" or "critical" (many customers
are elderly; China's 适老化 rules and GB/T 37668 follow WCAG 2.x).

axe-core's axe.min.js comes from the pinned `axe-playwright-python` wheel (the `test` extra) and
is checked against AXE_SHA256 before it runs: nothing is downloaded at test time. The script is
evaluated through Playwright (not a <script> tag), so the server's Content-Security-Policy stays
as strict as in production. A failure lists each violation's rule, selector and help text; the
moderate and minor ones are logged (shown with a failing test) but do not fail it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Playwright, ViewportSize, expect

from server.auth.principal import Role
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import CALL_TIMEOUT_MS, create_invitation, in_call, staff_login
from tests.e2e.test_customer_page import customer_in_call
from tests.e2e.test_queue_pages import queue_as_customer
from tests.integration.test_auditor_portal import _call as recorded_call
from tests.integration.test_transactions import purchase
from tests.support.server import PASSWORD, RunningServer

log = logging.getLogger("vteller.e2e.a11y")
log.setLevel(logging.INFO)

# axe-core 4.12.1 (MPL-2.0) as bundled in axe-playwright-python 0.1.8: a new wheel with another
# axe must be looked at (new rules can fail the pages) before this constant moves.
AXE_PACKAGE = "axe_playwright_python"
AXE_VERSION = "4.12.1"
AXE_SHA256 = "84494fec757e4710dc751c8d7a636e457f4532f08f85c86dc9070133fbff53bc"
# WCAG 2.0, 2.1 and 2.2 at levels A and AA: what 适老化 and GB/T 37668 ask for.
WCAG_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa")
FAILING_IMPACTS = frozenset({"serious", "critical"})
LANGUAGES = ("zh-CN", "en")
# More than the customer's chat panel shows at once.
CHAT_MESSAGES = 12


def axe_source() -> str:
    """axe.min.js from the pinned wheel, after checking it is the file this test was written for."""
    data = files(AXE_PACKAGE).joinpath("axe.min.js").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest == AXE_SHA256, (
        f"{AXE_PACKAGE}'s axe.min.js has SHA-256 {digest}, expected {AXE_SHA256} (axe-core "
        f"{AXE_VERSION}): check the new axe-core against the pages, then update the pin and hash"
    )
    source = data.decode("utf-8")
    assert f"axe v{AXE_VERSION}" in source[:200], source[:200]
    return source


RUN_AXE = """async tags => {
    const results = await axe.run(document, {
        runOnly: { type: 'tag', values: tags },
        resultTypes: ['violations'],
    });
    return results.violations.map(v => ({
        id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
        nodes: v.nodes.map(n => ({
            target: n.target.map(t => Array.isArray(t) ? t.join(' >>> ') : t).join(' '),
            summary: n.failureSummary || '',
        })),
    }));
}"""


# Many customers read the pages on a phone with large text on: every state is also checked so.
PHONE: ViewportSize = {"width": 390, "height": 844}
# Each state is checked in each language, then with large text on a phone.
VARIANTS = len(LANGUAGES) + 1
LARGE_TEXT = re.compile(r"\blarge-text\b")

# axe reads colours as they are drawn: a button still fading to its pressed colours would show a
# contrast that no one sees once it has settled.
SETTLED = """() => document.getAnimations()
    .every(a => !(a instanceof CSSTransition) || a.playState !== 'running')"""


@dataclass
class Audit:
    """Violations found on every state looked at, reported together at the end so that one run
    shows all there is to fix."""

    source: str
    failing: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    async def check(self, page: Page, state: str) -> None:
        """Run axe on `state` in the page's language, in the other one, then with large text on
        a phone; the page is left as it was found."""
        first = await page.locator("html").get_attribute("lang")
        for _ in LANGUAGES:
            await self._run(page, state)
            await press_switch(page, "lang")
        assert await page.locator("html").get_attribute("lang") == first

        viewport = page.viewport_size
        await page.set_viewport_size(PHONE)
        await press_switch(page, "large-text")
        await expect(page.locator("html")).to_have_class(LARGE_TEXT)
        await self._run(page, f"{state}, large text on a phone")
        await press_switch(page, "large-text")
        await expect(page.locator("html")).not_to_have_class(LARGE_TEXT)
        if viewport is not None:
            await page.set_viewport_size(viewport)

    async def _run(self, page: Page, state: str) -> None:
        lang = await page.locator("html").get_attribute("lang")
        assert lang in LANGUAGES, lang
        name = f"{state} [{lang}]"
        self.checked.append(name)
        if not await page.evaluate("() => typeof window.axe === 'object'"):
            await page.evaluate(self.source)
        await page.wait_for_function(SETTLED)
        violations: list[dict[str, Any]] = await page.evaluate(RUN_AXE, list(WCAG_TAGS))
        for violation in violations:
            report = describe(name, violation)
            if violation["impact"] in FAILING_IMPACTS:
                self.failing.append(report)
            else:
                log.info("not failing: %s", report)

    def assert_clean(self, states: int) -> None:
        assert not self.failing, (
            f"{len(self.failing)} serious/critical accessibility violation(s):\n\n"
            + "\n\n".join(self.failing)
        )
        assert len(self.checked) == states * VARIANTS, self.checked


def describe(state: str, violation: dict[str, Any]) -> str:
    lines = [
        f"{state}: {violation['id']} ({violation['impact']}): {violation['help']}"
        f" <{violation['helpUrl']}>"
    ]
    for node in violation["nodes"]:
        summary = " ".join(node["summary"].split())
        lines.append(f"    {node['target']}: {summary}")
    return "\n".join(lines)


async def press_switch(page: Page, which: str) -> None:
    """Press the language ("lang") or large-text switch in sight: an open full-screen question
    has its own (the top bar's is inert under it)."""
    before = await page.locator("html").get_attribute("lang")
    in_dialog = page.locator(f"dialog[open] [data-chrome='{which}']")
    if await in_dialog.count():
        await in_dialog.first.click()
    else:
        await page.click(f"#{which}-toggle")
    if which == "lang":
        await expect(page.locator("html")).not_to_have_attribute("lang", before or "")


@pytest.fixture(scope="module")
def axe() -> str:
    return axe_source()


async def test_customer_pages(
    pw: Playwright, server: RunningServer, tmp_path: Path, axe: str
) -> None:
    audit = Audit(axe)
    async with participant_page(pw) as page:
        await page.goto(f"{server.url}/join/not-a-real-token")
        await expect(page.locator("body")).to_have_attribute("data-state", "error")
        await audit.check(page, "customer: link not valid")

    async with customer_in_call(pw, server, tmp_path) as call:
        page = call.page
        # Messages in the chat: its log is a list (a role on the list itself would hide it), and
        # more of them than it shows: it scrolls, with the keyboard too.
        for n in range(CHAT_MESSAGES):
            await call.teller.send({"type": "chat", "text": f"您好，这是第 {n + 1} 条消息。"})
        chat = page.locator("#chat-log")
        await expect(chat.locator(".chat-msg")).to_have_count(CHAT_MESSAGES)
        assert await chat.evaluate("el => el.scrollHeight > el.clientHeight")
        await audit.check(page, "customer: call")

        # The full-screen questions, each over the call.
        await call.teller.send({"type": "recording_start"})
        await expect(page.locator("dialog#consent")).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await audit.check(page, "customer: recording consent")
        await page.click("#consent-yes")
        await expect(page.locator("#recording-indicator")).to_be_visible()
        await audit.check(page, "customer: call, recording")

        await call.teller.send({"type": "identity_start"})
        await expect(page.locator("dialog#identity-consent")).to_be_visible()
        await audit.check(page, "customer: face recognition consent")
        await page.click("#identity-consent-no")
        await expect(page.locator("dialog#identity-consent")).to_be_hidden()

        await call.teller.client.call(
            "POST",
            f"/api/v1/sessions/{call.teller.session_id}/transactions",
            purchase(10_000_000),
            expect=201,
        )
        await expect(page.locator("dialog#tx-sign")).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await audit.check(page, "customer: signature")
        await page.click("#tx-sign-later")
        await expect(page.locator("dialog#tx-sign")).to_be_hidden()

        await call.teller.send({"type": "end"})
        await expect(page.locator("body")).to_have_attribute(
            "data-state", "ended", timeout=CALL_TIMEOUT_MS
        )
        await audit.check(page, "customer: call ended")

    # The steps before the call, on a second invitation that no teller answers.
    teller = server.client()
    await teller.login("wang")
    created = await teller.call(
        "POST", "/api/v1/invitations", {"business": "wealth", "customer_name": "张先生"}, expect=201
    )
    async with participant_page(pw) as page:
        await page.goto(created["invitation_url"])
        await expect(page.locator("#enter-btn")).to_be_enabled(timeout=CALL_TIMEOUT_MS)
        await audit.check(page, "customer: device check")
        await page.click("#enter-btn")
        await expect(page.locator("body")).to_have_attribute("data-state", "lobby")
        await audit.check(page, "customer: lobby")
    audit.assert_clean(9)


async def test_queue_page(pw: Playwright, server: RunningServer, axe: str) -> None:
    audit = Audit(axe)
    async with participant_page(pw) as page:
        await page.goto(f"{server.url}/visit/")
        await expect(page.locator("body")).to_have_attribute("data-state", "choose")
        await audit.check(page, "queue: choose")
        await queue_as_customer(page, server, "cards")
        await expect(page.locator("#position")).not_to_be_empty()
        await audit.check(page, "queue: waiting")
    audit.assert_clean(2)


async def test_staff_pages(pw: Playwright, server: RunningServer, axe: str) -> None:
    audit = Audit(axe)
    await server.user("wang", Role.TELLER, "王柜员")
    await server.user("zhao", Role.SUPERVISOR, "赵主管")
    await server.user("root", Role.ADMIN, "管理员")
    async with participant_page(pw) as page:
        await page.goto(f"{server.url}/staff/")
        await expect(page.locator("body")).to_have_attribute("data-view", "login")
        await audit.check(page, "staff: login")
        await page.fill("#username", "wang")
        await page.fill("#password", PASSWORD + "-wrong")
        await page.click("#login-submit")
        await expect(page.locator("#login-error")).not_to_be_empty()
        await audit.check(page, "staff: login refused")

        await staff_login(page, server, "wang")
        await expect(page.locator("#queue-panel")).to_be_visible()
        await audit.check(page, "staff: teller console")
        _, session_id = await create_invitation(page)
        await audit.check(page, "staff: teller console, invitation made")
        await page.goto(f"{server.url}/staff/call.html?session={session_id}")
        await in_call(page)
        await audit.check(page, "staff: call page, customer not there yet")

        for username, panel in (("zhao", "#queue-dashboard"), ("root", "#dashboard")):
            await page.context.clear_cookies()
            await staff_login(page, server, username)
            await expect(page.locator(panel)).to_be_visible()
            await audit.check(page, f"staff: {username}'s console")
    audit.assert_clean(7)


async def test_auditor_page(pw: Playwright, server: RunningServer, axe: str) -> None:
    audit = Audit(axe)
    await server.user("wang", Role.TELLER, "王柜员")
    archive_id, _ = await recorded_call(server, "wang", "李女士", "wealth", 3)
    await server.user("audit1", Role.AUDITOR, "审计员甲")
    async with participant_page(pw) as page:
        await page.goto(f"{server.url}/auditor/")
        await expect(page.locator("#login-needed")).to_be_visible()
        await audit.check(page, "auditor: not logged in")

        await staff_login(page, server, "audit1")
        await page.click("#auditor-link")
        await expect(page.locator("#search-view")).to_be_visible()
        await audit.check(page, "auditor: search")
        await page.fill("#id-number", "12345")
        await page.click("#search-submit")
        await expect(page.locator("#search-error")).not_to_be_empty()
        await audit.check(page, "auditor: search refused")
        await page.fill("#id-number", "")
        await page.fill("#customer-name", "张先生")
        await page.click("#search-submit")
        await expect(page.locator("#result-count")).not_to_be_empty()
        await audit.check(page, "auditor: search, nothing found")

        await page.fill("#customer-name", "李女士")
        await page.click("#search-submit")
        row = page.locator(f"tr[data-archive-id='{archive_id}']")
        await expect(row).to_be_visible(timeout=CALL_TIMEOUT_MS)
        # The buttons' column has a header too, for screen readers only.
        await expect(page.locator("#results th").last).to_have_text("操作")
        await audit.check(page, "auditor: search results")
        # The sessions never recorded, listed with a row (the recorded call is not one).
        teller = server.client()
        await teller.login("wang")
        invitation = {"business": "wealth", "customer_name": "张先生"}
        created = await teller.call("POST", "/api/v1/invitations", invitation, expect=201)
        await page.select_option("#unrecorded-identity", "all")
        await page.click("#unrecorded-submit")
        unrecorded = page.locator(f"tr[data-session-id='{created['session']['id']}']")
        await expect(unrecorded).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await audit.check(page, "auditor: sessions never recorded")
        await row.locator("button.open-archive").click()
        await expect(page.locator("#verify-status")).to_have_attribute(
            "data-result", "verified", timeout=CALL_TIMEOUT_MS
        )
        await audit.check(page, "auditor: archive, verified")
        # The watermark (auditor, time) over the players is read by eye wherever it falls.
        await page.click("#play")
        await expect(page.locator("#watermark")).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await audit.check(page, "auditor: archive, playing")
        # axe cannot tell the colours under the watermark: look at the players without it too.
        await page.locator("#watermark").evaluate("el => { el.style.display = 'none'; }")
        await audit.check(page, "auditor: archive, playing, watermark set aside")
    audit.assert_clean(9)
