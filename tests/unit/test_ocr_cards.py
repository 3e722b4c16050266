"""OCR on synthetic ID cards with the real PP-OCR models (loaded once for the module)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from server.identity.idcard import IdCardFields, check_back, check_front
from server.identity.models import RAPIDOCR_CLS, RAPIDOCR_DET, RAPIDOCR_REC, ModelError
from server.identity.ocr.backends import RapidOcrEngine, load_paddle_model_dir
from server.identity.ocr.reader import CardReading, assess, read_card
from tests.fixtures.idcards import (
    EXPIRED_SPEC,
    INVALID_CHECKSUM_SPEC,
    TODAY,
    VALID_SPECS,
    CardSpec,
    degrade,
    make_id_number,
    on_table,
    render_back,
    render_front,
)


@pytest.fixture(scope="module")
def engine() -> RapidOcrEngine:
    return RapidOcrEngine.from_wheel()


def expected_front(s: CardSpec) -> dict[str, object]:
    return {
        "name": s.name,
        "sex": s.sex,
        "ethnicity": s.ethnicity,
        "birth_date": s.birth,
        "address": s.address,
        "id_number": s.id_number,
    }


def expected_back(s: CardSpec) -> dict[str, object]:
    return {
        "issuing_authority": s.authority,
        "valid_from": s.valid_from,
        "valid_until": s.valid_until,
        "valid_long_term": s.valid_until is None,
    }


def wrong_fields(fields: IdCardFields, expected: dict[str, object]) -> dict[str, object]:
    return {k: getattr(fields, k) for k, v in expected.items() if getattr(fields, k) != v}


@pytest.mark.parametrize("i", range(len(VALID_SPECS)))
def test_clean_front_read_exactly(engine: RapidOcrEngine, i: int) -> None:
    spec = VALID_SPECS[i]
    r = read_card(on_table(render_front(spec)), engine)
    assert r.side == "front" and not r.rotated_180
    assert wrong_fields(r.fields, expected_front(spec)) == {}
    assert r.quality == []
    assert check_front(r.fields, TODAY) == []


@pytest.mark.parametrize("i", [0, 1])
def test_clean_back_read_exactly(engine: RapidOcrEngine, i: int) -> None:
    spec = VALID_SPECS[i]  # one dated, one 长期
    r = read_card(on_table(render_back(spec)), engine)
    assert r.side == "back"
    assert wrong_fields(r.fields, expected_back(spec)) == {}
    assert check_back(r.fields, TODAY) == []


def test_degraded_cards_mostly_read(engine: RapidOcrEngine) -> None:
    # Each capture defect once, alternating sides and cards; bench/kyc.py runs the full grid.
    cases = [
        ("rotate", "front", VALID_SPECS[2]),
        ("blur", "back", VALID_SPECS[3]),
        ("jpeg", "front", VALID_SPECS[3]),
        ("perspective", "back", VALID_SPECS[2]),
        ("glare", "front", VALID_SPECS[1]),
        ("dim", "back", VALID_SPECS[0]),
    ]
    total = exact = 0
    for kind, side, spec in cases:
        card = render_front(spec) if side == "front" else render_back(spec)
        r = read_card(degrade(on_table(card), kind), engine)
        expected = expected_front(spec) if side == "front" else expected_back(spec)
        total += len(expected)
        exact += len(expected) - len(wrong_fields(r.fields, expected))
        if side == "front" and r.fields.id_number is not None:
            # A misread number must never pass as another valid number.
            assert r.fields.id_number == spec.id_number or check_front(r.fields, TODAY)
    assert exact / total >= 0.9, f"{exact}/{total} fields exact"


@pytest.mark.parametrize("i", range(len(VALID_SPECS)))
def test_lone_sex_character_read_on_jpeg(engine: RapidOcrEngine, i: int) -> None:
    # The lone 男/女 is the field a per-line direction classifier loses (it calls the square
    # crop upside down and turns it): the built-in engine runs without one.
    spec = VALID_SPECS[i]
    r = read_card(degrade(on_table(render_front(spec)), "jpeg"), engine)
    assert r.fields.sex == spec.sex
    assert "cls" not in engine.model_versions


def test_upside_down_card(engine: RapidOcrEngine) -> None:
    spec = VALID_SPECS[0]
    r = read_card(degrade(on_table(render_front(spec)), "rotate180"), engine)
    assert r.rotated_180
    assert wrong_fields(r.fields, expected_front(spec)) == {}


def test_invalid_checksum_never_accepted(engine: RapidOcrEngine) -> None:
    # Degraded photos of valid cards are covered in test_degraded_cards_mostly_read.
    r = read_card(on_table(render_front(INVALID_CHECKSUM_SPEC)), engine, "front")
    assert r.fields.id_number == INVALID_CHECKSUM_SPEC.id_number
    assert [p.reason.value for p in check_front(r.fields, TODAY)] == ["checksum"]


def test_expired_card_refused(engine: RapidOcrEngine) -> None:
    r = read_card(on_table(render_back(EXPIRED_SPEC)), engine)
    assert [p.reason.value for p in check_back(r.fields, date(2026, 6, 1))] == ["expired"]


def test_back_of_another_card_refused(engine: RapidOcrEngine) -> None:
    # Each side reads exactly and passes its own checks, but the 长期 back is that of a woman
    # born in 1962 and the front a man born in 1999.
    front = read_card(on_table(render_front(VALID_SPECS[2])), engine)
    other = read_card(on_table(render_back(VALID_SPECS[1])), engine)
    own = read_card(on_table(render_back(VALID_SPECS[2])), engine)
    assert [p.reason.value for p in assess(front, other, TODAY).problems] == ["sides_mismatch"]
    assert assess(front, own, TODAY).problems == []


def test_term_boundary_read_from_the_card(engine: RapidOcrEngine) -> None:
    # Born on 29 February 2000, 26 in the common year 2026: a 10-year card applied for at 25
    # and issued after that birthday is genuine; a 20-year card cannot start before it (28
    # February at the earliest reckoning).
    leap = date(2000, 2, 29)
    holder = replace(VALID_SPECS[2], birth=leap, id_number=make_id_number("440305", leap, 57))
    front = read_card(on_table(render_front(holder)), engine)
    assert front.fields.birth_date == leap
    for start, years, accepted in (
        (date(2026, 5, 20), 10, True),
        (date(2026, 2, 28), 20, True),
        (date(2026, 2, 27), 20, False),
    ):
        end = start.replace(year=start.year + years)
        back = read_card(
            on_table(render_back(replace(holder, valid_from=start, valid_until=end))), engine
        )
        assert back.fields.valid_from == start and back.fields.valid_until == end
        problems = [p.reason.value for p in assess(front, back, TODAY).problems]
        assert problems == ([] if accepted else ["sides_mismatch"]), (start, years)


def test_heavy_blur_says_hold_still(engine: RapidOcrEngine) -> None:
    r = read_card(degrade(on_table(render_front(VALID_SPECS[1])), "heavy_blur"), engine)
    assert "blurry" in [q.code for q in r.quality]
    msg = next(q for q in r.quality if q.code == "blurry")
    assert "保持稳定" in msg.message_zh and "hold the card still" in msg.message_en


def test_glare_over_text_says_tilt(engine: RapidOcrEngine) -> None:
    r = read_card(degrade(on_table(render_front(VALID_SPECS[2])), "heavy_glare"), engine)
    assert "glare" in [q.code for q in r.quality]
    check = assess(r, None, TODAY)
    assert any("tilt the card" in p.message_en for p in check.problems)


def test_blank_image_no_card(engine: RapidOcrEngine) -> None:
    r: CardReading = read_card(np.full((480, 640, 3), 90, np.uint8), engine)
    assert r.side is None
    assert r.quality[0].code == "card_not_found"


@pytest.fixture
def paddle_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A PaddleOCR-layout folder assembled from the rapidocr wheel's ONNX files, with the
    character dictionary in rec/inference.yml as a paddle2onnx export has it."""
    import onnxruntime as ort
    import yaml

    root = tmp_path / "PP-OCR"
    digests: dict[str, str] = {}
    for sub, model in (("det", RAPIDOCR_DET), ("rec", RAPIDOCR_REC), ("cls", RAPIDOCR_CLS)):
        (root / sub).mkdir(parents=True)
        shutil.copyfile(model.path(), root / sub / "inference.onnx")
        digests[f"{sub}/inference.onnx"] = model.sha256
    sess = ort.InferenceSession(str(RAPIDOCR_REC.path()), providers=["CPUExecutionProvider"])
    chars = sess.get_modelmeta().custom_metadata_map["character"].splitlines()
    yml = root / "rec" / "inference.yml"
    yml.write_text(
        yaml.safe_dump(
            {"PostProcess": {"name": "CTCLabelDecode", "character_dict": chars}}, allow_unicode=True
        ),
        encoding="utf-8",
    )
    from server.identity.models import sha256_file

    digests["rec/inference.yml"] = sha256_file(yml)
    yield root, digests


def test_paddle_model_dir_loads_and_reads(paddle_dir: tuple[Path, dict[str, str]]) -> None:
    root, digests = paddle_dir
    engine = load_paddle_model_dir(root, digests)
    assert set(engine.model_versions) == {"det", "rec", "cls"}
    assert engine.model_versions["det"].startswith("PP-OCR/det@090f04abcd9d")
    spec = VALID_SPECS[1]
    r = read_card(on_table(render_back(spec)), engine)
    assert wrong_fields(r.fields, expected_back(spec)) == {}
    json.dumps(engine.model_versions)


def test_paddle_model_dir_refuses_bad_digest(paddle_dir: tuple[Path, dict[str, str]]) -> None:
    root, digests = paddle_dir
    with pytest.raises(ModelError, match="SHA-256"):
        load_paddle_model_dir(root, {**digests, "det/inference.onnx": "0" * 64})
    del digests["rec/inference.yml"]
    with pytest.raises(ModelError, match="no SHA-256 configured"):
        load_paddle_model_dir(root, digests)
    with pytest.raises(ModelError, match="does not exist"):
        load_paddle_model_dir(root / "nowhere", digests)
