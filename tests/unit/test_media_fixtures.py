"""The generated fake-capture files are what Chromium's y4m/WAV readers expect."""

from __future__ import annotations

import itertools
import wave
from array import array
from pathlib import Path

import pytest

from tests.fixtures import media


def test_y4m_header_size_and_colour(tmp_path: Path) -> None:
    path = media.write_y4m(tmp_path / "red.y4m", media.RED, width=320, height=240, fps=15)
    data = path.read_bytes()

    header, _, body = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W320 H240 F15:1 Ip A1:1 C420jpeg"
    frame_size = len(b"FRAME\n") + 320 * 240 * 3 // 2
    assert len(body) == 60 * frame_size  # 4 s at 15 fps
    assert body[:6] == b"FRAME\n"
    assert body[frame_size : frame_size + 6] == b"FRAME\n"

    luma, chroma = 320 * 240, 160 * 120
    y, u, v = body[6], body[6 + luma], body[6 + luma + chroma]
    assert (y, u, v) == media.rgb_to_yuv(media.RED) == (81, 90, 240)


@pytest.mark.parametrize(
    ("rgb", "yuv"),
    [(media.BLUE, (41, 240, 110)), (media.GREEN, (145, 54, 34)), (media.YELLOW, (210, 16, 146))],
)
def test_bt601_conversion(rgb: media.RGB, yuv: tuple[int, int, int]) -> None:
    assert media.rgb_to_yuv(rgb) == yuv


def test_y4m_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        media.write_y4m(tmp_path / "odd.y4m", media.RED, width=321)


def test_wav_format_and_tone(tmp_path: Path) -> None:
    path = media.write_wav(tmp_path / "tone.wav", 440.0)
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1
        assert w.getsampwidth() == 2
        assert w.getframerate() == 48_000
        assert w.getnframes() == 4 * 48_000
        samples = array("h", w.readframes(w.getnframes()))
    assert path.stat().st_size == 44 + 4 * 48_000 * 2  # canonical 44-byte header

    # Rising zero crossings per second = frequency; the tone loops without a click.
    rising = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert abs(rising / 4 - 440) <= 1
    assert 0.45 * 32767 < max(samples) <= 0.5 * 32767 + 1


def test_participant_media_roles(tmp_path: Path) -> None:
    customer = media.participant_media(tmp_path, "customer")
    assert customer.colour == media.RED and customer.tone_hz == 440.0
    assert customer.video.exists() and customer.audio is not None and customer.audio.exists()

    screen = media.participant_media(tmp_path, "screen")
    assert screen.audio is None and screen.colour == media.YELLOW

    # Reused, not rewritten, when a second browser of the same role needs it.
    mtime = customer.video.stat().st_mtime_ns
    assert media.participant_media(tmp_path, "customer").video.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.part"))

    with pytest.raises(KeyError):
        media.participant_media(tmp_path, "auditor")


def test_nearest_role_tolerates_codec_drift() -> None:
    assert media.nearest_role((240, 12, 8)) == "customer"
    assert media.nearest_role((10, 5, 230)) == "teller"
    assert media.nearest_role((20, 235, 15)) == "expert"
