"""OCR backends. Both run PP-OCR ONNX models through RapidOCR's pipeline on onnxruntime.

- `RapidOcrEngine.from_wheel()`: the models the pinned rapidocr wheel ships (PP-OCRv6 small
  detection and recognition; no direction classifier, see `RapidOcrEngine`).
- `load_paddle_model_dir(dir, digests)`: a PaddleOCR-style model folder that a deployment
  provisions (official models exported to ONNX with paddle2onnx), laid out as

      DIR/det/inference.onnx
      DIR/rec/inference.onnx   + DIR/rec/inference.yml (PostProcess.character_dict)
                                 or DIR/rec/ppocr_keys.txt, unless the ONNX file embeds it
      DIR/cls/inference.onnx   (optional: the per-line 0/180 degree direction classifier;
                                 usually better left out, see `RapidOcrEngine`)

  Every file's SHA-256 must be given (from configuration) and is checked before loading.

RapidOCR is always given explicit model paths: with a path it never reaches for its download
code, and a missing file fails here with a message instead of a network attempt.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from server.identity.models import (
    RAPIDOCR_DET,
    RAPIDOCR_REC,
    ModelError,
    verified,
    verify_file,
)
from server.identity.ocr import TextLine

# Detection resizes the longer side to at most this (recognition still crops lines from the
# full-resolution image). On a 1280x960 photo with the card filling 80 % of the frame the labels
# are ~13 px high for detection; the synthetic cards still read exactly at 576 with the card
# filling only a third of the frame (512 starts to misorder rows), and 736 takes about twice as
# long to detect. RapidOCR's default (upscaling the short side to 736) costs several times more
# on a phone photo. bench/kyc.py measures the accuracy at this size.
_DET_LIMIT_SIDE = 576

# Recognition runs one line at a time at its own width (48 px high). RapidOCR's defaults batch 6
# lines and pad each batch to its widest line and to at least 320 px; a card's labels and short
# values (性别, 男) are 50-100 px wide, so half of the recognition time went to padding.
_REC_BATCH = 1
_REC_SHAPE = [3, 48, 48]  # channels, height, minimum width


class RapidOcrEngine:
    """PP-OCR det (+ cls) + rec through RapidOCR; load once, call `recognize` many times.

    The per-line 0/180 degree direction classifier is optional and the built-in engine does not
    use it: on a card it turns isolated characters (the 男 after 性别) upside down often enough
    to lose the field, and a whole card upside down is handled by `reader.read_card`, which
    reads the turned photo when the labels are not found.

    `threads` is onnxruntime's intra-op thread count per model. One is the default: the server
    runs the identity engines next to the media pipeline on a 2-core machine: two threads save
    under 0.1 s of a side's 0.4 s on an idle machine for 1.6x the CPU, and under load they cost
    twice the CPU and twice the wall time of one (docs/benchmarks.md, "Identity (KYC)").
    """

    def __init__(
        self,
        det: Path,
        rec: Path,
        cls: Path | None,
        versions: Mapping[str, str],
        rec_keys: Path | None = None,
        threads: int | None = 1,
    ) -> None:
        from rapidocr import RapidOCR

        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.use_cls": cls is not None,
            "Det.model_path": str(det),
            "Det.limit_type": "max",
            "Det.limit_side_len": _DET_LIMIT_SIDE,
            "Rec.model_path": str(rec),
            "Rec.rec_batch_num": _REC_BATCH,
            "Rec.rec_img_shape": list(_REC_SHAPE),
        }
        if threads is not None:
            # None: onnxruntime's default (one thread per physical core).
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        if cls is not None:
            params["Cls.model_path"] = str(cls)
        if rec_keys is not None:
            params["Rec.rec_keys_path"] = str(rec_keys)
        self._ocr = RapidOCR(params=params)
        # RapidOCR's logger is global to the library; keep it quiet in our logs.
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self._versions = dict(versions)

    @classmethod
    def from_wheel(cls, threads: int | None = 1) -> RapidOcrEngine:
        """The default engine: detection and recognition models from the rapidocr wheel,
        verified against pinned digests (no direction classifier, see the class docstring)."""
        return cls(
            verified(RAPIDOCR_DET),
            verified(RAPIDOCR_REC),
            None,
            {"det": RAPIDOCR_DET.version, "rec": RAPIDOCR_REC.version},
            threads=threads,
        )

    @property
    def model_versions(self) -> dict[str, str]:
        return dict(self._versions)

    def recognize(self, image: np.ndarray) -> list[TextLine]:
        out = self._ocr(image)
        # RapidOCR's return type is a union over its task modes; with det+rec it is always
        # the full result, whose fields are None when no text was found.
        boxes = getattr(out, "boxes", None)
        txts = getattr(out, "txts", None)
        scores = getattr(out, "scores", None)
        if boxes is None or txts is None or scores is None:
            return []
        lines = []
        for box, text, score in zip(boxes, txts, scores, strict=True):
            quad = tuple((float(x), float(y)) for x, y in np.asarray(box).reshape(-1, 2))
            lines.append(TextLine(str(text), quad, float(score)))
        return lines


def _character_dict_from_yml(path: Path) -> list[str] | None:
    import yaml

    with path.open(encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        return None
    post = doc.get("PostProcess")
    chars = post.get("character_dict") if isinstance(post, dict) else None
    if isinstance(chars, list) and all(isinstance(c, str) for c in chars):
        return [str(c) for c in chars]
    return None


def _onnx_has_character_dict(path: Path) -> bool:
    import onnxruntime as ort

    # Metadata only: a session is the documented way to read it and is cheap next to loading.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return "character" in sess.get_modelmeta().custom_metadata_map


class PaddleModelDir:
    """A checked PaddleOCR-layout model folder. Keep the object alive while the engine built
    from it is in use: it owns the temporary character dictionary file."""

    def __init__(self, root: Path, digests: Mapping[str, str]) -> None:
        self.root = root
        if not root.is_dir():
            raise ModelError(
                f"OCR model directory {root} does not exist; provision det/, rec/ (and cls/) "
                "with inference.onnx files there, or leave the setting empty to use the "
                "built-in models"
            )
        self.det = self._checked("det/inference.onnx", digests, required=True)
        self.rec = self._checked("rec/inference.onnx", digests, required=True)
        self.cls = self._checked("cls/inference.onnx", digests, required=False)
        self._tmp = tempfile.TemporaryDirectory(prefix="vteller-ocr-")
        self.rec_keys = self._rec_keys(digests)

    def _checked(self, rel: str, digests: Mapping[str, str], *, required: bool) -> Path | None:
        path = self.root / rel
        if not path.exists():
            if required:
                raise ModelError(f"{path} is missing; the OCR model directory needs {rel}")
            return None
        if rel not in digests:
            raise ModelError(
                f"no SHA-256 configured for {rel}; add it to the OCR model digests "
                f"(sha256sum {path})"
            )
        return verify_file(path, digests[rel])

    def _rec_keys(self, digests: Mapping[str, str]) -> Path | None:
        rec_dir = self.root / "rec"
        yml = rec_dir / "inference.yml"
        if yml.exists():
            if "rec/inference.yml" in digests:
                verify_file(yml, digests["rec/inference.yml"])
            else:
                raise ModelError(f"no SHA-256 configured for rec/inference.yml (sha256sum {yml})")
            chars = _character_dict_from_yml(yml)
            if chars is None:
                raise ModelError(f"{yml} has no PostProcess.character_dict list")
            keys = Path(self._tmp.name) / "keys.txt"
            keys.write_text("\n".join(chars) + "\n", encoding="utf-8")
            return keys
        txt = rec_dir / "ppocr_keys.txt"
        if txt.exists():
            if "rec/ppocr_keys.txt" not in digests:
                raise ModelError(f"no SHA-256 configured for rec/ppocr_keys.txt (sha256sum {txt})")
            return verify_file(txt, digests["rec/ppocr_keys.txt"])
        assert self.rec is not None
        if _onnx_has_character_dict(self.rec):
            return None
        raise ModelError(
            f"{rec_dir} has no character dictionary: add inference.yml (from the model "
            "export) or ppocr_keys.txt"
        )

    def close(self) -> None:
        self._tmp.cleanup()


class PaddleDirOcrEngine(RapidOcrEngine):
    """RapidOcrEngine over a provisioned PaddleOCR-layout folder."""

    def __init__(self, model_dir: PaddleModelDir) -> None:
        assert model_dir.det is not None and model_dir.rec is not None
        self._model_dir = model_dir  # keeps the dictionary file alive
        versions = {"det": "paddle-dir:det", "rec": "paddle-dir:rec"}
        if model_dir.cls is not None:
            versions["cls"] = "paddle-dir:cls"
        # Name the provisioned files by digest prefix so a decision says which models made it.
        from server.identity.models import sha256_file

        for key, path in (("det", model_dir.det), ("rec", model_dir.rec), ("cls", model_dir.cls)):
            if path is not None:
                versions[key] = f"{model_dir.root.name}/{key}@{sha256_file(path)[:12]}"
        super().__init__(
            model_dir.det, model_dir.rec, model_dir.cls, versions, rec_keys=model_dir.rec_keys
        )


def load_paddle_model_dir(root: Path, digests: Mapping[str, str]) -> PaddleDirOcrEngine:
    """Check and load a PaddleOCR-layout model folder (see the module docstring)."""
    return PaddleDirOcrEngine(PaddleModelDir(root, digests))
