"""A photo of a screen showing a card is refused with its own message, even when it reads."""

from __future__ import annotations

import numpy as np
import pytest

from server.identity.idcard import Reason
from server.identity.ocr import Side, TextLine
from server.identity.ocr.backends import RapidOcrEngine
from server.identity.ocr.quality import (
    SCREEN_PEAK_DB,
    SCREEN_PHOTO,
    check_quality,
    screen_score,
    text_region,
)
from server.identity.ocr.reader import assess, read_card, reading_problems
from tests.fixtures.idcards import (
    DEGRADATIONS,
    SCREENS,
    TODAY,
    VALID_SPECS,
    degrade,
    on_table,
    render_back,
    render_front,
    screen_photo,
)


def central_lines(img: np.ndarray, share: float = 0.6) -> list[TextLine]:
    """Three lines whose bounding box is the central `share` of the photo: inside the card for
    on_table (the card fills 80 %) and screen_photo (90 %), where OCR would find the text."""
    h, w = img.shape[:2]
    x0, x1 = w * (1 - share) / 2, w * (1 + share) / 2
    y0, y1 = h * (1 - share) / 2, h * (1 + share) / 2
    ys = np.linspace(y0, y1 - 30, 3)
    return [TextLine("x", ((x0, y), (x1, y), (x1, y + 30), (x0, y + 30)), 0.99) for y in ys]


def card(i: int, side: str) -> np.ndarray:
    return render_front(VALID_SPECS[i]) if side == "front" else render_back(VALID_SPECS[i])


@pytest.mark.parametrize("kind", sorted(SCREENS))
def test_screen_photos_flagged(kind: str) -> None:
    for i, side in ((0, "front"), (1, "back")):
        img = screen_photo(card(i, side), kind)
        lines = central_lines(img)
        score = screen_score(img, text_region(lines, img.shape))
        assert score >= SCREEN_PEAK_DB + 5, (kind, side, score)
        # Refused although every field was read, and said first: it is the hint shown.
        issues = check_quality(img, lines, fields_missing=False)
        assert issues[0] == SCREEN_PHOTO, (kind, side, issues)
        assert issues[0].code == "screen_photo"
        assert issues[0].message_zh == "请出示身份证原件，不要拍摄屏幕上的图片"
        assert issues[0].message_en == "show the original card; a photo of a screen is not accepted"


def test_card_photos_not_flagged() -> None:
    # Every card, both sides, clean and with every capture defect (JPEG included).
    worst = 0.0
    for i in range(len(VALID_SPECS)):
        for side in ("front", "back"):
            photo = on_table(card(i, side))
            for kind in ("clean", *DEGRADATIONS):
                img = photo if kind == "clean" else degrade(photo, kind)
                lines = central_lines(img)
                score = screen_score(img, text_region(lines, img.shape))
                assert score < SCREEN_PEAK_DB - 5, (i, side, kind, score)
                assert SCREEN_PHOTO not in check_quality(img, lines, fields_missing=True)
                worst = max(worst, score)
    assert worst > 0  # the measure ran


def test_no_card_no_screen_check() -> None:
    # Without a card found there is no card region to judge; a monitor behind the customer
    # must not turn "no card" into "not a screen".
    img = screen_photo(np.full((540, 856, 3), 200, np.uint8), "monitor")
    assert check_quality(img, [], fields_missing=True)[0].code == "card_not_found"
    assert SCREEN_PHOTO not in check_quality(img, [], fields_missing=True)


def test_small_and_flat_images() -> None:
    assert screen_score(np.zeros((64, 64, 3), np.uint8)) == 0.0
    assert screen_score(np.full((480, 640, 3), 90, np.uint8), (10, 10, 20, 20)) == 0.0
    assert screen_score(np.full((100, 300), 200, np.uint8)) == 0.0


@pytest.fixture(scope="module")
def engine() -> RapidOcrEngine:
    return RapidOcrEngine.from_wheel()


@pytest.mark.parametrize(("kind", "side"), [("phone", "front"), ("moire", "back")])
def test_read_card_refuses_screen_photo(engine: RapidOcrEngine, kind: str, side: Side) -> None:
    spec = VALID_SPECS[0]
    r = read_card(screen_photo(card(0, side), kind), engine)
    # The danger: the screen reads perfectly.
    assert r.side == side and r.complete
    if side == "front":
        assert r.fields.id_number == spec.id_number
    else:
        assert r.fields.issuing_authority == spec.authority
    assert [q.code for q in r.quality] == ["screen_photo"]
    problems = reading_problems(r, side)
    assert [(p.reason, p.message_en) for p in problems] == [
        (Reason.UNREADABLE, "show the original card; a photo of a screen is not accepted")
    ]
    if side == "front":
        check = assess(r, None, TODAY)
        assert not check.accepted
        assert check.problems[0].message_zh == "请出示身份证原件，不要拍摄屏幕上的图片"
