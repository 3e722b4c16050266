"""Customers and staff in real Chromium pages, through the real server: the call user stories.

Each participant is its own Chromium with a fake camera of its own colour and a microphone of its
own pitch, so each assertion says whose media arrived where.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from playwright.async_api import Page, Playwright, expect
from pydantic import SecretStr

from server.auth.principal import Role
from server.cli import _parser
from server.sfu.decoded import DecodedView
from server.sfu.turn import TurnConfig
from tests.e2e.browser import (
    audio_frequency,
    participant_page,
    video_colour,
    wait_frames_advance,
)
from tests.fixtures.media import ParticipantMedia, nearest_role, participant_media
from tests.support import server as support
from tests.support.server import PASSWORD, RunningServer
from tests.support.turn import PrivateTurn

TILE = ".tile[data-role='{role}'][data-source='{source}'] video"
CALL_TIMEOUT_MS = 30_000


def tile(role: str, source: str = "camera") -> str:
    return TILE.format(role=role, source=source)


async def staff_login(page: Page, server: RunningServer, username: str) -> None:
    await page.goto(f"{server.url}/staff/")
    await page.fill("#username", username)
    await page.fill("#password", PASSWORD)
    await page.click("#login-submit")


async def create_invitation(page: Page) -> tuple[str, str]:
    """Returns (invitation URL, session id) as the teller's console shows them."""
    await page.select_option("#business", "wealth")
    await page.fill("#customer-name", "李女士")
    await page.click("#create-invitation")
    link = page.locator("#invitation-url")
    await expect(link).to_contain_text("/join/")
    row = page.locator(".session-row").first
    await expect(row).to_be_visible()
    session_id = await row.get_attribute("data-session-id")
    assert session_id
    return (await link.inner_text()).strip(), session_id


async def in_call(page: Page) -> None:
    await expect(page.locator("body")).to_have_attribute(
        "data-state", "call", timeout=CALL_TIMEOUT_MS
    )


async def assert_sees(page: Page, role: str, source: str = "camera") -> None:
    await wait_frames_advance(page, tile(role, source))
    assert nearest_role(await video_colour(page, tile(role, source))) == role


async def assert_hears(page: Page, role: str, media: ParticipantMedia) -> None:
    heard = await audio_frequency(page, tile(role))
    assert media.tone_hz is not None and abs(heard - media.tone_hz) < 20, heard


async def assert_camera_in_temporal_layers(server: RunningServer, session_id: str) -> None:
    """The page sends its camera in temporal layers (L1T3), as the server's live checks expect:
    a decoded view skips the top layer (half the frames, referenced by none), one that keeps
    the base layer only decodes a quarter of them without error, and both show the customer."""
    room = server.services.rooms.get(session_id)
    assert room is not None
    camera = next(
        p.encoded
        for p in room.publications()
        if p.source == "camera" and room.members[p.participant_id].role is Role.CUSTOMER
    )
    async with (
        DecodedView(camera, max_fps=30) as view,
        DecodedView(camera, max_fps=30, max_temporal_layer=0) as base,
    ):
        for decoded in (view, base):
            picture = await decoded.next_picture(timeout=10)
            blue, green, red = picture.image.reshape(-1, 3).mean(0)
            assert nearest_role((red, green, blue)) == "customer"
        for _ in range(100):
            if base.frames_received >= 40:
                break
            await asyncio.sleep(0.1)
    seen = view.frames_decoded + view.frames_skipped
    assert seen >= 20, f"only {seen} frames of the customer's camera in 10 s"
    assert 0.4 <= view.frames_skipped / seen <= 0.6, (view.frames_skipped, seen)
    assert 0.65 <= base.frames_above_layer / base.frames_received <= 0.85, (
        base.frames_above_layer,
        base.frames_received,
    )
    assert base.decode_errors == 0 and base.frames_decoded >= 5


class Call:
    """A teller (logged in, invitation created) and a customer who entered through the link."""

    def __init__(self, teller: Page, customer: Page, url: str, session_id: str) -> None:
        self.teller = teller
        self.customer = customer
        self.url = url
        self.session_id = session_id


@asynccontextmanager
async def teller_and_customer(
    pw: Playwright,
    server: RunningServer,
    media_dir: Path,
    stack: AsyncExitStack,
    init_script: str = "",
) -> AsyncIterator[Call]:
    """`init_script`: run in both pages before their own scripts (test instrumentation)."""
    await server.user("wang", Role.TELLER, "王柜员")
    teller = await stack.enter_async_context(
        participant_page(pw, participant_media(media_dir, "teller"))
    )
    customer = await stack.enter_async_context(
        participant_page(pw, participant_media(media_dir, "customer"))
    )
    if init_script:
        for page in (teller, customer):
            await page.add_init_script(init_script)
    await staff_login(teller, server, "wang")
    url, session_id = await create_invitation(teller)
    await customer.goto(url)
    await customer.click("#enter-btn")
    await expect(customer.locator("body")).to_have_attribute("data-state", "lobby")
    await teller.goto(f"{server.url}/staff/call.html?session={session_id}")
    await in_call(teller)
    await in_call(customer)
    yield Call(teller, customer, url, session_id)


async def test_customer_and_teller_see_and_hear_each_other(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        await assert_sees(call.teller, "customer")
        await assert_sees(call.customer, "teller")
        await assert_camera_in_temporal_layers(server, call.session_id)
        await assert_hears(call.teller, "customer", participant_media(tmp_path, "customer"))
        await assert_hears(call.customer, "teller", participant_media(tmp_path, "teller"))

        await call.customer.fill("#chat-input", "您好，我想咨询理财产品")
        await call.customer.click("#chat-send")
        await expect(call.teller.locator("#chat-log .chat-msg").last).to_contain_text(
            "我想咨询理财产品"
        )
        screenshot = tmp_path / "teller-during-call.png"
        await call.teller.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000

        await call.teller.click("#end-call")
        await call.teller.click("#confirm-yes")
        await expect(call.customer.locator("body")).to_have_attribute(
            "data-state", "ended", timeout=CALL_TIMEOUT_MS
        )
    session = await server.services.sessions.require(call.session_id)
    assert session.state == "ended"
    chat = await server.services.sessions.chat(call.session_id)
    assert [m.text for m in chat] == ["您好，我想咨询理财产品"]


# The pages' RTCPeerConnections, kept for getStats(): wrapped before any page script runs.
CAPTURE_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__vtellerPeerConnections = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.__vtellerPeerConnections.push(this);
    }
  };
})();
"""

# The ICE transport policy of the page's current connection, and the type of the local candidate
# its media flows through.
MEDIA_PATH = """
async () => {
  const pc = window.__vtellerPeerConnections.at(-1);
  const stats = await pc.getStats();
  let local = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      local = stats.get(stats.get(s.selectedCandidatePairId).localCandidateId).candidateType;
    }
  });
  return { policy: pc.getConfiguration().iceTransportPolicy, local };
}
"""


async def test_a_bank_that_relays_every_call_sends_the_pages_through_turn(
    pw: Playwright, tmp_path: Path, turn: PrivateTurn
) -> None:
    relay_only = TurnConfig(urls=[turn.url], secret=SecretStr(turn.secret), relay_only=True)
    async with (
        support.running_server(support.test_settings(tmp_path, turn=relay_only)) as server,
        AsyncExitStack() as stack,
        teller_and_customer(pw, server, tmp_path, stack, CAPTURE_PEER_CONNECTIONS) as call,
    ):
        await assert_sees(call.teller, "customer")
        await assert_sees(call.customer, "teller")
        await assert_hears(call.teller, "customer", participant_media(tmp_path, "customer"))
        for page in (call.teller, call.customer):
            assert await page.evaluate(MEDIA_PATH) == {"policy": "relay", "local": "relay"}
    log = turn.log.read_text()
    assert log.count("ALLOCATE processed, success") >= 2


async def test_expert_joins_and_all_three_see_each_other(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    await server.user("zhao", Role.EXPERT, "赵专家")
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        await call.teller.click("#invite-expert")
        await call.teller.select_option("#expert-select", "zhao")
        await call.teller.click("#expert-invite-confirm")
        expert = await stack.enter_async_context(
            participant_page(pw, participant_media(tmp_path, "expert"))
        )
        await staff_login(expert, server, "zhao")
        row = expert.locator(f".session-row[data-session-id='{call.session_id}']")
        await expect(row).to_be_visible()
        await expert.goto(f"{server.url}/staff/call.html?session={call.session_id}")
        await in_call(expert)
        for page, others in (
            (call.teller, ("customer", "expert")),
            (call.customer, ("teller", "expert")),
            (expert, ("teller", "customer")),
        ):
            for role in others:
                await assert_sees(page, role)


async def test_customer_reloads_and_is_back_in_the_call(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        await assert_sees(call.teller, "customer")
        await call.customer.reload()
        await call.customer.click("#enter-btn")
        await in_call(call.customer)
        await assert_sees(call.customer, "teller")
        await assert_sees(call.teller, "customer")
        events = [e.type for e in await server.services.sessions.events(call.session_id)]
        assert "participant_rejoined" in events


async def test_teller_shares_a_screen_with_the_customer(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        await assert_sees(call.customer, "teller")
        await call.teller.click("#share-screen")
        await wait_frames_advance(call.customer, tile("teller", "screen"))
        events = [e.type for e in await server.services.sessions.events(call.session_id)]
        assert "screen_share_started" in events


async def test_bad_and_used_invitations_get_the_error_page(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        stranger = await stack.enter_async_context(participant_page(pw))
        await stranger.goto(f"{server.url}/join/not-a-real-invitation-token")
        error_page = stranger.locator("#error-page")
        await expect(error_page).to_be_visible()
        await expect(error_page).to_have_attribute("data-code", "invitation_unknown")
        # The customer's link, already used by the customer, does not admit anyone else.
        await stranger.goto(call.url)
        await expect(error_page).to_have_attribute("data-code", "invitation_used")


CANCELLED_ZH = (
    "本次视频预约已取消：邀请您的工作人员已无法为您办理。请致电银行客服或联系网点重新预约。"
)


async def _disable(server: RunningServer, username: str) -> None:
    args = _parser().parse_args(
        ["admin", "disable-user", "--username", username, "--reason", "left the bank"]
    )
    assert await asyncio.to_thread(args.run, args, server.settings) == 0


async def _says_cancelled(customer: Page) -> None:
    error_page = customer.locator("#error-page")
    await expect(error_page).to_have_attribute("data-code", "session_cancelled")
    await expect(customer.locator("#error-message")).to_have_text(CANCELLED_ZH)
    await expect(customer.locator("#error-retry")).to_be_hidden()


async def test_a_link_whose_teller_was_disabled_says_the_appointment_was_cancelled(
    pw: Playwright, server: RunningServer
) -> None:
    await server.user("wang", Role.TELLER)
    teller = server.client()
    await teller.login("wang")
    body = {"business": "wealth", "customer_name": "李女士"}
    created = await teller.call("POST", "/api/v1/invitations", body, expect=201)
    await _disable(server, "wang")
    async with participant_page(pw) as customer:
        await customer.goto(created["invitation_url"])
        await _says_cancelled(customer)


async def test_a_customer_waiting_for_a_disabled_teller_is_told_the_appointment_is_off(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    # Already in the lobby when the account is disabled: the room ends at the worker's next
    # heartbeat, with the reason the session was ended for, not "the call has ended".
    await server.user("wang", Role.TELLER)
    teller = server.client()
    await teller.login("wang")
    body = {"business": "wealth", "customer_name": "李女士"}
    created = await teller.call("POST", "/api/v1/invitations", body, expect=201)
    async with participant_page(pw, participant_media(tmp_path, "customer")) as customer:
        await customer.goto(created["invitation_url"])
        await customer.click("#enter-btn")
        await expect(customer.locator("body")).to_have_attribute("data-state", "lobby")
        await _disable(server, "wang")
        await _says_cancelled(customer)


async def test_teller_records_with_the_customers_consent(
    pw: Playwright, server: RunningServer, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack, teller_and_customer(pw, server, tmp_path, stack) as call:
        await assert_sees(call.teller, "customer")
        # The sale's details fill the script's blanks; the server knows the names already.
        fields = call.teller.locator("#script-values")
        await expect(fields).to_be_visible()
        await expect(fields.locator("input[name='customer_name']")).to_have_value("李女士")
        await fields.locator("input[name='product_name']").fill("稳健理财A")
        await call.teller.click("#recording-start")
        consent = call.customer.locator("#consent")
        await expect(consent).to_be_visible()
        await expect(consent).to_contain_text("保护您的合法权益")
        await call.customer.click("#consent-yes")
        await expect(call.customer.locator("#recording-indicator")).to_be_visible()
        state = call.teller.locator("#recording-state")
        await expect(state).to_have_attribute("data-state", "recording")

        await expect(fields).to_be_hidden()
        intro = call.teller.locator(".moment-toggle[data-moment='product_introduction']")
        await intro.click()
        # The text to read, with the product filled in and a missing value named.
        say = call.teller.locator("#script-current-say")
        await expect(say).to_contain_text("下面为您介绍稳健理财A")
        await expect(say).to_contain_text("【产品风险等级")
        await intro.click()
        toggle = call.teller.locator(".moment-toggle[data-moment='risk_disclosure']")
        await toggle.click()
        await expect(call.teller.locator(".moment[data-moment='risk_disclosure']")).to_have_class(
            re.compile("is-open")
        )
        await expect(say).to_contain_text("理财非存款")
        await expect(call.teller.locator("#script-current-answer")).to_contain_text("清楚")
        await toggle.click()
        await call.teller.click("#recording-stop")
        await call.teller.click("#confirm-yes")
        await expect(state).to_have_attribute("data-state", "sealed", timeout=CALL_TIMEOUT_MS)
        await expect(call.customer.locator("#recording-indicator")).to_be_hidden()
    events = [e for e in await server.services.sessions.events(call.session_id)]
    marked = [e.detail for e in events if e.type == "moment_marked"]
    assert [(m["moment"], m["phase"]) for m in marked] == [
        ("product_introduction", "start"),
        ("product_introduction", "end"),
        ("risk_disclosure", "start"),
        ("risk_disclosure", "end"),
    ]
    assert any(e.type == "recording_consent" and e.detail["granted"] for e in events)
