"""Liveness primitives on synthetic landmark sequences and on landmarks from real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from server.identity.face import Face
from server.identity.face.insight import InsightFaceEngine, pack_from_vectron_wheel
from server.identity.liveness import (
    EYE_A_106,
    EYE_B_106,
    INNER_LIP_106,
    MOUTH_CORNERS_106,
    Challenge,
    LivenessInputError,
    eye_aspect_ratio,
    judge,
    mouth_aspect_ratio,
    yaw_ratio,
)
from tests.fixtures.idcards import load_face, vectron_image

# A frontal 5-point face: eyes, nose, mouth corners (pixels).
FIVE = np.array([[100, 100], [160, 100], [130, 135], [108, 165], [152, 165]], np.float64)


def five_with_yaw(shift: float) -> np.ndarray:
    pts = FIVE.copy()
    pts[2, 0] += shift * 60  # nose moves along the eye axis by `shift` inter-ocular distances
    return pts


def test_yaw_sign_and_roll_invariance() -> None:
    assert abs(yaw_ratio(FIVE)) < 1e-9
    assert yaw_ratio(five_with_yaw(0.3)) == pytest.approx(0.3)
    # Rolling the whole face by 30 degrees does not look like a turn.
    a = np.deg2rad(30)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    assert yaw_ratio(five_with_yaw(0.3) @ rot.T) == pytest.approx(0.3)


def test_turn_challenges_on_synthetic_sequences() -> None:
    turn_left = [five_with_yaw(s) for s in (0.0, 0.02, 0.15, 0.3, 0.35, 0.33)]
    assert judge(Challenge.TURN_LEFT, turn_left)
    assert not judge(Challenge.TURN_RIGHT, turn_left)
    assert judge(Challenge.TURN_RIGHT, turn_left, mirrored=True)
    # Already turned from the first frame (a photo held at an angle): no neutral start.
    assert not judge(Challenge.TURN_LEFT, [five_with_yaw(0.35)] * 6)
    # A single jittery frame is not a turn.
    assert not judge(Challenge.TURN_LEFT, [five_with_yaw(s) for s in (0, 0, 0.3, 0, 0, 0)])


def test_frames_and_shapes_are_checked() -> None:
    with pytest.raises(LivenessInputError):
        judge(Challenge.TURN_LEFT, [FIVE])
    with pytest.raises(LivenessInputError):
        yaw_ratio(np.zeros((68, 2)))
    with pytest.raises(LivenessInputError, match="106-point"):
        judge(Challenge.BLINK, [FIVE] * 6)


@pytest.fixture(scope="module")
def insight(tmp_path_factory: pytest.TempPathFactory) -> InsightFaceEngine:
    pack: Path = tmp_path_factory.mktemp("pack")
    return InsightFaceEngine(pack, pack_from_vectron_wheel(pack))


def lmk106(engine: InsightFaceEngine, image: np.ndarray, face: Face | None = None) -> np.ndarray:
    f = face or engine.detect(image)[0]
    return engine.landmarks106(image, f)


def test_106_indices_match_the_five_points(insight: InsightFaceEngine) -> None:
    img = load_face("obama.jpg")
    face = insight.detect(img)[0]
    p = insight.landmarks106(img, face)
    iod = float(np.linalg.norm(face.landmarks[1] - face.landmarks[0]))
    # Each 106-point group lands on the detector's own corresponding point.
    assert np.linalg.norm(p[list(EYE_A_106)].mean(0) - face.landmarks[0]) < 0.2 * iod
    assert np.linalg.norm(p[list(EYE_B_106)].mean(0) - face.landmarks[1]) < 0.2 * iod
    assert np.linalg.norm(p[MOUTH_CORNERS_106[0]] - face.landmarks[3]) < 0.2 * iod
    assert np.linalg.norm(p[MOUTH_CORNERS_106[1]] - face.landmarks[4]) < 0.2 * iod
    assert p[INNER_LIP_106[0], 1] < p[INNER_LIP_106[1], 1]  # upper lip above lower


def close_eyes(p: np.ndarray, factor: float = 0.15) -> np.ndarray:
    """Squash each eye contour onto its long axis, as a closed eyelid is."""
    q = p.copy()
    for idx in (list(EYE_A_106), list(EYE_B_106)):
        pts = q[idx]
        c = pts.mean(0)
        _, _, vt = np.linalg.svd(pts - c)
        proj = (pts - c) @ vt.T
        proj[:, 1] *= factor
        q[idx] = proj @ vt + c
    return q


def test_blink_from_real_landmarks(insight: InsightFaceEngine) -> None:
    open_ = lmk106(insight, load_face("obama3.jpg"))
    closed = close_eyes(open_)
    assert eye_aspect_ratio(closed) < 0.5 * eye_aspect_ratio(open_)
    assert judge(Challenge.BLINK, [open_, open_, open_, closed, open_, open_])
    assert not judge(Challenge.BLINK, [open_] * 6)
    # Closed and never reopened (eyes shut, or a photo with closed eyes) is not a blink.
    assert not judge(Challenge.BLINK, [open_, open_, open_, closed, closed, closed])


def test_open_mouth_from_real_photos(insight: InsightFaceEngine) -> None:
    closed = lmk106(insight, load_face("obama3.jpg"))  # mouth closed
    opened = lmk106(insight, load_face("obama2.jpg"))  # speaking, mouth open
    assert mouth_aspect_ratio(closed) < 0.12 < 0.3 < mouth_aspect_ratio(opened)
    assert judge(Challenge.OPEN_MOUTH, [closed, closed, opened, opened])
    assert not judge(Challenge.OPEN_MOUTH, [closed] * 4)


def test_head_turn_from_real_photos(insight: InsightFaceEngine) -> None:
    frontal_img = load_face("obama.jpg")
    frontal = insight.detect(frontal_img)[0].landmarks
    gdp = vectron_image("gdp.jpg")
    turned_face = insight.detect(gdp)[0]  # the largest face: a player looking aside
    turned = turned_face.landmarks
    assert yaw_ratio(turned) > 0.25 > abs(yaw_ratio(frontal))
    frames = [frontal, frontal, turned, turned]
    assert judge(Challenge.TURN_LEFT, frames)
    # The mirrored photo turns the other way.
    mirrored = cv2.flip(gdp, 1)
    cx = gdp.shape[1] - (turned_face.box[0] + turned_face.box[2]) / 2
    m_face = min(insight.detect(mirrored), key=lambda f: abs((f.box[0] + f.box[2]) / 2 - cx))
    frames_m = [frontal, frontal, m_face.landmarks, m_face.landmarks]
    assert judge(Challenge.TURN_RIGHT, frames_m)
    assert not judge(Challenge.TURN_LEFT, frames_m)
    # 106-point landmarks give the same answer.
    assert yaw_ratio(lmk106(insight, gdp, turned_face)) > 0.25
