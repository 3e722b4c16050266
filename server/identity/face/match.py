"""Does the live face belong to the person on the ID card? One decision with its reason.

The score stays on the server: clients get pass/fail and a reason; exposing the similarity would
let an attacker tune a spoof against it. `MatchResult.public_dict()` is what may leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from server.identity.face import Face, FaceEngine
from server.identity.images import check_array

# Cosine-similarity thresholds per engine, calibrated on the labelled set described in
# docs/identity.md (bench/kyc.py reproduces it). Each sits above the highest different-person
# score seen there, with margin, and below the lowest same-person score.
THRESHOLDS: dict[str, float] = {"insightface": 0.45, "yunet": 0.50}
# A second face counts when it is at least this share of the largest face's area: a small face
# far behind the customer is a passer-by, a comparable one is a second person in front.
SECOND_FACE_AREA_SHARE = 0.25
# Faces narrower than this (pixels) do not carry enough detail to compare.
MIN_FACE_WIDTH = 32


class Decision(StrEnum):
    PASS = "pass"
    FAIL = "fail"


class MatchReason(StrEnum):
    MATCH = "match"
    NO_MATCH = "no_match"
    NO_FACE_ON_ID = "no_face_on_id"
    NO_FACE_LIVE = "no_face_live"
    SEVERAL_FACES_LIVE = "several_faces_live"
    FACE_TOO_SMALL = "face_too_small"


MESSAGES: dict[MatchReason, tuple[str, str]] = {
    MatchReason.MATCH: ("人脸比对通过", "the face matches the ID card"),
    MatchReason.NO_MATCH: (
        "人脸与身份证照片不一致。请摘下帽子、口罩和眼镜，在明亮处正对摄像头再试一次",
        "the face does not match the ID card photo; take off any hat, mask or glasses, face "
        "the camera in good light and try again",
    ),
    MatchReason.NO_FACE_ON_ID: (
        "身份证照片中未检测到人脸，请重新拍摄身份证人像面",
        "no face found on the ID card; retake the photo side of the card",
    ),
    MatchReason.NO_FACE_LIVE: (
        "未检测到人脸，请正对摄像头",
        "no face found; face the camera",
    ),
    MatchReason.SEVERAL_FACES_LIVE: (
        "检测到多张人脸，请确保画面中只有您本人",
        "several faces found; make sure only you are in the picture",
    ),
    MatchReason.FACE_TOO_SMALL: (
        "人脸太小，请靠近摄像头",
        "the face is too small; move closer to the camera",
    ),
}


@dataclass(frozen=True)
class MatchResult:
    decision: Decision
    reason: MatchReason
    score: float | None  # server-side only; never sent to the customer
    threshold: float
    engine: str
    model_versions: dict[str, str]

    @property
    def message_zh(self) -> str:
        return MESSAGES[self.reason][0]

    @property
    def message_en(self) -> str:
        return MESSAGES[self.reason][1]

    def public_dict(self) -> dict[str, str]:
        """What a client may see: no score, no threshold."""
        return {
            "decision": self.decision.value,
            "reason": self.reason.value,
            "message_zh": self.message_zh,
            "message_en": self.message_en,
        }

    def audit_dict(self) -> dict[str, object]:
        """What the server records for operators and auditors."""
        return {
            **self.public_dict(),
            "score": None if self.score is None else round(self.score, 4),
            "threshold": self.threshold,
            "engine": self.engine,
            "model_versions": dict(self.model_versions),
        }


def _fail(
    reason: MatchReason, engine: FaceEngine, threshold: float, score: float | None = None
) -> MatchResult:
    return MatchResult(Decision.FAIL, reason, score, threshold, engine.name, engine.model_versions)


def live_faces(faces: list[Face]) -> list[Face]:
    """The faces that count in a live frame: the largest and any comparable to it."""
    if not faces:
        return []
    largest = max(faces, key=lambda f: f.area)
    return [f for f in faces if f.area >= SECOND_FACE_AREA_SHARE * largest.area]


def match(
    id_photo_image: np.ndarray,
    live_image: np.ndarray,
    engine: FaceEngine,
    threshold: float | None = None,
) -> MatchResult:
    """Compare the face on the ID card photo with the one live face.

    On the card the largest face is the portrait (newer cards also print a small ghost image,
    which is ignored). The live image must show exactly one person.
    """
    check_array(id_photo_image)
    check_array(live_image)
    thr = THRESHOLDS[engine.name] if threshold is None else threshold
    id_faces = engine.detect(id_photo_image)
    if not id_faces:
        return _fail(MatchReason.NO_FACE_ON_ID, engine, thr)
    id_face = max(id_faces, key=lambda f: f.area)
    live = live_faces(engine.detect(live_image))
    if not live:
        return _fail(MatchReason.NO_FACE_LIVE, engine, thr)
    if len(live) > 1:
        return _fail(MatchReason.SEVERAL_FACES_LIVE, engine, thr)
    if live[0].width < MIN_FACE_WIDTH:
        return _fail(MatchReason.FACE_TOO_SMALL, engine, thr)
    score = engine.compare(engine.embed(id_photo_image, id_face), engine.embed(live_image, live[0]))
    if score >= thr:
        return MatchResult(
            Decision.PASS, MatchReason.MATCH, score, thr, engine.name, engine.model_versions
        )
    return _fail(MatchReason.NO_MATCH, engine, thr, score)
