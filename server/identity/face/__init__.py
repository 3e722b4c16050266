"""Face detection and recognition: the engine interface shared by the backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Face:
    """A detected face in image pixels.

    `box` is (x0, y0, x1, y1); `landmarks` is 5 x 2 in the order right eye, left eye (as seen in
    the image: the subject's right eye is on the image's left), nose tip, right and left mouth
    corner, which is what both SCRFD and YuNet produce and what alignment uses.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


class FaceEngine(Protocol):
    """Detection, embedding and comparison with one model family. Scores of different engines
    are not comparable: each has its own threshold (server.identity.face.match.THRESHOLDS)."""

    name: str

    @property
    def model_versions(self) -> dict[str, str]: ...

    def detect(self, image: np.ndarray) -> list[Face]: ...

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray: ...

    def compare(self, a: np.ndarray, b: np.ndarray) -> float: ...


@runtime_checkable
class DenseLandmarks(Protocol):
    """An engine that can also give 106-point landmarks (InsightFace 2d106det)."""

    @property
    def has_landmarks106(self) -> bool: ...

    def landmarks106(self, image: np.ndarray, face: Face) -> np.ndarray: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denom == 0.0:
        return 0.0
    return float(np.dot(a, b) / denom)
