"""Card OCR: the engine interface, its backends, the field parser and the image quality checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Side = Literal["front", "back"]


@dataclass(frozen=True)
class TextLine:
    """One recognised line: its text, its quadrilateral (4 x (x, y), image pixels, clockwise
    from top-left) and the recogniser's confidence in [0, 1]."""

    text: str
    box: tuple[tuple[float, float], ...]
    score: float

    @property
    def x0(self) -> float:
        return min(p[0] for p in self.box)

    @property
    def x1(self) -> float:
        return max(p[0] for p in self.box)

    @property
    def y0(self) -> float:
        return min(p[1] for p in self.box)

    @property
    def y1(self) -> float:
        return max(p[1] for p in self.box)

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


class OcrEngine(Protocol):
    """Anything that turns a BGR image into text lines. Implementations are not required to be
    thread-safe; `server.identity.engines` serialises calls per engine."""

    @property
    def model_versions(self) -> dict[str, str]: ...

    def recognize(self, image: np.ndarray) -> list[TextLine]: ...
