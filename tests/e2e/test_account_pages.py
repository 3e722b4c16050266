"""The supervisor's staff accounts in real Chromium, in Chinese: a teller locked out after wrong
passwords is unlocked from the page, and a leaver's account disabled with a reason after a
confirmation; a teller's console has no such panel."""

from __future__ import annotations

from playwright.async_api import Playwright, expect

from server.auth.principal import Role
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import staff_login
from tests.integration.test_account_admin import entries, login_refused
from tests.support.server import PASSWORD, RunningServer


async def test_supervisor_unlocks_a_locked_out_teller_and_disables_a_leaver(
    pw: Playwright, server: RunningServer
) -> None:
    chen_id = await server.user("chen", Role.SUPERVISOR, "陈主管")
    await server.user("wang", Role.TELLER, "王柜员")
    await server.user("li", Role.TELLER, "李柜员")
    await server.user("liu", Role.SUPERVISOR, "刘主管")
    for n in range(server.settings.login_max_failures_per_user):
        await login_refused(server, "wang", f"wrong-guess-{n}")
    assert (await login_refused(server, "wang", PASSWORD))["code"] == "rate_limited"

    async with participant_page(pw) as page:
        await staff_login(page, server, "chen")
        panel = page.locator("#accounts-panel")
        await expect(panel).to_be_visible()
        await expect(panel.locator("h2")).to_have_text("员工账号")
        wang = page.locator("#account-rows tr[data-username='wang']")
        await expect(wang).to_have_attribute("data-state", "locked")
        await expect(wang).to_contain_text("王柜员")
        await expect(wang).to_contain_text("客户经理")
        await expect(wang).to_contain_text("密码错误次数过多，已锁定至")
        # Only tellers and experts: not the supervisor themselves, nor a peer.
        await expect(page.locator("#account-rows tr")).to_have_count(2)

        await wang.get_by_role("button", name="解除锁定").click()
        await expect(page.locator(".toast").last).to_contain_text("已解除王柜员的登录锁定")
        await expect(wang).to_have_attribute("data-state", "active")
        await expect(wang).to_contain_text("正常")
        await server.client().login("wang")

        li = page.locator("#account-rows tr[data-username='li']")
        await li.get_by_role("button", name="停用").click()
        form = page.locator("#account-disable-form")
        await expect(form.locator("h3")).to_have_text("停用李柜员的账号")
        await page.fill("#account-reason", "离职")
        await form.get_by_role("button", name="停用账号").click()
        await expect(page.locator("#account-disable-error")).to_have_text(
            "请写明停用原因（至少 4 个字）。"
        )
        await page.fill("#account-reason", "已离职，今日生效")
        await form.get_by_role("button", name="停用账号").click()
        await expect(page.locator("#confirm-title")).to_have_text("确定停用这个账号？")
        await page.click("#confirm-yes")
        await expect(form).to_be_hidden()
        await expect(li).to_have_attribute("data-state", "disabled")
        await expect(li).to_contain_text("已停用")
        await expect(li).to_contain_text("已离职，今日生效")
        await expect(li.get_by_role("button", name="重新启用")).to_be_visible()

    assert (await login_refused(server, "li", PASSWORD))["code"] == "account_disabled"
    [disabled] = await entries(server, "admin.user_disabled")
    assert (disabled.actor, disabled.actor_role, disabled.target) == (chen_id, "supervisor", "li")
    assert disabled.detail["reason"] == "已离职，今日生效"
    [unlocked] = await entries(server, "admin.user_unlocked")
    assert (unlocked.actor, unlocked.target) == (chen_id, "wang")

    async with participant_page(pw) as page:
        await staff_login(page, server, "wang")
        await expect(page.locator("#invitation-panel")).to_be_visible()
        await expect(page.locator("#accounts-panel")).to_be_hidden()
