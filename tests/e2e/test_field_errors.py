"""A field the server refuses (`400 invalid_request` with `field` and `rule`, docs/protocol.md) is
said in the page's language, naming the field as the form does, and its input is marked: a
Chinese teller never reads the server's English."""

from __future__ import annotations

from playwright.async_api import Playwright, expect

from server.auth.principal import Role
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import CALL_TIMEOUT_MS, staff_login
from tests.integration.test_transactions import ACCOUNT
from tests.support.server import RunningServer


async def test_an_amount_over_the_limit_is_said_in_chinese_at_its_input(
    pw: Playwright, server: RunningServer
) -> None:
    await server.user("wang", Role.TELLER, "王柜员")
    teller = server.client()
    await teller.login("wang")
    created = await teller.call("POST", "/api/v1/invitations", {"business": "wealth"}, expect=201)
    session_id = created["session"]["id"]
    limit_yuan = server.settings.workflow.max_amount_minor // 100

    async with participant_page(pw) as page:
        await staff_login(page, server, "wang")
        await expect(page.locator("#invitation-panel")).to_be_visible()
        await page.goto(f"{server.url}/staff/call.html?session={session_id}")
        await expect(page.locator("#tx-form")).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await page.fill("#tx-product-code", "WM-2026-088")
        # A well-formed amount (the page's own check passes it) over the bank's limit, which only
        # the server knows: it refuses transaction.amount.minor with the rule `range`.
        await page.fill("#tx-amount", str(limit_yuan * 2))
        await page.fill("#tx-account", ACCOUNT)
        async with page.expect_response(
            lambda r: r.url.endswith("/transactions") and r.request.method == "POST"
        ) as answer:
            await page.click("#tx-create")
        refusal = (await (await answer.value).json())["error"]
        assert (refusal["field"], refusal["rule"]) == ("transaction.amount.minor", "range")

        error = page.locator("#tx-form-error")
        amount = page.locator("#tx-amount")
        await expect(error).to_have_text(
            "「金额」：请输入大于 0 的金额，且不超过本服务的单笔上限。"
        )
        await expect(amount).to_have_attribute("aria-invalid", "true")
        await expect(amount).to_have_attribute("aria-errormessage", "tx-form-error")
        await expect(amount).to_be_focused()

        # The sentence follows a language switch, as every text of the page does.
        await page.click("#lang-toggle")
        await expect(error).to_have_text(
            "Amount: enter an amount above 0 and within this service’s limit for one transaction."
        )
        await page.click("#lang-toggle")
        await expect(error).to_contain_text("「金额」")

        # Corrected, the mark goes, and the transaction is made.
        await amount.fill("1000")
        await expect(amount).not_to_have_attribute("aria-invalid", "true")
        await page.click("#tx-create")
        await expect(page.locator(".tx-item .tx-state").first).to_have_attribute(
            "data-state", "awaiting_signature"
        )
        await expect(error).to_be_empty()
