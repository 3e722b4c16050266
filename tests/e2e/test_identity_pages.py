"""Identity verification (身份核验) in real Chromium pages: the teller's panel, the customer's page.

The customer's fake camera is a y4m made from a real photo (tests/fixtures/liveness.py): the head
turning to the customer's left, again and again, for the happy path, a still frame for a photo
replay, which must fail.
The card sides are uploaded through the customer page's file input, as a customer without a card
in front of the camera would do. tests/integration/test_identity.py drives the same flow with bots.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Locator, Page, Playwright, WebSocket, expect

from server.auth.principal import Role
from server.identity.config import IdentityConfig
from server.identity.idcard import mask_id_number
from server.identity.liveness import Challenge
from tests.e2e.browser import participant_page, wait_frames_advance
from tests.e2e.test_call_pages import create_invitation, in_call, staff_login
from tests.fixtures.idcards import (
    VALID_SPECS,
    encode_jpeg,
    load_face,
    on_table,
    render_back,
    render_front,
)
from tests.fixtures.liveness import left_turn_loop, static_sequence, write_liveness_y4m
from tests.fixtures.media import participant_media
from tests.support import server as support

SPEC = VALID_SPECS[2]  # its portrait is obama2.jpg; the live face is obama.jpg: same person
FPS = 15
# A step's result: OCR of an upload takes a few seconds on a busy 2-core box, and liveness runs
# 2-3 challenges of up to `challenge_seconds` each.
STEP_TIMEOUT_MS = 60_000
CUSTOMER_CAMERA = ".tile[data-role='customer'][data-source='camera'] video"


@asynccontextmanager
async def identity_server(tmp_path: Path, **identity: Any) -> AsyncIterator[support.RunningServer]:
    # Turns only: the default engine (YuNet) gives 5 landmarks, which judge turns, not blinks.
    turns = (Challenge.TURN_LEFT, Challenge.TURN_RIGHT)
    config = IdentityConfig(**({"liveness_challenges": turns} | identity))
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    async with support.running_server(support.test_settings(data_dir, identity=config)) as running:
        yield running


class Call:
    def __init__(self, teller: Page, customer: Page, session_id: str) -> None:
        self.teller = teller
        self.customer = customer
        self.session_id = session_id
        # Every WebSocket frame the teller's page got and sent.
        self.teller_received: list[str | bytes] = []
        self.teller_sent: list[str | bytes] = []

    def record_teller_frames(self, ws: WebSocket) -> None:
        ws.on("framereceived", self._teller_received)
        ws.on("framesent", self._teller_sent)

    def _teller_received(self, payload: str | bytes) -> None:
        self.teller_received.append(payload)

    def _teller_sent(self, payload: str | bytes) -> None:
        self.teller_sent.append(payload)


@asynccontextmanager
async def call_with_camera(
    pw: Playwright,
    server: support.RunningServer,
    tmp_path: Path,
    frames: Sequence[np.ndarray],
    stack: AsyncExitStack,
) -> AsyncIterator[Call]:
    """A teller and a customer in a call, the customer's camera playing `frames` (looped)."""
    media_dir = tmp_path / "media"
    camera = write_liveness_y4m(tmp_path / "customer-face.y4m", frames, FPS)
    customer_media = dataclasses.replace(participant_media(media_dir, "customer"), video=camera)
    await server.user("wang", Role.TELLER, "王柜员")
    teller = await stack.enter_async_context(
        participant_page(pw, participant_media(media_dir, "teller"))
    )
    customer = await stack.enter_async_context(participant_page(pw, customer_media))
    await staff_login(teller, server, "wang")
    url, session_id = await create_invitation(teller)
    await customer.goto(url)
    await customer.click("#enter-btn")
    await expect(customer.locator("body")).to_have_attribute("data-state", "lobby")
    call = Call(teller, customer, session_id)
    teller.on("websocket", call.record_teller_frames)
    await teller.goto(f"{server.url}/staff/call.html?session={session_id}")
    await in_call(teller)
    await in_call(customer)
    yield call


def card_photo(tmp_path: Path, side: str) -> Path:
    """A photo of the card lying on a desk, as the customer's phone or computer has it."""
    card = render_front(SPEC) if side == "front" else render_back(SPEC)
    path = tmp_path / f"card-{side}.jpg"
    path.write_bytes(encode_jpeg(on_table(card)))
    return path


def step_row(page: Page, step: str) -> Locator:
    return page.locator(f".identity-step[data-step='{step}']")


async def start_with_consent(call: Call) -> None:
    await call.teller.click("#identity-start")
    consent = call.customer.locator("dialog#identity-consent")
    await expect(consent).to_be_visible()
    await expect(consent).to_contain_text("人脸识别")
    await call.customer.click("#identity-consent-yes")
    await expect(consent).to_be_hidden()
    await expect(call.teller.locator("#identity-state")).to_have_attribute(
        "data-state", "in_progress"
    )


async def upload_card(call: Call, tmp_path: Path, side: str) -> None:
    """The teller runs the card step; the customer uploads a photo of that side instead."""
    step = f"card_{side}"
    await call.teller.click(f".identity-run[data-step='{step}']")
    prompt = call.customer.locator("#identity-prompt")
    await expect(prompt).to_be_visible()
    await expect(prompt).to_have_attribute("data-step", step)
    await expect(call.customer.locator("#identity-upload-box")).to_be_visible()
    await call.customer.set_input_files("#identity-upload", card_photo(tmp_path, side))
    await expect(step_row(call.teller, step)).to_have_attribute(
        "data-status", "passed", timeout=STEP_TIMEOUT_MS
    )
    await expect(call.customer.locator("#identity-upload-box")).to_be_hidden()


# Every text and step #identity-prompt shows, in order: a liveness challenge may pass in about a
# second, too short to be sure an expect() poll sees it.
RECORD_PROMPTS_JS = """() => {
    const prompt = document.getElementById('identity-prompt');
    const text = document.getElementById('identity-prompt-text');
    window.__prompts = [];
    const note = () => {
        const entry = [prompt.hidden ? '' : prompt.dataset.step, text.textContent];
        const last = window.__prompts[window.__prompts.length - 1];
        if (!last || last[0] !== entry[0] || last[1] !== entry[1]) window.__prompts.push(entry);
    };
    new MutationObserver(note).observe(prompt, {
        subtree: true, childList: true, characterData: true, attributes: true,
    });
}"""


async def test_customer_passes_identity_verification_in_chromium(
    pw: Playwright, tmp_path: Path
) -> None:
    # Only left turns are asked (left_turn_loop says why): one every 2.2 s, looped by Chromium
    # from wherever it is.
    face = left_turn_loop(load_face("obama.jpg"), FPS)
    async with (
        identity_server(
            tmp_path, challenge_seconds=10.0, liveness_challenges=(Challenge.TURN_LEFT,)
        ) as server,
        AsyncExitStack() as stack,
        call_with_camera(pw, server, tmp_path, face, stack) as call,
    ):
        teller, customer = call.teller, call.customer
        await start_with_consent(call)

        await upload_card(call, tmp_path, "front")
        fields = teller.locator("#identity-fields")
        await expect(fields).to_be_visible()
        # Masked by the server: the full number is not in the page, nor in what it received.
        await expect(fields.locator("dd[data-field='id_number']")).to_have_text(
            mask_id_number(SPEC.id_number)
        )
        await expect(fields.locator("dd[data-field='id_number']")).to_have_text(
            re.compile(r"^\d{6}\*{8}\d{3}[\dX]$")
        )
        await expect(fields.locator("dd[data-field='address']")).to_have_text(
            "广东省深圳市南山区****"
        )
        await expect(fields.locator("dd[data-field='name']")).to_have_text(SPEC.name)
        assert SPEC.id_number not in await teller.content()
        assert SPEC.address not in await teller.content()
        received = [f for f in call.teller_received if isinstance(f, str)]
        assert any(mask_id_number(SPEC.id_number) in f for f in received)
        assert not any(SPEC.id_number in f or SPEC.address in f for f in received)

        await upload_card(call, tmp_path, "back")
        await expect(fields.locator("dd[data-field='issuing_authority']")).to_have_text(
            SPEC.authority
        )

        # The live face, from the customer's fake camera, against the card's portrait.
        await wait_frames_advance(teller, CUSTOMER_CAMERA)
        await teller.click(".identity-run[data-step='face']")
        await expect(step_row(teller, "face")).to_have_attribute(
            "data-status", "passed", timeout=STEP_TIMEOUT_MS
        )

        await customer.evaluate(RECORD_PROMPTS_JS)
        await teller.click(".identity-run[data-step='liveness']")
        await expect(teller.locator("#identity-state")).to_have_attribute(
            "data-state", "passed", timeout=STEP_TIMEOUT_MS
        )
        for step in ("card_front", "card_back", "face", "liveness"):
            await expect(step_row(teller, step)).to_have_attribute("data-status", "passed")
        prompt = customer.locator("#identity-prompt")
        await expect(prompt).to_have_attribute("data-step", "passed")
        await expect(customer.locator("#identity-prompt-text")).to_have_text("身份核验通过")

        # While liveness ran, the customer was told which way to turn, one movement at a time.
        shown: list[list[str]] = await customer.evaluate("() => window.__prompts")
        challenges = [text for step, text in shown if step == "liveness" and "转头" in text]
        assert challenges, shown
        assert challenges[0].startswith("动作 1/"), shown

        # The customer's page never shows what the card says.
        await expect(customer.locator("#identity-fields")).to_have_count(0)
        customer_text = await customer.locator("body").inner_text()
        assert SPEC.id_number not in customer_text
        assert SPEC.name not in customer_text
        assert SPEC.id_number not in await customer.content()

        records = server.services.identity.records
        rows = await records.for_session(call.session_id)
        assert [(r.step, r.outcome) for r in rows] == [
            ("card_front", "pass"),
            ("card_back", "pass"),
            ("face", "pass"),
            ("liveness", "pass"),
        ]
        for row in rows[:2]:  # the photos came through the page's upload, not the camera
            assert (await records.open(row.id)).detail["source"] == "upload"


async def test_a_photo_replay_as_the_camera_fails_liveness(pw: Playwright, tmp_path: Path) -> None:
    photo = static_sequence(load_face("obama.jpg"), FPS, 2.0)
    # Two attempts allowed, one used: the customer is asked to try again (no manual review yet).
    async with (
        identity_server(tmp_path, challenge_seconds=5.0, max_attempts=2) as server,
        AsyncExitStack() as stack,
        call_with_camera(pw, server, tmp_path, photo, stack) as call,
    ):
        teller, customer = call.teller, call.customer
        await start_with_consent(call)
        await upload_card(call, tmp_path, "front")

        await teller.click(".identity-run[data-step='liveness']")
        await expect(customer.locator("#identity-prompt")).to_have_attribute(
            "data-step", "liveness"
        )
        row = step_row(teller, "liveness")
        await expect(row).to_have_attribute("data-status", "failed", timeout=STEP_TIMEOUT_MS)
        await expect(row.locator(".identity-step-status")).to_contain_text("1/2")
        reason = row.locator(".identity-step-message")
        await expect(reason).not_to_be_empty()
        await expect(teller.locator("#identity-state")).to_have_attribute(
            "data-state", "in_progress"
        )

        # The customer is told the movement check failed, and why.
        prompt = customer.locator("#identity-prompt")
        await expect(prompt).to_be_visible()
        await expect(customer.locator("#identity-prompt-text")).to_have_text("动作检测未通过")
        hint = customer.locator("#identity-prompt-hint")
        await expect(hint).to_have_text(re.compile(r"\S"))
        assert await hint.inner_text() == await reason.inner_text()  # the server's own words

        rows = await server.services.identity.records.for_session(call.session_id)
        assert [(r.step, r.outcome, r.reason) for r in rows] == [
            ("card_front", "pass", "passed"),
            ("liveness", "fail", "challenge_not_completed"),
        ]


async def test_a_double_click_starts_identity_verification_once(
    pw: Playwright, tmp_path: Path
) -> None:
    # A teller with a customer waiting clicks twice: the second click sent identity_start again,
    # and its refusal came up as the server's English text on a Chinese page.
    face = static_sequence(load_face("obama.jpg"), FPS, 1.0)
    async with (
        identity_server(tmp_path) as server,
        AsyncExitStack() as stack,
        call_with_camera(pw, server, tmp_path, face, stack) as call,
    ):
        teller = call.teller
        start = teller.locator("#identity-start")
        await expect(start).to_be_enabled()
        await start.dblclick()
        await expect(call.customer.locator("dialog#identity-consent")).to_be_visible()
        await expect(teller.locator("#identity-state")).to_have_attribute(
            "data-state", "awaiting_consent"
        )
        starts = [f for f in call.teller_sent if isinstance(f, str) and "identity_start" in f]
        assert len(starts) == 1, starts
        await call.customer.click("#identity-consent-yes")
        await expect(teller.locator("#identity-state")).to_have_attribute(
            "data-state", "in_progress"
        )
        await expect(teller.locator(".toast-error")).to_have_count(0)
        # A refusal all the same (the customer left in between) is worded for that request.
        shown = await teller.evaluate(
            """async () => (await import('/static/common/ui.js')).errorText({
                code: 'out_of_order', ref: 'identity_start',
                message: 'The customer must be in the call.'})"""
        )
        assert shown.startswith("身份核验现在不能开始"), shown
