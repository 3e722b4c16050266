"""The customer's handwritten signature: a PNG checked before anything keeps it.

The bytes come from a browser and are decoded server-side, so they are treated as hostile: the
size is capped before decoding, the dimensions are read from the header and capped before any
pixel is decompressed (a small PNG can inflate to gigabytes), and the image must hold ink.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from server.workflow.transactions.config import WorkflowConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_SIDE = 64
# Darker than this on white (0..255 luma), once transparency is flattened onto white, is ink.
INK_LUMA = 128


class SignatureRejected(ValueError):
    """The image is not an acceptable signature; `code` and the message say why and what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Signature:
    png: bytes
    width: int
    height: int
    ink_pixels: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()


def validate_signature(data: bytes, config: WorkflowConfig) -> Signature:
    """CPU work (decoding): call it from a thread."""
    if len(data) > config.signature_max_bytes:
        raise SignatureRejected(
            "signature_too_large",
            f"The signature image is larger than {config.signature_max_bytes} bytes; "
            "clear the pad and sign again.",
        )
    if not data.startswith(PNG_MAGIC):
        raise SignatureRejected("signature_not_png", "The signature must be a PNG image.")
    max_width, max_height = config.signature_max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                width, height = image.size
                if width > max_width or height > max_height:
                    raise SignatureRejected(
                        "signature_too_large",
                        f"The signature image is {width}x{height} pixels; at most "
                        f"{max_width}x{max_height} is accepted.",
                    )
                if width < MIN_SIDE or height < MIN_SIDE:
                    raise SignatureRejected(
                        "signature_too_small",
                        f"The signature image is {width}x{height} pixels; sign on the full pad.",
                    )
                flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
                flat.alpha_composite(image.convert("RGBA"))
                luma = flat.convert("L")
    except SignatureRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SignatureRejected(
            "signature_too_large",
            f"The signature image is larger than {max_width}x{max_height} pixels.",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Warning) as exc:
        raise SignatureRejected(
            "signature_unreadable", "The signature image could not be read; sign again."
        ) from exc
    ink = sum(luma.point(lambda v: 255 if v < INK_LUMA else 0).histogram()[255:])
    if ink < config.signature_min_ink_pixels:
        raise SignatureRejected(
            "signature_blank",
            "The signature pad is (almost) empty. Please sign your name on the pad.",
        )
    return Signature(png=data, width=width, height=height, ink_pixels=ink)
