"""Capture quality checks for a card photo, each with an instruction the customer can follow.

Thresholds are for a photo normalised to 1000 px on its longer side (see `_normalise`) and were
set on the synthetic cards of tests/fixtures/idcards.py (clean, lightly degraded: pass; heavily
blurred or with a highlight over the text: fail). The screen check (`screen_score`) is the
exception: it works in the photo's own pixels. See docs/identity.md for the values seen.
"""

from __future__ import annotations

import functools
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
# A photo of a screen: how far (dB) the strongest isolated high-frequency peak of the card's
# power spectrum stands above the spectrum around it. A display's pixel grid, or its moiré
# against the camera's own pixels, is one periodic pattern over the whole card; print, text and
# photos are not (synthetic cards and their degradations <= 11 dB, screens >= 17 dB).
SCREEN_PEAK_DB = 16.0
_SCREEN_TILE = 256  # pixels; up to 3 x 3 tiles over the card's text, their spectra averaged
_SCREEN_MIN_TILE = 128
# Cycles per pixel below which peaks are the card's layout (text lines, character pitch).
_SCREEN_MIN_FREQ = 0.06
_SCREEN_SQUARE = 5  # bins each way: the square neighbourhood a peak is compared with
_SCREEN_RIDGE = 8  # bins each way along the peak's own row and column (skipping +-1)
_SCREEN_CANDIDATES = 32  # strongest bins over the square's mean that are checked in full
# Compression blocks: JPEG's 8 x 8 (16 x 16 for subsampled colour), the video codecs' 4, 8
# and 16 pixel transforms and macroblocks put their peaks at multiples of 1/16 cycle/pixel.
_BLOCK_PERIOD = 16


@dataclass(frozen=True)
class QualityIssue:
    code: str  # card_not_found | screen_photo | blurry | glare | too_dark | unclear
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
SCREEN_PHOTO = QualityIssue(
    "screen_photo",
    "请出示身份证原件，不要拍摄屏幕上的图片",
    "show the original card; a photo of a screen is not accepted",
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


@functools.cache
def _spectrum_support(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D Hann window of a tile, and where (fftshift layout) a screen's peak is looked
    for: one half-plane (a real image's spectrum is symmetric), above the layout band, and off
    the compression block frequencies (+-1 bin)."""
    hann = np.hanning(size).astype(np.float32)
    f = (np.arange(size) - size // 2) / size
    fy, fx = np.meshgrid(f, f, indexing="ij")
    wanted = (np.hypot(fx, fy) >= _SCREEN_MIN_FREQ) & (fy >= 0)
    bins = size / _BLOCK_PERIOD  # between block frequencies
    on_x = np.abs(fx * _BLOCK_PERIOD - np.round(fx * _BLOCK_PERIOD)) * bins <= 1.01
    on_y = np.abs(fy * _BLOCK_PERIOD - np.round(fy * _BLOCK_PERIOD)) * bins <= 1.01
    return np.outer(hann, hann), wanted & ~(on_x & on_y)


_SQUARE_OFFSETS = np.mgrid[
    -_SCREEN_SQUARE : _SCREEN_SQUARE + 1, -_SCREEN_SQUARE : _SCREEN_SQUARE + 1
].reshape(2, -1)
_RIDGE_OFFSETS = np.r_[-_SCREEN_RIDGE - 1 : -1, 2 : _SCREEN_RIDGE + 2]


def screen_score(image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> float:
    """How far (dB) the strongest isolated high-frequency peak of `region`'s power spectrum
    stands above its surroundings; >= SCREEN_PEAK_DB: a photo of a screen.

    "Above its surroundings" is above the largest of three medians: of the square around the
    peak, of its own row and of its own column. Text lines and the card's edges put whole
    ridges of energy along the axes, which a square alone would let through; a pixel grid is
    a point. Measured in the photo's own pixels, not normalised: resampling would blur the grid
    away and move the compression blocks off their frequencies. Up to 3 x 3 Hann-windowed
    tiles spread over the region are averaged (a grid adds up across tiles, the content does
    not), so the cost does not grow with the photo."""
    h, w = image.shape[:2]
    size = _SCREEN_TILE
    while size > _SCREEN_MIN_TILE and min(h, w) < size:
        size //= 2
    if min(h, w) < size:
        return 0.0
    x0, y0, x1, y1 = region if region is not None else (0, 0, w, h)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    # A region smaller than a tile grows to one around its centre.
    if x1 - x0 < size:
        x0 = min(max(0, (x0 + x1 - size) // 2), w - size)
        x1 = x0 + size
    if y1 - y0 < size:
        y0 = min(max(0, (y0 + y1 - size) // 2), h - size)
        y1 = y0 + size
    ys = np.linspace(y0, y1 - size, min(3, -(-(y1 - y0) // size))).astype(int)
    xs = np.linspace(x0, x1 - size, min(3, -(-(x1 - x0) // size))).astype(int)
    window, wanted = _spectrum_support(size)
    power = np.zeros((size, size), np.float32)
    for y in ys:
        for x in xs:
            tile = image[y : y + size, x : x + size]
            if tile.ndim == 3:
                tile = cv2.cvtColor(tile, cv2.COLOR_BGR2GRAY)
            t = tile.astype(np.float32)
            f = cv2.dft((t - float(t.mean())) * window, flags=cv2.DFT_COMPLEX_OUTPUT)
            power += cv2.magnitude(f[..., 0], f[..., 1]) ** 2
    db = 10 * np.log10(np.fft.fftshift(power) / (len(ys) * len(xs)) + 1e-3)
    # Candidates: the bins furthest above the mean of their square; then the medians.
    side = 2 * _SCREEN_SQUARE + 1
    excess = np.where(wanted, db - cv2.blur(db, (side, side)), -np.inf)
    top = np.argpartition(excess.ravel(), -_SCREEN_CANDIDATES)[-_SCREEN_CANDIDATES:]
    cy, cx = np.divmod(top, size)
    keep = wanted[cy, cx]
    cy, cx = cy[keep][:, None], cx[keep][:, None]
    if cy.size == 0:
        return 0.0
    m = _SCREEN_RIDGE + 1
    padded = np.pad(db, m, mode="edge")
    square = padded[cy + m + _SQUARE_OFFSETS[0], cx + m + _SQUARE_OFFSETS[1]]
    column = padded[cy + m + _RIDGE_OFFSETS, cx + m]
    row = padded[cy + m, cx + m + _RIDGE_OFFSETS]
    background = np.max(
        [np.median(square, axis=1), np.median(column, axis=1), np.median(row, axis=1)], axis=0
    )
    return max(0.0, float(np.max(db[cy[:, 0], cx[:, 0]] - background)))


def check_quality(
    image: np.ndarray, lines: Sequence[TextLine], fields_missing: bool
) -> list[QualityIssue]:
    """Issues with this photo. `fields_missing`: the parser did not find every field, which is
    when blur or glare explain the failure (a light highlight on a fully read card is fine)."""
    if len(lines) < 3:
        # No card region to judge for a screen: the frame may well hold a monitor behind the
        # customer. A screen that is not read cannot be accepted either.
        issues = [CARD_NOT_FOUND]
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if float(gray.mean()) < DARK_MEAN:
            issues.append(TOO_DARK)
        elif sharpness(image) < BLUR_MIN_VARIANCE:
            issues.append(BLURRY)
        return issues
    region = text_region(lines, image.shape)
    # Whether or not every field was read: a screen is refused even when it reads perfectly.
    issues = [SCREEN_PHOTO] if screen_score(image, region) >= SCREEN_PEAK_DB else []
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
