"""A transaction in real Chromium pages: the teller creates it in the call page, the customer
reviews it in large text and signs on the canvas with the mouse, the teller sees the signature
and approves. tests/integration/test_transactions.py covers the approval rules with bots."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

from playwright.async_api import Page, Playwright, Route, expect

from server.auth.principal import Role
from server.workflow.transactions.config import WorkflowConfig
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import CALL_TIMEOUT_MS, staff_login, teller_and_customer
from tests.integration.test_transactions import ACCOUNT, purchase, sign, signature_png
from tests.support import server as support
from tests.support.server import RunningServer


async def draw(page: Page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through `points` (fractions of the pad's width and height)."""
    box = await page.locator("#tx-sign-pad").bounding_box()
    assert box is not None
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    await page.mouse.move(*at[0])
    await page.mouse.down()
    for x, y in at[1:]:
        await page.mouse.move(x, y, steps=12)
    await page.mouse.up()


async def ink(page: Page) -> int:
    """How many of the pad's pixels are drawn on."""
    return int(
        await page.locator("#tx-sign-pad").evaluate(
            """pad => {
                const data = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
                let dark = 0;
                for (let i = 0; i < data.length; i += 4) if (data[i] < 128) dark += 1;
                return dark;
            }"""
        )
    )


async def create_limit_change(teller: Page) -> None:
    await teller.select_option("#tx-kind", "service")
    await teller.select_option("#tx-service", "limit_change")
    await teller.fill("#tx-account", "6222020200112233445")
    await teller.click("#tx-create")
    await expect(teller.locator(".tx-item .tx-state").first).to_have_attribute(
        "data-state", "awaiting_signature"
    )


async def test_the_customer_signs_on_the_pad_and_the_teller_approves(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        teller, customer = call.teller, call.customer
        await teller.select_option("#tx-kind", "service")
        await teller.select_option("#tx-service", "limit_change")
        await teller.fill("#tx-details", "每日转账限额调整为 20000.00 元")
        await teller.fill("#tx-account", "6222020200112233445")
        await teller.click("#tx-create")
        item = teller.locator(".tx-item").first
        await expect(item.locator(".tx-state")).to_have_attribute(
            "data-state", "awaiting_signature"
        )

        # The customer's page asks at once, in large text, with the account masked.
        dialog = customer.locator("dialog#tx-sign")
        await expect(dialog).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await expect(dialog).to_contain_text("调整交易限额")
        await expect(dialog).to_contain_text("****3445")
        await expect(dialog).not_to_contain_text("6222020200112233445")

        # A network blip while signing: the page rejoins and reloads the transactions, and the
        # half-drawn signature is still there.
        await draw(customer, [(0.1, 0.7), (0.3, 0.3)])
        drawn = await ink(customer)
        room = server.services.rooms.get(call.session_id)
        assert room is not None
        member = next(m for m in room.members.values() if m.role is Role.CUSTOMER)
        assert member.connection is not None
        async with customer.expect_response(
            lambda r: r.url.endswith("/transactions") and r.request.method == "GET",
            timeout=CALL_TIMEOUT_MS,
        ) as reloaded:
            await member.connection.close(1012, "restarting")
        await (await reloaded.value).finished()
        await customer.wait_for_timeout(500)
        await expect(dialog).to_be_visible()
        assert drawn > 0 and await ink(customer) == drawn
        await customer.click("#tx-sign-clear")

        await customer.click("#tx-sign-submit")
        await expect(customer.locator("#tx-sign-error")).to_contain_text("签名区是空的")
        # A dot is not a signature: the server says so, and the pad can be cleared and redone.
        box = await customer.locator("#tx-sign-pad").bounding_box()
        assert box is not None
        await customer.mouse.click(box["x"] + 40, box["y"] + 40)
        await customer.click("#tx-sign-submit")
        await expect(customer.locator("#tx-sign-error")).to_contain_text("空")
        await customer.click("#tx-sign-clear")
        await draw(customer, [(0.1, 0.7), (0.25, 0.2), (0.4, 0.75), (0.6, 0.25), (0.9, 0.6)])
        await customer.click("#tx-sign-submit")
        await expect(dialog).to_be_hidden()
        # Signed: the way back to the pad says it is only for when the teller asks.
        await expect(customer.locator("#tx-sign-open")).to_have_text(
            "重新签名（仅在客户经理请您重签时）"
        )

        # The teller sees it signed, with the signature, and approves: a service needs no
        # recording, so the teller's approval is final.
        await expect(item.locator(".tx-state")).to_have_attribute("data-state", "signed")
        await expect(item.locator(".tx-signature")).to_be_visible()
        loaded = await item.locator(".tx-signature").evaluate("img => img.naturalWidth")
        assert loaded == 1000
        await item.locator(".tx-approve").click()
        await expect(item.locator(".tx-state")).to_have_attribute("data-state", "approved")
        await expect(item.locator(".tx-delivery")).to_contain_text("审批记录已签名")
        await expect(customer.locator("#tx-sign-open")).to_be_hidden()

        # The teller rejects the next one with a reason written in the item; the customer's
        # question goes away.
        await create_limit_change(teller)
        await expect(dialog).to_be_visible()
        second = teller.locator(".tx-item").first
        await second.locator(".tx-reject").click()
        await second.locator(".tx-reject-reason").fill("不")
        await second.locator(".tx-reject-confirm").click()
        await expect(second.locator(".form-error")).to_contain_text("理由太短")
        await second.locator(".tx-reject-reason").fill("客户决定暂不调整限额")
        await second.locator(".tx-reject-confirm").click()
        await expect(second.locator(".tx-state")).to_have_attribute("data-state", "rejected")
        await expect(dialog).to_be_hidden()

        # The call ends while the customer is asked to sign: the ended page is not hidden.
        await create_limit_change(teller)
        await expect(dialog).to_be_visible()
        await teller.click("#end-call")
        await teller.click("#confirm-yes")
        await expect(customer.locator("body")).to_have_attribute(
            "data-state", "ended", timeout=CALL_TIMEOUT_MS
        )
        await expect(dialog).to_be_hidden()
        await expect(customer.locator("#ended-title")).to_be_visible()


async def test_a_supervisor_overrides_from_the_console_with_a_reason(
    pw: Playwright, tmp_path: Path
) -> None:
    # A bank that lets supervisors override every check but the signature (configurable).
    workflow = WorkflowConfig(
        overridable_checks=["identity_passed", "recording_sealed", "compliance_passed"]
    )
    settings = support.test_settings(tmp_path / "server", workflow=workflow)
    async with support.running_server(settings) as server, AsyncExitStack() as stack:
        await server.user("wang", Role.TELLER)
        await server.user("chen", Role.SUPERVISOR, "陈主管")
        teller = server.client()
        await teller.login("wang")
        created = await teller.call(
            "POST", "/api/v1/invitations", {"business": "wealth"}, expect=201
        )
        customer = server.client()
        await customer.join_link(created["invitation_url"])
        path = f"/api/v1/sessions/{created['session']['id']}/transactions"
        tid = (await teller.call("POST", path, purchase(80_000_00), expect=201))["transaction"][
            "id"
        ]
        await sign(customer, tid, signature_png())
        await teller.call("POST", f"/api/v1/transactions/{tid}/approve", {}, expect=409)

        page = await stack.enter_async_context(participant_page(pw))
        async with page.expect_response(
            lambda r: r.url.endswith("/api/v1/transactions"), timeout=CALL_TIMEOUT_MS
        ) as queued:
            await staff_login(page, server, "chen")
        item = page.locator(f".approval-item[data-id='{tid}']")
        await expect(item).to_be_visible(timeout=CALL_TIMEOUT_MS)
        # The account's last digits tell the supervisor it is the customer's; the whole number
        # is not in the page, nor in what the browser received (its network log keeps that).
        await expect(item.locator(".tx-meta")).to_contain_text("****3445")
        assert ACCOUNT not in await (await queued.value).text()
        assert ACCOUNT not in await page.content()
        await expect(item.locator(".tx-state")).to_have_attribute("data-state", "awaiting_override")
        await expect(item.locator(".check-failed")).to_have_count(3)
        await expect(item).to_contain_text("本次会话尚未完成身份核验")
        await expect(item.locator(".tx-signature")).to_be_visible()
        await item.locator(".approval-reason").fill("太短")
        await item.get_by_role("button", name="越权批准").click()
        await expect(item.locator(".form-error")).to_contain_text("理由太短")
        await item.locator(".approval-reason").fill(
            "客户为本行长期客户，主管已电话回访核实身份与意愿"
        )
        # While the override is on its way, neither it nor "reject" can be sent again: the
        # item's buttons are disabled until the server answers.
        held = asyncio.Event()

        async def hold(route: Route) -> None:
            await held.wait()
            await route.continue_()

        await page.route(f"**/api/v1/transactions/{tid}/override", hold)
        await item.get_by_role("button", name="越权批准").click()
        await expect(item.get_by_role("button", name="拒绝")).to_be_disabled()
        await expect(item.get_by_role("button", name="越权批准")).to_be_disabled()
        held.set()
        await expect(page.locator("#approvals-empty")).to_be_visible()
        detail = await teller.call("GET", f"/api/v1/transactions/{tid}")
        assert detail["transaction"]["state"] == "approved"
        assert [d["step"] for d in detail["transaction"]["approval"]["record"]["decisions"]] == [
            "maker",
            "override",
        ]
