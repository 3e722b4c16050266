"""The whole product in Chromium, as issue 7 tells it.

A customer queues on the public entry page; a teller with the wealth skill takes them; identity
passes (card uploads, face, liveness on the customer's own camera); the whole wealth-product
script is recorded and the after-call analysis passes it; the customer signs the purchase at the
signature moment; the teller approves; the core bank's webhook receives the signed transaction;
an auditor finds the archive, sees it verified, plays the risk-disclosure moment, exports it,
and the export verifies offline.

The second test is the same sale with a misleading risk disclosure: the teller is warned live
that the required phrases were not heard, its report fails, so the teller cannot approve, and
only a supervisor's override with a written reason does.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from playwright.async_api import Page, Playwright, expect

from recorder.seal.signing import load_public_keys
from server.auth.principal import Role
from server.identity.config import IdentityConfig
from server.identity.liveness import Challenge
from server.workflow.transactions.approvals import verify_approval
from tests.e2e.browser import participant_page, wait_frames_advance
from tests.e2e.test_call_pages import CALL_TIMEOUT_MS, in_call, staff_login, tile
from tests.e2e.test_identity_pages import (
    SPEC,
    STEP_TIMEOUT_MS,
    Call,
    start_with_consent,
    step_row,
    upload_card,
)
from tests.e2e.test_queue_pages import queue_as_customer
from tests.e2e.test_transaction_pages import draw
from tests.e2e.test_whole_sale import (
    FPS,
    SALE,
    Sale,
    analysis_report,
    assert_compliant,
    record_sale,
    sale_call,
    speaking_participant,
    still_face,
)
from tests.fixtures.idcards import load_face
from tests.fixtures.liveness import left_turn_loop
from tests.integration.test_recording import _vteller
from tests.support import server as support
from tests.support.webhook_receiver import Receiver, running_receiver

AUDIT_TIMEOUT_MS = 60_000
# Below the four-eyes threshold: the teller's approval is final once every check passes.
AMOUNT = "20000.00"


def _settings(data_dir: Path, receiver: Receiver, **overrides: Any) -> Any:
    return support.test_settings(
        data_dir,
        compliance_analysis=True,
        bank_name=SALE["values"]["bank_name"],
        webhook={"url": receiver.url, "backoff_initial_seconds": 0.5},
        **overrides,
    )


def _trust_server(receiver: Receiver, data_dir: Path) -> None:
    """The core bank is given the webhook secret and the service's public keys."""
    receiver.secret = (data_dir / "keys" / "webhook-secret").read_text().strip()
    receiver.keys_dir = data_dir / "keys" / "public"


def warned_live_of_the_missing_disclosure(sale: Sale) -> Any:
    """While the moment is open, the teller's page says which required phrases were not heard
    (the server recognised the misleading reading from the teller's microphone)."""

    async def warned() -> None:
        warning = sale.teller.locator(
            "#live-warnings li.live-warning[data-code='disclosure_not_heard']"
            "[data-moment='risk_disclosure']"
        )
        await expect(warning).to_be_visible(timeout=CALL_TIMEOUT_MS)
        for phrase in ("理财非存款", "产品有风险", "投资须谨慎"):
            await expect(warning).to_contain_text(phrase)

    return warned


def purchase_signed_at_the_signature_moment(sale: Sale) -> Any:
    """The teller creates the purchase and the customer signs it, while the recording runs."""

    async def create_and_sign() -> None:
        teller, customer = sale.teller, sale.customer
        await teller.select_option("#tx-kind", "purchase")
        await teller.select_option("#tx-product-type", "wealth")
        await teller.fill("#tx-product-code", "WM-2026-088")
        await teller.fill("#tx-product-name", SALE["values"]["product_name"])
        await teller.fill("#tx-amount", AMOUNT)
        await teller.fill("#tx-account", "6222020200112233445")
        await teller.click("#tx-create")
        dialog = customer.locator("dialog#tx-sign")
        await expect(dialog).to_be_visible(timeout=CALL_TIMEOUT_MS)
        await expect(dialog).to_contain_text(SALE["values"]["product_name"])
        await draw(customer, [(0.1, 0.7), (0.25, 0.2), (0.4, 0.75), (0.6, 0.25), (0.9, 0.6)])
        await customer.click("#tx-sign-submit")
        await expect(dialog).to_be_hidden()
        state = teller.locator(".tx-item").first.locator(".tx-state")
        await expect(state).to_have_attribute("data-state", "signed")

    return create_and_sign


async def transaction_id(teller: Page) -> str:
    tid = await teller.locator(".tx-item").first.get_attribute("data-id")
    assert tid
    return tid


async def test_from_the_queue_to_the_auditor(pw: Playwright, tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    # Left turns only: the looped fake camera cannot follow the prompts (left_turn_loop).
    identity = IdentityConfig(liveness_challenges=(Challenge.TURN_LEFT,), challenge_seconds=10.0)
    async with running_receiver() as receiver:
        settings = _settings(data_dir, receiver, identity=identity)
        async with support.running_server(settings) as server, AsyncExitStack() as stack:
            _trust_server(receiver, data_dir)
            teller_id = await server.user("wang", Role.TELLER, "王芳")
            await server.user("chen", Role.SUPERVISOR, "陈主管")
            await server.user("audit1", Role.AUDITOR, "审计员甲")
            supervisor = server.client()
            await supervisor.login("chen")
            await supervisor.call(
                "POST", f"/api/v1/queue/tellers/{teller_id}/skills", {"skills": ["wealth"]}
            )

            # The customer's camera: a real face turning left, again and again (looped).
            customer = await speaking_participant(
                pw, stack, tmp_path, "customer", left_turn_loop(load_face("obama.jpg"), FPS)
            )
            teller = await speaking_participant(
                pw, stack, tmp_path, "teller", still_face("biden.jpg")
            )
            await queue_as_customer(customer, server, "wealth")
            await staff_login(teller, server, "wang")
            await teller.click("#queue-available")
            await teller.click("#queue-take")
            await expect(teller).to_have_url(re.compile(r"/staff/call\.html\?session=s_"))
            session_id = teller.url.rsplit("=", 1)[1]
            await expect(customer.locator("body")).to_have_attribute("data-state", "device-check")
            await customer.click("#enter-btn")
            await in_call(customer)
            await in_call(teller)
            await wait_frames_advance(teller, tile("customer", "camera"))

            call = Call(teller, customer, session_id)
            await start_with_consent(call)
            await upload_card(call, tmp_path, "front")
            await upload_card(call, tmp_path, "back")
            await teller.click(".identity-run[data-step='face']")
            await expect(step_row(teller, "face")).to_have_attribute(
                "data-status", "passed", timeout=STEP_TIMEOUT_MS
            )
            await teller.click(".identity-run[data-step='liveness']")
            await expect(teller.locator("#identity-state")).to_have_attribute(
                "data-state", "passed", timeout=STEP_TIMEOUT_MS
            )

            sale = Sale(teller, customer, session_id)
            await record_sale(
                sale, during={"signature": purchase_signed_at_the_signature_moment(sale)}
            )
            assert_compliant(
                await analysis_report(teller, session_id),
                [step["moment"] for step in SALE["moments"]],
            )

            tid = await transaction_id(teller)
            item = teller.locator(".tx-item").first
            await item.locator(".tx-approve").click()
            await expect(item.locator(".tx-state")).to_have_attribute("data-state", "approved")
            await receiver.wait_for(1, timeout=60.0)
            (delivery,) = receiver.for_transaction(tid)
            # The core bank can check the approval record itself with the published keys.
            record = verify_approval(
                delivery.envelope["event"], load_public_keys(data_dir / "keys" / "public")
            )
            assert record["transaction"]["id"] == tid
            assert record["identity"]["decision"] == "pass"
            assert record["compliance"]["decision"] == "pass"
            # The teller's page follows the delivery without a reload.
            await expect(item.locator(".tx-delivery")).to_contain_text(
                "已送达", timeout=CALL_TIMEOUT_MS
            )

            archive_id = record["recording"]["archive_id"]
            auditor = await stack.enter_async_context(participant_page(pw))
            package = await audit_the_archive(auditor, server, archive_id, tid, tmp_path)
            # The approval is bound to exactly the recording the auditor exported.
            manifest = (package / "manifest.json").read_bytes()
            assert record["recording"]["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()


async def audit_the_archive(
    page: Page, server: support.RunningServer, archive_id: str, tid: str, tmp_path: Path
) -> Path:
    """Find it by the customer's ID number, see it verified, see the customer's signature of
    transaction `tid` as sealed in the archive, play risk disclosure, export it; returns the
    exported package, verified offline."""
    await staff_login(page, server, "audit1")
    await page.click("#auditor-link")
    await expect(page.locator("#search-view")).to_be_visible()
    await page.fill("#id-number", SPEC.id_number)
    await page.click("#search-submit")
    row = page.locator(f"tr[data-archive-id='{archive_id}']")
    await expect(row).to_be_visible(timeout=AUDIT_TIMEOUT_MS)
    await row.locator("button.open-archive").click()
    status = page.locator("#verify-status")
    await expect(status).to_have_attribute("data-result", "verified", timeout=AUDIT_TIMEOUT_MS)

    signed = page.locator(f"#transactions li[data-transaction='{tid}']")
    await signed.locator("button.show-signature").click()
    image = signed.locator("img.signature-image")
    await expect(image).to_be_visible()
    await page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0",
        arg=await image.element_handle(),
        timeout=AUDIT_TIMEOUT_MS,
    )

    await page.click("#play")
    await page.wait_for_function(
        "() => { const v = document.querySelector('video[data-view=customer]');"
        " return v && v.readyState >= 2 && v.videoWidth > 0; }",
        timeout=AUDIT_TIMEOUT_MS,
    )
    moment = page.locator("li[data-mark='risk_disclosure.start']")
    target = int(await moment.get_attribute("data-ms") or 0) / 1000
    # Paused, so that where the players are is where the jump put them, not where playing got to.
    await page.evaluate(
        "() => document.querySelectorAll('#player-grid video').forEach(v => v.pause())"
    )
    await moment.locator("button.jump").click()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('#player-grid video')].every(v => !v.seeking)",
        timeout=AUDIT_TIMEOUT_MS,
    )
    positions = await page.evaluate(
        "() => [...document.querySelectorAll('#player-grid video')].map(v => v.currentTime)"
    )
    assert positions and all(abs(p - target) < 1.0 for p in positions), (positions, target)
    await expect(page.locator("#watermark")).to_contain_text("audit1")

    async with page.expect_download() as download_info:
        await page.click("#export")
    saved = tmp_path / "package.zip"
    await (await download_info.value).save_as(saved)
    with zipfile.ZipFile(saved) as package:
        package.extractall(tmp_path / "package")
    offline = await _vteller(
        tmp_path / "elsewhere", "verify", str(tmp_path / "package" / archive_id)
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert f"transaction {tid}: signature image in att-000000.bin (image/png)" in offline.stdout
    return tmp_path / "package" / archive_id


# A sale whose risk disclosure is misleading (保本, 没有风险): the report fails.
MISLEADING = [
    {"moment": "consent", "teller": "teller_consent.wav", "customer": "customer_agree.wav"},
    {
        "moment": "risk_disclosure",
        "teller": "teller_misleading.wav",
        "customer": "customer_clear.wav",
    },
    {"moment": "signature", "teller": "teller_signature.wav", "customer": "customer_signature.wav"},
]


async def test_a_failing_report_blocks_approval_until_a_supervisor_overrides(
    pw: Playwright, tmp_path: Path
) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    async with running_receiver() as receiver:
        settings = _settings(data_dir, receiver, live_speech=True)
        async with (
            support.running_server(settings) as server,
            AsyncExitStack() as stack,
            sale_call(pw, server, tmp_path, stack) as sale,
        ):
            _trust_server(receiver, data_dir)
            await server.user("chen", Role.SUPERVISOR, "陈主管")
            await record_sale(
                sale,
                MISLEADING,
                during={
                    "risk_disclosure": warned_live_of_the_missing_disclosure(sale),
                    "signature": purchase_signed_at_the_signature_moment(sale),
                },
            )
            report = await analysis_report(sale.teller, sale.session_id)
            assert report["decision"] == "fail"
            disclosure = next(m for m in report["moments"] if m["id"] == "risk_disclosure")
            assert disclosure["decision"] == "fail"

            # The teller's approval is refused, and the page says which checks failed.
            tid = await transaction_id(sale.teller)
            item = sale.teller.locator(".tx-item").first
            await item.locator(".tx-approve").click()
            await expect(item.locator(".tx-state")).to_have_attribute(
                "data-state", "awaiting_override"
            )
            assert not receiver.received

            page = await stack.enter_async_context(participant_page(pw))
            await staff_login(page, server, "chen")
            pending = page.locator(f".approval-item[data-id='{tid}']")
            await expect(pending).to_be_visible(timeout=CALL_TIMEOUT_MS)
            await expect(pending.locator(".check-failed")).not_to_have_count(0)
            await pending.locator(".approval-reason").fill(
                "主管已复听录音，风险揭示口误已当场更正并由客户再次确认"
            )
            await pending.get_by_role("button", name="越权批准").click()
            await expect(page.locator("#approvals-empty")).to_be_visible()
            await receiver.wait_for(1, timeout=60.0)
            (delivery,) = receiver.for_transaction(tid)
            decisions = delivery.envelope["event"]["record"]["decisions"]
            assert [d["step"] for d in decisions] == ["maker", "override"]
