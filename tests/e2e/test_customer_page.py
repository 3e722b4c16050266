"""The customer's page in real Chromium as an elderly customer meets it: the words it reads out,
and what is left on the screen when the call ends. One browser (the customer's); the teller is
a headless client (tests/support/bot.py), which is all the customer's page needs to be in a call.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import ConsoleMessage, Page, Playwright, expect

from server.auth.principal import Role
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import CALL_TIMEOUT_MS, in_call
from tests.fixtures.media import participant_media
from tests.integration.test_transactions import purchase
from tests.support.bot import Bot
from tests.support.server import ApiClient, RunningServer


class CustomerCall:
    def __init__(self, page: Page, teller: Bot, problems: list[str]) -> None:
        self.page = page
        self.teller = teller
        self.problems = problems  # the page's console errors and uncaught exceptions


@asynccontextmanager
async def customer_in_call(
    pw: Playwright, server: RunningServer, media_dir: Path
) -> AsyncIterator[CustomerCall]:
    """The customer through link, device check and lobby into a call with the teller."""
    await server.user("wang", Role.TELLER, "王柜员")
    teller_http = server.client()
    await teller_http.login("wang")
    created = await teller_http.call(
        "POST",
        "/api/v1/invitations",
        {"business": "wealth", "customer_name": "李女士"},
        expect=201,
    )
    teller = Bot(teller_http, created["session"]["id"], colour="blue")
    async with participant_page(pw, participant_media(media_dir, "customer")) as page:
        problems: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                problems.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        await page.goto(created["invitation_url"])
        await page.click("#enter-btn")
        await expect(page.locator("body")).to_have_attribute("data-state", "lobby")
        try:
            await teller.join()
            await in_call(page)
            yield CustomerCall(page, teller, problems)
        finally:
            await teller.close()


async def test_the_language_switch_is_read_out_in_the_language_it_names(
    pw: Playwright, server: RunningServer
) -> None:
    """The switch says "English" on the Chinese page and "中文" on the English one: a screen
    reader reads it with the voice of its `lang`, not the page's (WCAG 3.1.2)."""
    async with participant_page(pw) as page:
        await page.goto(f"{server.url}/visit/")
        toggle = page.locator("#lang-toggle")
        await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        await expect(toggle).to_have_text("English")
        await expect(toggle).to_have_attribute("lang", "en")

        await toggle.click()
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(toggle).to_have_text("中文")
        await expect(toggle).to_have_attribute("lang", "zh-CN")

        # The choice is kept for the next page the customer opens.
        await page.reload()
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(toggle).to_have_attribute("lang", "zh-CN")


async def test_the_amount_to_sign_is_in_the_customers_words(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with customer_in_call(pw, server, tmp_path) as call:
        teller: ApiClient = call.teller.client
        await teller.call(
            "POST",
            f"/api/v1/sessions/{call.teller.session_id}/transactions",
            purchase(10_000_000),
            expect=201,
        )
        dialog = call.page.locator("dialog#tx-sign")
        summary = dialog.locator("#tx-sign-summary")
        await expect(dialog).to_be_visible(timeout=CALL_TIMEOUT_MS)
        # What the customer signs for, read aloud or by eye: no currency code in Latin letters.
        await expect(summary).to_have_text(
            "购买理财产品「稳健理财88号」，金额 人民币 100,000.00 元"
        )
        await expect(summary).not_to_contain_text(re.compile("[A-Za-z]"))

        # The full-screen question covers the page's top bar (and makes it inert): it has the
        # language and large-text switches of its own.
        await dialog.locator("[data-chrome='lang']").click()
        await expect(summary).to_have_text('Buy wealth product "稳健理财88号" for 100,000.00 CNY')
        await expect(call.page.locator("html")).to_have_attribute("lang", "en")
        await expect(dialog.locator("[data-chrome='lang']")).to_have_attribute("lang", "zh-CN")
        large = dialog.locator("[data-chrome='large-text']")
        await expect(large).to_have_attribute("aria-pressed", "false")
        size = await summary.evaluate("el => parseFloat(getComputedStyle(el).fontSize)")
        await large.click()
        await expect(large).to_have_attribute("aria-pressed", "true")
        assert await summary.evaluate("el => parseFloat(getComputedStyle(el).fontSize)") > size
        await expect(call.page.locator("#large-text-toggle")).to_have_attribute(
            "aria-pressed", "true"
        )
        # So do the other two: the recording consent and the face-recognition consent.
        switches = call.page.locator("dialog.consent > .dialog-chrome")
        await expect(switches).to_have_count(3)
        # The normal path leaves nothing in the console.
        assert call.problems == []


async def test_a_call_ended_by_the_teller_takes_the_end_question_away(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    """The customer pressed "end call" and is still reading "确定要结束通话吗？" when the teller
    ends the call: the question is moot, and must not stand over "通话已结束"."""
    async with customer_in_call(pw, server, tmp_path) as call:
        await call.page.click("#end-call")
        await expect(call.page.locator("#confirm-yes")).to_be_visible()
        await call.teller.send({"type": "end"})
        await expect(call.page.locator("body")).to_have_attribute(
            "data-state", "ended", timeout=CALL_TIMEOUT_MS
        )
        await expect(call.page.locator("#confirm-yes")).to_have_count(0)
        await expect(call.page.locator("#ended-title")).to_be_visible()
        await expect(call.page.locator("#ended-title")).to_be_focused()
        assert call.problems == []


# The page's width beyond the window's (scrolling sideways), and whether the end button is in it.
SIDEWAYS = """() => ({
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    endButtonRight: document.getElementById('end-call').getBoundingClientRect().right,
    width: document.documentElement.clientWidth,
})"""


async def test_large_text_on_a_phone_keeps_the_call_on_the_screen(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    """Large text on a 360-pixel phone: the teller's picture and the end button stay within the
    screen; nothing needs scrolling sideways (WCAG 1.4.10)."""
    async with customer_in_call(pw, server, tmp_path) as call:
        await call.page.set_viewport_size({"width": 360, "height": 780})
        await call.page.click("#large-text-toggle")
        await expect(call.page.locator("html")).to_have_class(re.compile("large-text"))
        fits = await call.page.evaluate(SIDEWAYS)
        assert fits["overflow"] == 0, fits
        assert fits["endButtonRight"] <= fits["width"], fits
