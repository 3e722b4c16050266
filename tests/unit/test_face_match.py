"""Face engines and the ID-photo-to-live-face decision, on real photos (both engines)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.identity.config import IdentityConfig
from server.identity.engines import IdentityEngines
from server.identity.face import Face, FaceEngine
from server.identity.face.insight import InsightFaceEngine, pack_from_vectron_wheel
from server.identity.face.match import MESSAGES, THRESHOLDS, Decision, MatchReason, match
from server.identity.face.yunet import YuNetSFaceEngine
from server.identity.models import (
    INSIGHTFACE_ARCFACE,
    INSIGHTFACE_LANDMARK106,
    INSIGHTFACE_SCRFD,
    SFACE,
    YUNET,
    ModelError,
)
from tests.fixtures.idcards import (
    VALID_SPECS,
    YAO_IN_PLAYERS,
    load_face,
    on_table,
    render_front,
    vectron_image,
)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FaceEngine]:
    pack = tmp_path_factory.mktemp("insightface-pack")
    digests = pack_from_vectron_wheel(pack)
    return {"insightface": InsightFaceEngine(pack, digests), "yunet": YuNetSFaceEngine()}


@pytest.fixture(params=["insightface", "yunet"])
def engine(request: pytest.FixtureRequest, engines: dict[str, FaceEngine]) -> FaceEngine:
    return engines[request.param]


def _card_with(face_file: str) -> np.ndarray:
    from dataclasses import replace

    return on_table(render_front(replace(VALID_SPECS[0], face=face_file)))


def test_same_person_passes(engine: FaceEngine) -> None:
    card = _card_with("obama.jpg")
    for live in ("obama2.jpg", "obama3.jpg"):
        r = match(card, load_face(live), engine)
        assert r.decision is Decision.PASS, (live, r.score)
        assert r.reason is MatchReason.MATCH
        assert r.threshold == THRESHOLDS[engine.name]


def test_different_person_fails(engine: FaceEngine) -> None:
    r = match(_card_with("obama.jpg"), load_face("biden.jpg"), engine)
    assert r.decision is Decision.FAIL and r.reason is MatchReason.NO_MATCH
    r = match(vectron_image("yaoming.jpg"), load_face("obama2.jpg"), engine)
    assert r.decision is Decision.FAIL


def test_east_asian_pairs(engine: FaceEngine) -> None:
    # Yao Ming's portrait against the national team photo: himself passes, teammates fail.
    players = vectron_image("players.jpg")
    faces = [f for f in engine.detect(players) if f.width > 25]
    assert len(faces) >= 14
    yao = vectron_image("yaoming.jpg")
    ref = engine.embed(yao, engine.detect(yao)[0])
    x, y = YAO_IN_PLAYERS
    thr = THRESHOLDS[engine.name]
    for f in faces:
        score = engine.compare(ref, engine.embed(players, f))
        is_yao = f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]
        assert (score >= thr) == is_yao, (f.box, score)


def test_several_faces_and_no_face(engine: FaceEngine) -> None:
    card = _card_with("obama.jpg")
    r = match(card, vectron_image("gdp.jpg"), engine)
    assert r.reason is MatchReason.SEVERAL_FACES_LIVE and r.decision is Decision.FAIL
    assert "只有您本人" in r.message_zh
    blank = np.full((480, 640, 3), 128, np.uint8)
    assert match(card, blank, engine).reason is MatchReason.NO_FACE_LIVE
    assert match(blank, load_face("obama.jpg"), engine).reason is MatchReason.NO_FACE_ON_ID


def test_score_is_not_in_public_view(engine: FaceEngine) -> None:
    r = match(_card_with("obama.jpg"), load_face("obama2.jpg"), engine)
    assert r.score is not None
    public = r.public_dict()
    assert "score" not in public and "threshold" not in public
    audit = r.audit_dict()
    assert audit["score"] is not None and audit["model_versions"]


def test_every_failure_says_what_to_do() -> None:
    # A genuine customer refused by the match must hear what to change, in plain words.
    for reason, (zh, en) in MESSAGES.items():
        if reason is not MatchReason.MATCH:
            assert "请" in zh and ";" in en, reason


def test_detect_gives_five_landmarks_inside_the_box(engine: FaceEngine) -> None:
    faces = engine.detect(load_face("obama.jpg"))
    assert len(faces) == 1
    f: Face = faces[0]
    assert f.landmarks.shape == (5, 2)
    x0, _, x1, _ = f.box
    assert np.all((f.landmarks[:, 0] > x0) & (f.landmarks[:, 0] < x1))
    assert f.landmarks[0, 0] < f.landmarks[1, 0]  # eye on the image's left first


def test_insightface_pack_checks(tmp_path: Path) -> None:
    digests = pack_from_vectron_wheel(tmp_path)
    with pytest.raises(ModelError, match="SHA-256"):
        InsightFaceEngine(tmp_path, {**digests, "w600k_mbf.onnx": "0" * 64})
    with pytest.raises(ModelError, match="does not exist"):
        InsightFaceEngine(tmp_path / "missing", digests)
    # Provisioned packs keep InsightFace's file names: the records name each file by digest.
    versions = InsightFaceEngine(tmp_path, digests).model_versions
    assert versions == {
        "detector": f"det_500m@{INSIGHTFACE_SCRFD.sha256[:12]}",
        "recognizer": f"w600k_mbf@{INSIGHTFACE_ARCFACE.sha256[:12]}",
        "landmarks": f"2d106det@{INSIGHTFACE_LANDMARK106.sha256[:12]}",
    }
    (tmp_path / "w600k_mbf.onnx").unlink()
    with pytest.raises(ModelError, match="recogniser"):
        InsightFaceEngine(tmp_path, digests)


def test_provisioned_yunet_files_are_named_by_digest() -> None:
    engine = YuNetSFaceEngine(YUNET.path(), SFACE.path(), (YUNET.sha256, SFACE.sha256))
    assert engine.model_versions == {
        "detector": f"face_detection_yunet_2023mar_int8bq@{YUNET.sha256[:12]}",
        "recognizer": f"face_recognition_sface_2021dec_int8bq@{SFACE.sha256[:12]}",
    }


@pytest.fixture
def identity_engines() -> Iterator[IdentityEngines]:
    e = IdentityEngines(IdentityConfig(face_engine="yunet"))
    yield e
    e.close()


def test_async_wrapper_runs_off_the_loop(identity_engines: IdentityEngines) -> None:
    async def go() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        r = await identity_engines.match_async(_card_with("obama.jpg"), load_face("obama3.jpg"))
        t.cancel()
        return r.decision.value, ticks

    decision, ticks = asyncio.run(go())
    assert decision == "pass"
    assert ticks > 0  # the loop kept running while the models computed
