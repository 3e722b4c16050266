"""One card side from image to fields: OCR, orientation, parsing and quality in one call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import cv2
import numpy as np

from server.identity.idcard import IdCardFields, Problem, Reason, check_card
from server.identity.images import check_array
from server.identity.ocr import OcrEngine, Side, TextLine
from server.identity.ocr.parse import parse_back, parse_front, side_of
from server.identity.ocr.quality import QualityIssue, check_quality

_FRONT_FIELDS = ("name", "sex", "ethnicity", "birth_date", "address", "id_number")
_BACK_FIELDS = ("issuing_authority", "valid_from")


@dataclass(frozen=True)
class CardReading:
    side: Side | None
    fields: IdCardFields
    quality: list[QualityIssue]
    rotated_180: bool
    lines: list[TextLine] = field(repr=False)
    # The photo turned as it was read (upright when `rotated_180`): what to keep and match a
    # face against, since the portrait is turned with the card.
    image: np.ndarray = field(repr=False, compare=False)

    @property
    def complete(self) -> bool:
        return self.side is not None and not _missing(self.side, self.fields)


def _missing(side: Side, fields: IdCardFields) -> list[str]:
    names = _FRONT_FIELDS if side == "front" else _BACK_FIELDS
    return [n for n in names if getattr(fields, n) in (None, "")]


def _flip(lines: Sequence[TextLine], shape: tuple[int, ...]) -> list[TextLine]:
    """The same lines in the coordinates of the image turned 180 degrees. With a direction
    classifier (an engine that has one) upside-down text is already read correctly and only
    the layout is inverted."""
    h, w = shape[:2]
    out = []
    for ln in lines:
        pts = [(w - x, h - y) for x, y in ln.box]
        # Keep the clockwise-from-top-left order: rotating swaps opposite corners.
        if len(pts) == 4:
            pts = [pts[2], pts[3], pts[0], pts[1]]
        out.append(TextLine(ln.text, tuple(pts), ln.score))
    return out


def _upside_down(lines: Sequence[TextLine], side: Side) -> bool:
    def y_of(*keys: str) -> float | None:
        for ln in lines:
            if any(k in ln.text for k in keys):
                return ln.cy
        return None

    if side == "front":
        top, bottom = y_of("姓名"), y_of("公民身份", "号码")
    else:
        top, bottom = y_of("中华人民共和国", "居民身份证"), y_of("有效期限", "签发机关")
    return top is not None and bottom is not None and top > bottom


def _parse(side: Side, lines: Sequence[TextLine]) -> IdCardFields:
    return parse_front(lines) if side == "front" else parse_back(lines)


def read_card(image: np.ndarray, engine: OcrEngine, side: Side | None = None) -> CardReading:
    """Read one side of a card from a BGR image. `side` None: decided from the labels found."""
    check_array(image)
    lines = engine.recognize(image)
    found = side or side_of(lines)
    rotated = False
    if found is not None and _upside_down(lines, found):
        lines, rotated = _flip(lines, image.shape), True
        image = cv2.rotate(image, cv2.ROTATE_180)
    fields = _parse(found, lines) if found else IdCardFields()
    if found is None or _missing(found, fields):
        # Upside down without a direction classifier (the built-in engine has none), or lines
        # the classifier missed: read the turned image and keep the better reading.
        turned = cv2.rotate(image, cv2.ROTATE_180)
        lines2 = engine.recognize(turned)
        found2 = side or side_of(lines2)
        if found2 is not None and not _upside_down(lines2, found2):
            fields2 = _parse(found2, lines2)
            if found is None or len(_missing(found2, fields2)) < len(_missing(found, fields)):
                found, fields, lines, rotated = found2, fields2, lines2, not rotated
                image = turned
    missing = found is None or bool(_missing(found, fields))
    quality = check_quality(image, lines, missing)
    return CardReading(found, fields, quality, rotated, list(lines), image)


def reading_problems(reading: CardReading, expected: Side) -> list[Problem]:
    """Capture problems of one side as `unreadable` problems carrying the quality message, so
    the customer is told what to change (hold still, tilt) rather than which field failed."""
    problems = [
        Problem(Reason.UNREADABLE, None, q.message_zh, q.message_en) for q in reading.quality
    ]
    if reading.side is not None and reading.side != expected:
        zh, en = (
            ("这是国徽面，请拍摄人像面", "this is the back of the card; photograph the front")
            if expected == "front"
            else ("这是人像面，请拍摄国徽面", "this is the front of the card; photograph the back")
        )
        problems.append(Problem(Reason.UNREADABLE, None, zh, en))
    return problems


@dataclass(frozen=True)
class CardCheck:
    front: CardReading
    back: CardReading | None
    problems: list[Problem]

    @property
    def accepted(self) -> bool:
        return not self.problems


def assess(front: CardReading, back: CardReading | None, today: date) -> CardCheck:
    """All problems of a captured card: capture quality first, then the card rules."""
    problems = reading_problems(front, "front")
    if back is not None:
        problems += reading_problems(back, "back")
    problems += check_card(front.fields, back.fields if back else None, today)
    return CardCheck(front, back, problems)
