"""The supervisor's console shows deliveries to the core bank and sends a failed one again."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Playwright, expect

from server.auth.principal import Role
from server.workflow.webhooks.config import WebhookConfig
from tests.e2e.browser import participant_page
from tests.e2e.test_call_pages import staff_login
from tests.support import server as support
from tests.support.webhook_receiver import delivery_settled, running_receiver


async def test_supervisor_sends_a_refused_delivery_again(pw: Playwright, tmp_path: Path) -> None:
    async with running_receiver(answers=[400]) as receiver:
        config = WebhookConfig(url=receiver.url, backoff_initial_seconds=0.05, poll_seconds=0.2)
        settings = support.test_settings(tmp_path / "server", webhook=config)
        async with support.running_server(settings) as server:
            keys = settings.data_dir / "keys"
            receiver.secret = (keys / "webhook-secret").read_text().strip()
            await server.user("chen", Role.SUPERVISOR, "陈主管")
            await server.user("wang", Role.TELLER, "王柜员")
            event = {"transaction": {"id": "t_e2e", "amount_minor": 880000, "currency": "CNY"}}
            await server.services.webhooks.enqueue("t_e2e", event)
            await delivery_settled(server.services.webhooks, "t_e2e", ("failed",))

            async with participant_page(pw) as page:
                await staff_login(page, server, "chen")
                row = page.locator("#webhook-rows tr[data-transaction-id='t_e2e']")
                await expect(row).to_have_attribute("data-state", "failed")
                await expect(row).to_contain_text("报送失败")
                await expect(row).to_contain_text("HTTP 400")
                await row.get_by_role("button", name="重新报送").click()
                await page.click("#confirm-yes")
                await delivery_settled(server.services.webhooks, "t_e2e", ("delivered",))
                await page.reload()
                await expect(row).to_have_attribute("data-state", "delivered")
                await expect(row).to_contain_text("已送达")
                await expect(page.locator("#webhook-disabled")).to_be_hidden()
                assert len(receiver.received) == 2 and receiver.rejected == []

            async with participant_page(pw) as page:
                await staff_login(page, server, "wang")
                await expect(page.locator("#invitation-panel")).to_be_visible()
                await expect(page.locator("#webhook-panel")).to_be_hidden()
