"""Liveness challenge primitives: pure functions on sequences of facial landmarks.

A challenge ("turn your head left", "blink", "open your mouth") is judged from the landmarks of
consecutive frames; the video plumbing that produces them lives elsewhere. Head turns need only
the 5 points every detector here gives; blinks and mouth opening need the eye and lip contours of
the 106-point model (InsightFace 2d106det), because 5 points carry no eyelid or lip shape.

Directions are the customer's own: "left" is the customer's left, which in a camera image that is
not mirrored is the image's right. Pass `mirrored=True` for selfie-style (mirrored) frames.

These primitives defeat a printed photo held still; they do not defeat a replayed video or a
mask. Anti-spoofing models are a separate layer (docs/identity.md). `continuity_break` ties the
movements to one person: the face in each sampled picture must be the face in the one before.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

# Indices in InsightFace's 2d106det markup, read off the model's output on a frontal face
# (tests/unit/test_face_liveness.py checks them on a real image).
EYE_A_106 = tuple(range(33, 43))  # the eye on the image's left
EYE_B_106 = tuple(range(87, 97))  # the eye on the image's right
MOUTH_CORNERS_106 = (52, 61)
INNER_LIP_106 = (62, 60)  # upper inner lip centre, lower inner lip centre
NOSE_TIP_106 = 80
EYE_CENTRES_106 = (38, 88)

# Yaw ratio: horizontal offset of the nose tip from the eye midpoint, in inter-ocular distances.
# A frontal face is near 0; a clear turn of ~30 degrees gives ~0.3.
YAW_FRONTAL = 0.12
YAW_TURNED = 0.25
# Blink: eye aspect ratio drops below this share of the open-eye baseline, then recovers.
BLINK_CLOSED_SHARE = 0.55
BLINK_OPEN_SHARE = 0.8
# Mouth: inner-lip opening over mouth width.
MOUTH_CLOSED = 0.12
MOUTH_OPEN = 0.3
# A state must hold this many consecutive frames: one frame of landmark jitter is not an action.
MIN_FRAMES = 2


# Identity continuity between consecutive sampled pictures of a liveness sequence. Consecutive
# pictures differ by a small pose change, so the same person scores far above a stranger; the
# embedding threshold per engine and the measurements behind it are in docs/identity.md
# ("Liveness in the call"). A move of the face box further than MAX_SHIFT face widths, or a size
# change beyond MAX_SCALE, between two pictures is a different face put in front of the camera.
CONTINUITY_THRESHOLDS: dict[str, float] = {"insightface": 0.25, "yunet": 0.25}
MAX_SHIFT = 0.5
MAX_SCALE = 1.5


class Challenge(StrEnum):
    TURN_LEFT = "turn_left"
    TURN_RIGHT = "turn_right"
    BLINK = "blink"
    OPEN_MOUTH = "open_mouth"


class Break(StrEnum):
    """Why a liveness sequence stopped following one face."""

    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    OTHER_FACE = "other_face"
    JUMP = "jump"


Box = tuple[float, float, float, float]


class LivenessInputError(ValueError):
    """The landmarks cannot judge this challenge (wrong point count, too few frames)."""


def _points(frame: np.ndarray) -> np.ndarray:
    pts = np.asarray(frame, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (5, 106):
        raise LivenessInputError(f"expected 5x2 or 106x2 landmarks, got {pts.shape}")
    return pts


def _eyes_nose(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if pts.shape[0] == 5:
        return pts[0], pts[1], pts[2]
    return (
        pts[list(EYE_A_106)].mean(axis=0),
        pts[list(EYE_B_106)].mean(axis=0),
        pts[NOSE_TIP_106],
    )


def yaw_ratio(frame: np.ndarray) -> float:
    """Signed head yaw proxy: > 0 when the nose is toward the image's right of the eye
    midpoint (the customer turned to their left, non-mirrored), < 0 the other way."""
    pts = _points(frame)
    a, b, nose = _eyes_nose(pts)
    axis = b - a
    dist = float(np.linalg.norm(axis))
    if dist < 1e-6:
        raise LivenessInputError("eye landmarks coincide")
    # Measure along the eye axis, so a rolled (tilted) head is not read as a turn.
    return float(np.dot(nose - (a + b) / 2, axis / dist) / dist)


def _aspect(points: np.ndarray) -> float:
    """Height over width of a contour, measured in its own principal axes (roll-invariant)."""
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt.T
    width = float(np.ptp(proj[:, 0]))
    height = float(np.ptp(proj[:, 1]))
    return height / width if width > 1e-6 else 0.0


def eye_aspect_ratio(frame: np.ndarray) -> float:
    """Mean of both eyes' contour height/width; needs 106-point landmarks."""
    pts = _points(frame)
    if pts.shape[0] != 106:
        raise LivenessInputError("blink detection needs 106-point landmarks (2d106det)")
    return (_aspect(pts[list(EYE_A_106)]) + _aspect(pts[list(EYE_B_106)])) / 2


def mouth_aspect_ratio(frame: np.ndarray) -> float:
    """Inner-lip opening over mouth width; needs 106-point landmarks."""
    pts = _points(frame)
    if pts.shape[0] != 106:
        raise LivenessInputError("mouth detection needs 106-point landmarks (2d106det)")
    width = float(np.linalg.norm(pts[MOUTH_CORNERS_106[1]] - pts[MOUTH_CORNERS_106[0]]))
    gap = float(np.linalg.norm(pts[INNER_LIP_106[1]] - pts[INNER_LIP_106[0]]))
    return gap / width if width > 1e-6 else 0.0


def _held(flags: Sequence[bool], n: int = MIN_FRAMES) -> int | None:
    """Index of the first frame that starts a run of `n` True flags."""
    run = 0
    for i, f in enumerate(flags):
        run = run + 1 if f else 0
        if run >= n:
            return i - n + 1
    return None


def judge(
    challenge: Challenge, landmark_frames: Sequence[np.ndarray], mirrored: bool = False
) -> bool:
    """True when the frames show the challenge performed: a neutral state first, then the
    action held for MIN_FRAMES frames (and, for a blink, the eyes open again). For a head turn,
    the first turn held after the neutral state must be the one asked for.

    The frames should start at the prompt: the caller bounds how long after it the action may
    come by the frames it passes."""
    if len(landmark_frames) < 2 * MIN_FRAMES:
        raise LivenessInputError(f"need at least {2 * MIN_FRAMES} frames")
    if challenge in (Challenge.TURN_LEFT, Challenge.TURN_RIGHT):
        yaws = [yaw_ratio(f) for f in landmark_frames]
        sign = 1.0 if challenge is Challenge.TURN_LEFT else -1.0
        if mirrored:
            sign = -sign
        start = _held([abs(y) < YAW_FRONTAL for y in yaws])
        if start is None:
            return False
        asked = _held([sign * y > YAW_TURNED for y in yaws[start:]])
        # Turning both ways until one counts is not following the prompt, and it is what a
        # looped video of both turns does: the other turn first fails, whatever comes after it.
        other = _held([-sign * y > YAW_TURNED for y in yaws[start:]])
        return asked is not None and (other is None or asked < other)
    if challenge is Challenge.OPEN_MOUTH:
        mars = [mouth_aspect_ratio(f) for f in landmark_frames]
        start = _held([m < MOUTH_CLOSED for m in mars])
        if start is None:
            return False
        return _held([m > MOUTH_OPEN for m in mars[start:]]) is not None
    if challenge is Challenge.BLINK:
        ears = [eye_aspect_ratio(f) for f in landmark_frames]
        baseline = float(np.percentile(ears, 90))
        if baseline <= 0:
            return False
        opened = [e >= BLINK_OPEN_SHARE * baseline for e in ears]
        start = _held(opened)
        if start is None:
            return False
        # A blink is short (100-400 ms): one closed frame counts, then the eyes must reopen.
        for i in range(start + MIN_FRAMES, len(ears)):
            if ears[i] < BLINK_CLOSED_SHARE * baseline:
                return any(opened[i + 1 :])
        return False
    raise ValueError(challenge)


def box_change(previous: Box, current: Box) -> tuple[float, float]:
    """How far the face box moved, in the previous box's widths, and how much its width changed
    (a ratio >= 1, growing or shrinking alike)."""
    pw, cw = previous[2] - previous[0], current[2] - current[0]
    if pw <= 0 or cw <= 0:
        return float("inf"), float("inf")
    dx = (current[0] + current[2] - previous[0] - previous[2]) / 2
    dy = (current[1] + current[3] - previous[1] - previous[3]) / 2
    return float(np.hypot(dx, dy) / pw), max(pw / cw, cw / pw)


def continuity_break(
    faces: int,
    box: Box | None,
    previous_box: Box | None,
    similarity: float | None,
    threshold: float,
) -> Break | None:
    """Whether one sampled picture breaks the sequence: it must show exactly one face that
    counts and, after the first, the same person as the picture before (`similarity` of their
    embeddings at least `threshold`) where that face was (no jump of the box)."""
    if faces == 0:
        return Break.NO_FACE
    if faces > 1:
        return Break.SEVERAL_FACES
    if previous_box is None:
        return None
    if box is None or similarity is None or similarity < threshold:
        return Break.OTHER_FACE
    shift, scale = box_change(previous_box, box)
    if shift > MAX_SHIFT or scale > MAX_SCALE:
        return Break.JUMP
    return None
