"""Capture quality checks for a card photo, each with an instruction the customer can follow.

Thresholds are for a photo normalised to 1000 px on its longer side (see `_normalise`) and were
set on the synthetic cards of tests/fixtures/idcards.py (clean, lightly degraded: pass; heavily
blurred or with a highlight over the text: fail). See docs/identity.md for the values seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from server.identity.ocr import TextLine

# Variance of the Laplacian below this: too blurred to trust the characters.
BLUR_MIN_VARIANCE = 60.0
# Share of a text line's box that is blown-out white before the line counts as under glare.
GLARE_LINE_SHARE = 0.15
# Share of the text region that is blown out before the photo counts as glared at all.
GLARE_REGION_SHARE = 0.02
DARK_MEAN = 45.0
_NORM_SIDE = 1000


@dataclass(frozen=True)
class QualityIssue:
    code: str  # card_not_found | blurry | glare | too_dark | unclear
    message_zh: str
    message_en: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message_zh": self.message_zh, "message_en": self.message_en}


CARD_NOT_FOUND = QualityIssue(
    "card_not_found",
    "未检测到身份证，请将身份证完整放入取景框内",
    "no ID card found; place the whole card inside the frame",
)
BLURRY = QualityIssue(
    "blurry", "图像模糊，请将身份证保持稳定并对焦", "the photo is blurred; hold the card still"
)
GLARE = QualityIssue(
    "glare", "证件有反光，请稍微倾斜以避开反光", "tilt the card to remove the glare"
)
UNCLEAR = QualityIssue(
    "unclear",
    "部分信息无法识别，请在光线均匀处正对证件重新拍摄",
    "some fields could not be read; retake the photo straight on, in even light",
)
TOO_DARK = QualityIssue(
    "too_dark", "光线太暗，请在明亮处拍摄", "the photo is too dark; move to a brighter place"
)


def _normalise(gray: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = gray.shape[:2]
    scale = _NORM_SIDE / max(h, w)
    if abs(scale - 1.0) < 1e-3:
        return gray, 1.0
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=interp), scale


def text_region(lines: Sequence[TextLine], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of all text lines, clipped to the image."""
    h, w = shape[:2]
    x0 = max(0, int(min(ln.x0 for ln in lines)))
    y0 = max(0, int(min(ln.y0 for ln in lines)))
    x1 = min(w, int(max(ln.x1 for ln in lines)) + 1)
    y1 = min(h, int(max(ln.y1 for ln in lines)) + 1)
    return x0, y0, x1, y1


def sharpness(image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> float:
    """Variance of the Laplacian over `region` (the text, so an out-of-focus desk does not
    count), after normalising the image size."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if region is not None:
        x0, y0, x1, y1 = region
        if x1 - x0 > 16 and y1 - y0 > 16:
            gray = gray[y0:y1, x0:x1]
    # Normalise by the full image's scale so a crop is judged at the same pixel density.
    scale = _NORM_SIDE / max(image.shape[:2])
    if abs(scale - 1.0) > 1e-3:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def glare_mask(image: np.ndarray) -> np.ndarray:
    """Blown-out pixels: nearly white and unsaturated (a specular highlight, not white paper,
    which a camera exposes below 250)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    mask = (hsv[..., 2] >= 250) & (hsv[..., 1] <= 30)
    return mask.astype(np.uint8)


def check_quality(
    image: np.ndarray, lines: Sequence[TextLine], fields_missing: bool
) -> list[QualityIssue]:
    """Issues with this photo. `fields_missing`: the parser did not find every field, which is
    when blur or glare explain the failure (a light highlight on a fully read card is fine)."""
    if len(lines) < 3:
        issues = [CARD_NOT_FOUND]
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if float(gray.mean()) < DARK_MEAN:
            issues.append(TOO_DARK)
        elif sharpness(image) < BLUR_MIN_VARIANCE:
            issues.append(BLURRY)
        return issues
    issues = []
    region = text_region(lines, image.shape)
    x0, y0, x1, y1 = region
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if float(gray[y0:y1, x0:x1].mean()) < DARK_MEAN:
        issues.append(TOO_DARK)
    if sharpness(image, region) < BLUR_MIN_VARIANCE:
        issues.append(BLURRY)
    mask = glare_mask(image)
    region_share = float(mask[y0:y1, x0:x1].mean()) if (x1 > x0 and y1 > y0) else 0.0
    over_fields = any(
        float(mask[int(ln.y0) : int(ln.y1) + 1, int(ln.x0) : int(ln.x1) + 1].mean())
        > GLARE_LINE_SHARE
        for ln in lines
        if ln.x1 > ln.x0 and ln.y1 > ln.y0
    )
    if over_fields or (fields_missing and region_share > GLARE_REGION_SHARE):
        issues.append(GLARE)
    if fields_missing and not issues:
        # Fields were not read and none of the measures above explains why; the customer can
        # still be told to retake the photo rather than which field failed.
        issues.append(UNCLEAR)
    return issues
