"""The queue in real Chromium pages: a customer queues on the entry page, a teller takes them and
both land in the new session's call; a supervisor routes from the dashboard; a callback."""

from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack
from pathlib import Path

from playwright.async_api import Page, Playwright, Route, expect

from server.auth.principal import Role
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import assert_sees, in_call, staff_login
from tests.fixtures.media import participant_media
from tests.support.server import RunningServer


async def queue_as_customer(page: Page, server: RunningServer, topic: str) -> None:
    await page.goto(f"{server.url}/visit/")
    await expect(page.locator("body")).to_have_attribute("data-state", "choose")
    await page.check("#elderly")
    await page.click(f".queue-topic[data-topic='{topic}']")
    await expect(page.locator("body")).to_have_attribute("data-state", "waiting")


async def test_customer_queues_and_the_teller_takes_them_into_a_call(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    await server.user("wang", Role.TELLER, "王柜员")
    async with AsyncExitStack() as stack:
        customer = await stack.enter_async_context(
            participant_page(pw, participant_media(tmp_path, "customer"))
        )
        teller = await stack.enter_async_context(
            participant_page(pw, participant_media(tmp_path, "teller"))
        )
        await queue_as_customer(customer, server, "cards")
        await expect(customer.locator("#position")).to_have_text("下一位就是您")
        await expect(customer.locator("#waiting-topic")).to_have_text(
            "办理业务：银行卡和账户（优先服务）"
        )
        # Nobody on duty yet: the page offers a callback instead of an estimate.
        await expect(customer.locator("#estimate")).to_contain_text("暂时没有客户经理在线")

        await staff_login(teller, server, "wang")
        await expect(teller.locator("#queue-panel")).to_be_visible()
        await expect(teller.locator("#queue-status")).to_have_text("离开")
        await teller.click("#queue-available")
        await expect(teller.locator("#queue-status")).to_have_text("空闲")
        # The waiting page follows live: one teller on duty, the default handling time.
        await expect(customer.locator("#estimate")).to_have_text("预计等待约 5 分钟")
        await expect(teller.locator("#queue-counts")).to_contain_text("综合业务 1 位")

        await teller.click("#queue-take")
        await expect(teller).to_have_url(re.compile(r"/staff/call\.html\?session=s_"))
        await expect(customer.locator("body")).to_have_attribute("data-state", "device-check")
        assert "/join/" in customer.url
        await customer.click("#enter-btn")
        await in_call(customer)
        await in_call(teller)
        await assert_sees(customer, "teller")
        await assert_sees(teller, "customer")
        session = await server.services.sessions.require(teller.url.rsplit("=", 1)[1])
    assert session.business == "general" and session.teller.username == "wang"
    assert {p.role for p in session.participants} == {"teller", "customer"}


async def test_supervisor_routes_and_a_customer_asks_for_a_callback(
    pw: Playwright, server: RunningServer
) -> None:
    await server.user("chen", Role.SUPERVISOR, "陈主管")
    await server.user("wang", Role.TELLER, "王柜员")
    await server.user("li", Role.TELLER, "李柜员")
    async with participant_page(pw) as customer, participant_page(pw) as supervisor:
        await customer.goto(f"{server.url}/visit/")
        await customer.click(".queue-topic[data-topic='wealth']")
        await expect(customer.locator("#position")).to_have_text("下一位就是您")

        await staff_login(supervisor, server, "chen")
        board = supervisor.locator("#queue-dashboard")
        await expect(board).to_be_visible()
        li = board.locator("#queue-tellers tr", has_text="李柜员")
        await expect(li).to_contain_text("离开")
        await li.locator("input[value='wealth']").check()
        await li.get_by_role("button", name="保存").click()
        await expect(supervisor.locator(".toast")).to_contain_text("已保存")

        ticket = board.locator("#queue-tickets tr")
        await expect(ticket).to_contain_text("理财产品")
        await expect(ticket.locator("option")).to_have_text(["李柜员 (离开)"])
        await ticket.get_by_role("button", name="指派").click()
        await expect(ticket).to_contain_text("李柜员")

        await customer.click("#show-callback")
        await customer.fill("#phone", "12345")
        await customer.click("#callback-submit")
        await expect(customer.locator("#callback-error")).to_contain_text("请输入正确的手机号码")
        await customer.fill("#phone", "138 0013 8000")
        await customer.click("#callback-submit")
        await expect(customer.locator("body")).to_have_attribute("data-state", "callback-done")
        await expect(customer.locator("#callback-done-message")).to_contain_text("*******8000")

        await expect(board.locator("#queue-callback-rows tr")).to_contain_text("*******8000")
        await expect(board.locator("#queue-tickets-empty")).to_be_visible()


async def test_leaving_the_queue_is_asked_first(pw: Playwright, server: RunningServer) -> None:
    async with participant_page(pw) as customer:
        await customer.goto(f"{server.url}/visit/")
        await customer.click(".queue-topic[data-topic='insurance']")
        await expect(customer.locator("body")).to_have_attribute("data-state", "waiting")
        await customer.click("#leave")
        await expect(customer.locator("#confirm-title")).to_have_text("确定要离开排队吗？")
        await customer.click("#confirm-no")
        await expect(customer.locator("body")).to_have_attribute("data-state", "waiting")
        await customer.click("#leave")
        await customer.click("#confirm-yes")
        await expect(customer.locator("body")).to_have_attribute("data-state", "left")


async def test_take_next_stays_disabled_until_the_server_answers(
    pw: Playwright, server: RunningServer
) -> None:
    # The panel refreshes every 3 s; one that landed while "take next" was on its way enabled
    # the button again, and a second click asked for another customer (refused: "you are still
    # in a call", shown as the page left for the call).
    await server.user("wang", Role.TELLER, "王柜员")
    async with participant_page(pw) as customer, participant_page(pw) as teller:
        await queue_as_customer(customer, server, "cards")
        await staff_login(teller, server, "wang")
        await teller.click("#queue-available")
        take = teller.locator("#queue-take")
        await expect(take).to_be_enabled()

        held = asyncio.Event()

        async def hold(route: Route) -> None:
            await held.wait()
            await route.continue_()

        await teller.route("**/api/v1/queue/take", hold)
        await take.click()
        for _ in range(2):  # the second refresh's answer: the first one has been drawn
            async with teller.expect_response(lambda r: r.url.endswith("/api/v1/queue/me")):
                pass
        await expect(take).to_be_disabled()
        held.set()
        await expect(teller).to_have_url(re.compile(r"/staff/call\.html\?session=s_"))
