"""Decoding untrusted uploads into BGR arrays, with limits checked before decoding.

Customers upload ID card photos and the server decodes them, so the decoder is attack surface: a
small compressed file can declare an enormous canvas (a decode bomb). The header is read first
(Pillow reads dimensions without decoding pixels) and the byte and pixel caps are applied before
any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 25_000_000
MIN_SIDE = 64
# Formats a phone camera or browser canvas produces; anything else is refused rather than handed
# to a less exercised decoder. Pillow names a JPEG that carries more than one picture "MPO":
# Android's Ultra HDR photos (a gain map after the picture) and many phones' depth or
# multi-frame shots are such JPEGs; only the first, primary picture is decoded.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})


class ImageInputError(ValueError):
    """The upload is not an acceptable image; `code` is stable, the message says what to do."""

    def __init__(self, code: str, message_zh: str, message_en: str) -> None:
        super().__init__(message_en)
        self.code = code
        self.message_zh = message_zh
        self.message_en = message_en


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    min_side: int = MIN_SIDE


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode `data` (JPEG/PNG/WebP/BMP) into an HxWx3 uint8 BGR array, or raise ImageInputError.

    EXIF orientation is applied, because phones store portrait photos as rotated landscape.
    """
    lim = limits or ImageLimits()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageInputError(
            "wrong_type", "请上传图片文件", f"expected image bytes, got {type(data).__name__}"
        )
    if len(data) == 0:
        raise ImageInputError("empty", "上传的文件为空", "the file is empty; upload a photo")
    if len(data) > lim.max_bytes:
        raise ImageInputError(
            "too_large",
            f"图片过大，请上传小于 {lim.max_bytes // (1024 * 1024)} MB 的照片",
            f"the file is {len(data)} bytes; upload a photo under "
            f"{lim.max_bytes // (1024 * 1024)} MB",
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns (and errors at 2x); ours is stricter and comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                fmt = img.format or ""
                width, height = img.size
                if fmt not in ALLOWED_FORMATS:
                    raise ImageInputError(
                        "unsupported_format",
                        "不支持的图片格式，请上传 JPEG 或 PNG 照片",
                        f"{fmt or 'this'} images are not accepted; upload a JPEG or PNG photo",
                    )
                if width * height > lim.max_pixels:
                    raise ImageInputError(
                        "too_many_pixels",
                        "图片分辨率过高，请降低分辨率后重新上传",
                        f"the image is {width}x{height}; upload one under "
                        f"{lim.max_pixels // 1_000_000} megapixels",
                    )
                if min(width, height) < lim.min_side:
                    raise ImageInputError(
                        "too_small",
                        "图片分辨率过低，请靠近证件重新拍摄",
                        f"the image is {width}x{height}; move closer and retake it",
                    )
                img.load()
                upright = ImageOps.exif_transpose(img)
                if upright.mode in ("I", "I;16", "I;16L", "I;16B"):
                    # 16-bit greyscale (scanners save it): convert() would clip every value
                    # above 255, turning the whole card white. Scale 0-65535 to 0-255 instead.
                    upright = upright.convert("I").point(lambda v: v / 257).convert("L")
                rgb = upright.convert("RGB")
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires in open() for canvases over twice its limit.
        raise ImageInputError(
            "too_many_pixels",
            "图片分辨率过高，请降低分辨率后重新上传",
            f"the image declares too many pixels; upload one under "
            f"{lim.max_pixels // 1_000_000} megapixels",
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(
            "not_an_image",
            "无法识别的文件，请上传身份证照片（JPEG 或 PNG）",
            "the file is not a readable image; upload a JPEG or PNG photo",
        ) from exc
    arr = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(arr[:, :, ::-1])


def check_array(image: object) -> np.ndarray:
    """Accept an HxWx3 uint8 array (BGR) as engines expect; raise ImageInputError otherwise."""
    if not isinstance(image, np.ndarray):
        raise ImageInputError(
            "wrong_type", "图片格式错误", f"expected a numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageInputError(
            "wrong_type",
            "图片格式错误",
            f"expected an HxWx3 uint8 BGR array, got {image.dtype} {image.shape}",
        )
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageInputError("too_many_pixels", "图片分辨率过高", "the image has too many pixels")
    return image
