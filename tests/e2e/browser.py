"""Drive Debian's Chromium from the end-to-end tests, one browser per participant.

Chromium's fake camera and microphone read their files once per *process*, so each
participant (customer, teller, expert) gets a browser of its own, started with its
own coloured y4m and tone WAV (see tests/fixtures/media.py). A test then checks
routing by looking at what a page shows and plays::

    from playwright.async_api import async_playwright
    from tests.e2e.browser import participant_page, video_colour, wait_frames_advance
    from tests.fixtures.media import participant_media, nearest_role

    async with async_playwright() as pw:
        customer = participant_media(tmp_path, "customer")
        teller = participant_media(tmp_path, "teller")
        async with participant_page(pw, customer) as c, participant_page(pw, teller) as t:
            await c.goto(f"{base_url}/join/{token}")
            ...
            await wait_frames_advance(t, "video.remote")
            assert nearest_role(await video_colour(t, "video.remote")) == "customer"
            assert abs(await audio_frequency(t, "video.remote") - customer.tone_hz) < 15

Everything stays on loopback: the flags below make Chromium resolve no host but
127.0.0.1 and open no background connections, and Playwright downloads nothing
because it is pointed at /usr/bin/chromium (never run ``playwright install``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Page, Playwright, WebSocket
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.fixtures.media import ParticipantMedia

log = logging.getLogger("vteller.e2e.browser")
# INFO reaches pytest's capture (the root logger stays at WARNING): shown only for a failing test.
log.setLevel(logging.INFO)
# A signaling frame is logged up to this many characters (an SDP is long and says little here).
_FRAME_CHARS = 400

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Generous: page load to first remote frame took up to 4 s with both cores busy.
DEFAULT_TIMEOUT_S = 20.0

# Why each flag is here:
BASE_ARGS: tuple[str, ...] = (
    "--no-sandbox",  # we run as root; the sandbox refuses that
    "--disable-gpu",  # no GPU on the test machines
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes renderers
    "--disable-quic",
    "--no-first-run",
    # No calls home: the network is closed and every refused connection costs time.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
    # getUserMedia without a device or a permission prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Remote media starts playing without a click.
    "--autoplay-policy=no-user-gesture-required",
    # Without it Chromium offers no 127.0.0.1 ICE candidate and ICE fails on loopback.
    "--allow-loopback-in-peer-connection",
    # NB: no --disable-features here: it would replace Playwright's own list.
    # NB: no --user-data-dir: Playwright refuses it in launch() and makes a fresh profile.
)


def chromium_path() -> str:
    """The Chromium binary to drive: $VTELLER_CHROMIUM or Debian's /usr/bin/chromium."""
    path = os.environ.get("VTELLER_CHROMIUM", DEFAULT_CHROMIUM)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"Chromium not found at {path}: run `bash infra/test.sh` (it installs it) "
            "or `apt-get install -y chromium`, or set VTELLER_CHROMIUM"
        )
    return path


def chromium_args(
    video: Path | None = None, audio: Path | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """Command-line flags for one participant's browser."""
    args = list(BASE_ARGS)
    if video is not None:
        args.append(f"--use-file-for-fake-video-capture={Path(video).resolve()}")
    if audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={Path(audio).resolve()}")
    args.extend(extra)
    return args


@asynccontextmanager
async def launch_participant(
    playwright: Playwright,
    media: ParticipantMedia | None = None,
    *,
    headless: bool = True,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[Browser]:
    """A headless Chromium whose camera/microphone are ``media``'s files (or the
    built-in fake pattern and beep when ``media`` is None)."""
    args = chromium_args(media.video if media else None, media.audio if media else None, extra_args)
    browser = await playwright.chromium.launch(
        executable_path=chromium_path(), headless=headless, args=args
    )
    try:
        yield browser
    finally:
        await browser.close()


@asynccontextmanager
async def participant_page(
    playwright: Playwright,
    media: ParticipantMedia | None = None,
    *,
    base_url: str | None = None,
    headless: bool = True,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[Page]:
    """One participant: its own browser, a fresh context and one page.

    The page's console, uncaught errors and signaling frames (text, shortened) go to the
    ``vteller.e2e.browser`` logger, so pytest shows them next to a failing test: what the page
    sent and heard is the first question when a step did not happen.
    """
    name = media.role if media else "browser"
    async with launch_participant(
        playwright, media, headless=headless, extra_args=extra_args
    ) as browser:
        context = await browser.new_context(base_url=base_url, permissions=["camera", "microphone"])
        try:
            page = await context.new_page()

            refused: list[str] = []

            def on_console(msg: ConsoleMessage) -> None:
                log.info("[%s console.%s] %s", name, msg.type, msg.text)
                if "Content Security Policy" in msg.text:
                    refused.append(msg.text)

            def on_error(exc: Exception) -> None:
                log.warning("[%s pageerror] %s", name, exc)

            def on_websocket(ws: WebSocket) -> None:
                def frame(direction: str) -> Callable[[str | bytes], None]:
                    def logged(payload: str | bytes) -> None:
                        if isinstance(payload, str):
                            log.info("[%s ws %s] %s", name, direction, payload[:_FRAME_CHARS])

                    return logged

                ws.on("framesent", frame("sent"))
                ws.on("framereceived", frame("received"))
                ws.on("close", lambda _: log.info("[%s ws closed] %s", name, ws.url))

            page.on("console", on_console)
            page.on("pageerror", on_error)
            page.on("websocket", on_websocket)
            yield page
            # The pages must work within the server's policy: what it refuses (an inline style,
            # a connection to an origin it does not name) the page silently lacks.
            assert not refused, f"{name}: the Content-Security-Policy refused: {refused}"
        finally:
            await context.close()


class MediaTimeout(AssertionError):
    """Media did not reach the expected state in time (an AssertionError so that
    pytest reports it as a test failure with the element's state)."""


_ELEMENT_STATE_JS = """el => ({
    tag: el.tagName, readyState: el.readyState, paused: el.paused,
    videoWidth: el.videoWidth ?? null, videoHeight: el.videoHeight ?? null,
    srcObject: el.srcObject ? {
        active: el.srcObject.active,
        tracks: el.srcObject.getTracks()
            .map(t => `${t.kind}:${t.readyState}${t.muted ? ':muted' : ''}`),
    } : null,
})"""


async def _element_state(page: Page, selector: str) -> Any:
    try:
        return await page.locator(selector).evaluate(_ELEMENT_STATE_JS, timeout=2000)
    except Exception as exc:  # the element may be missing altogether
        return f"unavailable ({exc.__class__.__name__})"


async def wait_for_video(
    page: Page, selector: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> None:
    """Wait until the <video> matched by ``selector`` has a decoded frame to show."""
    try:
        await page.wait_for_function(
            """sel => { const el = document.querySelector(sel);
                        return !!el && el.readyState >= 2 && el.videoWidth > 0; }""",
            arg=selector,
            timeout=timeout_s * 1000,
            polling=100,
        )
    except PlaywrightTimeoutError:
        state = await _element_state(page, selector)
        raise MediaTimeout(
            f"{selector}: no video frame within {timeout_s:.0f} s; element state: {state}"
        ) from None


_COLOUR_JS = """el => {
    // Averaging needs no detail: let drawImage downscale, then read few pixels.
    const w = 64, h = 48;
    const canvas = document.createElement('canvas');
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(el, 0, 0, w, h);
    const d = ctx.getImageData(0, 0, w, h).data;
    let r = 0, g = 0, b = 0;
    for (let i = 0; i < d.length; i += 4) { r += d[i]; g += d[i + 1]; b += d[i + 2]; }
    const n = d.length / 4;
    return [r / n, g / n, b / n];
}"""


async def video_colour(
    page: Page, selector: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[int, int, int]:
    """Average RGB of the frame the <video> currently shows (waits for a first frame).

    Compare with tests.fixtures.media.nearest_role / colour_distance: VP8 and the
    YUV round trip shift channels by a few units.
    """
    await wait_for_video(page, selector, timeout_s=timeout_s)
    r, g, b = await page.locator(selector).evaluate(_COLOUR_JS)
    return round(r), round(g), round(b)


_FRAMES_JS = """el => {
    // requestVideoFrameCallback counts every frame presented; install it once.
    if (el.__vtellerFrames === undefined && el.requestVideoFrameCallback) {
        el.__vtellerFrames = 0;
        const tick = () => { el.__vtellerFrames++; el.requestVideoFrameCallback(tick); };
        el.requestVideoFrameCallback(tick);
    }
    const q = el.getVideoPlaybackQuality ? el.getVideoPlaybackQuality().totalVideoFrames : 0;
    return Math.max(q, el.__vtellerFrames || 0);
}"""


async def frames_decoded(page: Page, selector: str) -> int:
    """Frames the <video> has decoded so far (a counter: compare two readings)."""
    return int(await page.locator(selector).evaluate(_FRAMES_JS))


async def wait_frames_advance(
    page: Page,
    selector: str,
    *,
    min_frames: int = 10,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Wait until the <video> shows a picture and decodes ``min_frames`` more frames.

    Asserts that video *flows*, not a frame rate (two cores shared by several
    browsers and the server make rates meaningless). Returns the frames counted.
    """
    await wait_for_video(page, selector, timeout_s=timeout_s)
    start = await frames_decoded(page, selector)
    try:
        await page.wait_for_function(
            f"""([sel, start, n]) => {{ const el = document.querySelector(sel);
                 return !!el && ({_FRAMES_JS})(el) >= start + n; }}""",
            arg=[selector, start, min_frames],
            timeout=timeout_s * 1000,
            polling=100,
        )
    except PlaywrightTimeoutError:
        now = await frames_decoded(page, selector)
        state = await _element_state(page, selector)
        raise MediaTimeout(
            f"{selector}: frames went {start} -> {now} in {timeout_s:.0f} s, "
            f"expected +{min_frames}; element state: {state}"
        ) from None
    return await frames_decoded(page, selector) - start


_FREQUENCY_JS = """async (el, [timeoutMs, minDb, readings]) => {
    const stream = el.srcObject;
    if (!(stream instanceof MediaStream) || stream.getAudioTracks().length === 0) {
        return { error: 'element has no MediaStream srcObject with an audio track' };
    }
    const ctx = new AudioContext();
    await ctx.resume();  // allowed without a gesture by --autoplay-policy
    const source = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;  // 48 kHz / 8192 = 5.9 Hz per bin
    analyser.smoothingTimeConstant = 0;
    source.connect(analyser);  // an analyser is processed without reaching the speakers
    const bins = new Float32Array(analyser.frequencyBinCount);
    const binHz = ctx.sampleRate / analyser.fftSize;
    const found = [];
    let loudest = -Infinity;
    const deadline = performance.now() + timeoutMs;
    try {
        while (performance.now() < deadline && found.length < readings) {
            await new Promise(r => setTimeout(r, 150));
            analyser.getFloatFrequencyData(bins);
            let k = 1;  // skip DC
            for (let i = 2; i < bins.length - 1; i++) if (bins[i] > bins[k]) k = i;
            loudest = Math.max(loudest, bins[k]);
            if (bins[k] < minDb) continue;  // silence: the tone has not arrived yet
            // Parabolic interpolation between neighbouring bins (dB values).
            const a = bins[k - 1], b = bins[k], c = bins[k + 1];
            const den = a - 2 * b + c;
            const shift = den === 0 ? 0 : 0.5 * (a - c) / den;
            found.push((k + shift) * binHz);
        }
    } finally {
        source.disconnect();
        await ctx.close();
    }
    found.sort((x, y) => x - y);
    return { hz: found.length === readings ? found[readings >> 1] : null, loudest, found };
}"""


async def audio_frequency(
    page: Page,
    selector: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    min_db: float = -75.0,
    readings: int = 5,
) -> float:
    """Dominant frequency (Hz) of the audio in the element's ``srcObject`` MediaStream.

    Feeds the stream into a WebAudio AnalyserNode, waits until the loudest bin is
    above ``min_db`` dBFS, and returns the median of ``readings`` such readings
    (accurate to a few Hz). Works for <video> and <audio> elements.

    Chromium's default getUserMedia audio processing (noise suppression, AGC) damps
    a steady tone by 10-20 dB within seconds (measured: 440 Hz at about -53 dBFS,
    880 Hz at -40); silence reads as -inf, so -75 dBFS separates the two safely.
    """
    locator = page.locator(selector)
    await locator.wait_for(state="attached", timeout=timeout_s * 1000)
    result = await locator.evaluate(_FREQUENCY_JS, [timeout_s * 1000, min_db, readings])
    if "error" in result:
        state = await _element_state(page, selector)
        raise MediaTimeout(f"{selector}: {result['error']}; element state: {state}")
    if result["hz"] is None:
        state = await _element_state(page, selector)
        raise MediaTimeout(
            f"{selector}: no tone above {min_db} dBFS within {timeout_s:.0f} s "
            f"(loudest {result['loudest']:.1f} dBFS, readings {result['found']}); "
            f"element state: {state}"
        )
    return float(result["hz"])
