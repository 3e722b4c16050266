"""A whole wealth-product sale (理财双录) recorded in Chromium passes the after-call analysis.

Teller and customer are real pages with fake cameras showing a real face each. Their
microphones are Web Audio streams the test speaks into, line by line, with the synthesized
speech of tests/fixtures/speech (manifest.json "whole_sale"): the test marks a moment, the
teller reads its line, the customer answers, the test closes the moment, the way a teller works
through the script. The teller shares a screen for the moments that show a document. After the
recording is sealed, the server's analysis job must find every moment compliant.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Page, Playwright, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout

from server.auth.principal import Role
from tests.e2e.browser import participant_page, wait_frames_advance
from tests.e2e.test_call_pages import CALL_TIMEOUT_MS, in_call, staff_login, tile
from tests.fixtures.idcards import load_face
from tests.fixtures.liveness import static_sequence, write_liveness_y4m
from tests.fixtures.media import participant_media
from tests.support import server as support

log = logging.getLogger(__name__)
SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
SALE: dict[str, Any] = json.loads((SPEECH / "manifest.json").read_text(encoding="utf-8"))[
    "whole_sale"
]
# Sealing, then recognising about three minutes of speech per speaker on a busy 2-core machine.
ANALYSIS_TIMEOUT_MS = 900_000
POLL_MS = 30_000
FPS = 15
# Pauses around the speech of a moment, as a teller leaves them: after opening it, and for the
# last words to cross the network and the jitter buffer before it closes.
LEAD_S = 1.0
TAIL_S = 1.5

# The page's microphone becomes a Web Audio stream; window.__say(base64 WAV) plays a clip into
# it and resolves when the clip has ended. Installed before any page script runs.
SPEAKING_MICROPHONE_JS = """(() => {
  const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  let context = null;
  let mouth = null;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    if (!constraints || !constraints.audio) return stream;
    if (!context) {
      context = new AudioContext({ sampleRate: 48000 });
      mouth = context.createMediaStreamDestination();
      // A microphone's noise floor (about -70 dBFS): a silent Web Audio stream sends no audio,
      // and the sender's RTP clock would not advance between the clips.
      const hum = context.createOscillator();
      const level = context.createGain();
      level.gain.value = 0.0003;
      hum.connect(level).connect(mouth);
      hum.start();
    }
    for (const track of stream.getAudioTracks()) { stream.removeTrack(track); track.stop(); }
    stream.addTrack(mouth.stream.getAudioTracks()[0]);
    return stream;
  };
  window.__say = async (wav) => {
    await context.resume();
    const bytes = Uint8Array.from(atob(wav), (c) => c.charCodeAt(0));
    const clip = await context.decodeAudioData(bytes.buffer);
    const source = context.createBufferSource();
    source.buffer = clip;
    source.connect(mouth);
    await new Promise((resolve) => { source.onended = resolve; source.start(); });
  };
})();"""


def _clip(name: str) -> str:
    return base64.b64encode((SPEECH / name).read_bytes()).decode("ascii")


async def say(page: Page, clip: str) -> None:
    await page.evaluate("wav => window.__say(wav)", _clip(clip))


@dataclasses.dataclass
class Sale:
    teller: Page
    customer: Page
    session_id: str


async def speaking_participant(
    pw: Playwright,
    stack: AsyncExitStack,
    tmp_path: Path,
    role: str,
    camera: Sequence[np.ndarray],
) -> Page:
    """A participant's page whose camera plays `camera` (looped) and whose mic speaks clips."""
    video = write_liveness_y4m(tmp_path / f"{role}.y4m", camera, FPS)
    media = dataclasses.replace(participant_media(tmp_path / "media", role), video=video)
    page = await stack.enter_async_context(participant_page(pw, media))
    await page.add_init_script(SPEAKING_MICROPHONE_JS)
    return page


def still_face(name: str) -> list[np.ndarray]:
    return static_sequence(load_face(name), FPS, 1.0)


@asynccontextmanager
async def sale_call(
    pw: Playwright, server: support.RunningServer, tmp_path: Path, stack: AsyncExitStack
) -> AsyncIterator[Sale]:
    """A teller and a customer in a wealth-product call, each with a face and a speaking mic."""
    teller = await speaking_participant(pw, stack, tmp_path, "teller", still_face("biden.jpg"))
    customer = await speaking_participant(pw, stack, tmp_path, "customer", still_face("obama.jpg"))
    await server.user("wang", Role.TELLER, "王芳")
    await staff_login(teller, server, "wang")
    await teller.select_option("#business", "wealth")
    await teller.fill("#customer-name", SALE["values"]["customer_name"])
    await teller.click("#create-invitation")
    link = teller.locator("#invitation-url")
    await expect(link).to_contain_text("/join/")
    session_id = await teller.locator(".session-row").first.get_attribute("data-session-id")
    assert session_id
    await customer.goto((await link.inner_text()).strip())
    await customer.click("#enter-btn")
    await expect(customer.locator("body")).to_have_attribute("data-state", "lobby")
    await teller.goto(f"{server.url}/staff/call.html?session={session_id}")
    await in_call(teller)
    await in_call(customer)
    await wait_frames_advance(teller, tile("customer", "camera"))
    yield Sale(teller, customer, session_id)


async def record_sale(
    sale: Sale,
    moments: Sequence[Mapping[str, str | None]] = SALE["moments"],
    during: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
) -> None:
    """Start the recording with the sale's details, go through `moments` (each spoken by the
    teller, then answered by the customer; then `during[moment]()` if given), stop and seal."""
    teller = sale.teller
    fields = teller.locator("#script-values")
    await expect(fields).to_be_visible()
    for name, value in SALE["values"].items():
        await fields.locator(f"input[name='{name}']").fill(value)
    await teller.click("#recording-start")
    await expect(sale.customer.locator("#consent")).to_be_visible()
    await sale.customer.click("#consent-yes")
    state = teller.locator("#recording-state")
    await expect(state).to_have_attribute("data-state", "recording")

    await teller.click("#share-screen")
    await wait_frames_advance(sale.customer, tile("teller", "screen"))
    for step in moments:
        moment = str(step["moment"])
        toggle = teller.locator(f".moment-toggle[data-moment='{moment}']")
        row = teller.locator(f".moment[data-moment='{moment}']")
        # The consent moment opens with the recording itself (the consent question is its start).
        if "is-open" not in (await row.get_attribute("class") or ""):
            await toggle.click()
        await expect(row).to_have_class(re.compile(r"\bis-open\b"))
        await asyncio.sleep(LEAD_S)
        if step["teller"]:
            await say(teller, step["teller"])
        if step["customer"]:
            await say(sale.customer, step["customer"])
        if during and moment in during:
            await during[moment]()
        await asyncio.sleep(TAIL_S)
        await toggle.click()
        # As a teller does: the moment shown ended before the next one is started.
        await expect(row).not_to_have_class(re.compile(r"\bis-open\b"))
    await teller.click("#recording-stop")
    await teller.click("#confirm-yes")
    await expect(state).to_have_attribute("data-state", "sealed", timeout=CALL_TIMEOUT_MS)


async def analysis_report(teller: Page, session_id: str) -> dict[str, Any]:
    """Wait for the after-call analysis the teller's page shows, then fetch its report."""
    done = (
        "() => { const s = document.getElementById('analysis-status');"
        " return s && !s.hidden && s.dataset.kind !== 'info'; }"
    )
    jobs: Any = None
    for _ in range(ANALYSIS_TIMEOUT_MS // POLL_MS):
        try:
            await teller.wait_for_function(done, timeout=POLL_MS)
            break
        except PlaywrightTimeout:
            jobs = await teller.evaluate(
                "url => fetch(url).then((r) => r.json())",
                f"/api/v1/sessions/{session_id}/compliance",
            )
            log.info("analysis still running: %s", jobs)
    else:
        raise AssertionError(f"no analysis result on the teller's page; the jobs: {jobs}")
    href = await teller.locator("#analysis-report").get_attribute("href")
    assert href, "the analysis ended without a report link"
    report: dict[str, Any] = await teller.evaluate(
        "url => fetch(url.replace(/\\.html$/, '')).then((r) => r.json()).then((b) => b.report)",
        href,
    )
    return report


def _explain_line(line: Mapping[str, Any]) -> dict[str, Any]:
    """What a failing line's reasons rest on: enough to tell a recogniser slip or chopped
    audio from a matching defect in a CI log."""
    return {
        "speaker": line["speaker"],
        "reasons": line["reasons"],
        "heard": "".join(segment["text"] for segment in line["transcript"]),
        "alignment": line["alignment"],
    }


def assert_compliant(report: Mapping[str, Any], moments: Sequence[str]) -> None:
    by_id = {m["id"]: m for m in report["moments"]}
    assert list(by_id) == list(moments)
    problems = {
        moment_id: [_explain_line(line) for line in m.get("lines", [])]
        + [m.get("visibility"), m.get("document")]
        for moment_id, m in by_id.items()
        if m["decision"] != "pass"
    }
    assert not problems, json.dumps(problems, ensure_ascii=False, indent=1)
    assert report["decision"] == "pass"


async def test_a_whole_wealth_sale_recorded_in_chromium_is_compliant(
    pw: Playwright, tmp_path: Path
) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    settings = support.test_settings(data_dir, compliance_analysis=True, bank_name="示范银行")
    async with (
        support.running_server(settings) as server,
        AsyncExitStack() as stack,
        sale_call(pw, server, tmp_path, stack) as sale,
    ):
        await record_sale(sale)
        report = await analysis_report(sale.teller, sale.session_id)
    assert_compliant(report, [step["moment"] for step in SALE["moments"]])
