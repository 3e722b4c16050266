"""`vteller kyc ...` through its parser: help, input errors, a face match, a card read."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from server.cli import main as vteller
from tests.fixtures.idcards import (
    INVALID_CHECKSUM_SPEC,
    TODAY,
    VALID_SPECS,
    load_face,
    on_table,
    render_back,
    render_front,
)


def run(argv: list[str]) -> int:
    return vteller(argv)


def test_help_for_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["kyc", "--help"], ["kyc", "ocr", "--help"], ["kyc", "match", "--help"]):
        with pytest.raises(SystemExit) as done:
            vteller(argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--show-scores" in out and "--json" in out
    assert run(["kyc"]) == 2


def test_unusable_input_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert run(["kyc", "ocr", str(text)]) == 2
    assert "upload a JPEG or PNG photo" in capsys.readouterr().err
    assert run(["kyc", "match", str(tmp_path / "missing.jpg"), str(text)]) == 2
    assert "check the path" in capsys.readouterr().err


def test_match_hides_scores_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card, live = tmp_path / "card.jpg", tmp_path / "live.jpg"
    cv2.imwrite(str(card), on_table(render_front(VALID_SPECS[0])))
    cv2.imwrite(str(live), load_face("obama3.jpg"))
    assert run(["kyc", "match", str(card), str(live), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "pass" and "score" not in out
    assert run(["kyc", "match", str(card), str(live), "--show-scores"]) == 0
    assert "score" in capsys.readouterr().out


def test_ocr_reports_checksum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "front.png"
    cv2.imwrite(str(img), on_table(render_front(INVALID_CHECKSUM_SPEC)))
    assert run(["kyc", "ocr", str(img), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["sides"] == ["front"]
    assert out["fields"]["name"] == INVALID_CHECKSUM_SPEC.name
    assert [p["reason"] for p in out["problems"]] == ["checksum"]


def test_ocr_of_both_sides_needs_one_of_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = VALID_SPECS[0]
    front, back = tmp_path / "front.png", tmp_path / "back.png"
    cv2.imwrite(str(front), on_table(render_front(spec)))
    cv2.imwrite(str(back), on_table(render_back(spec)))
    today = ["--today", TODAY.isoformat(), "--json"]
    # In either order, a front and a back are one card.
    for first, second in ((front, back), (back, front)):
        assert run(["kyc", "ocr", str(first), "--back", str(second), *today]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["sides"] == ["front", "back"] and out["accepted"] is True
    # Two photos of one side used to be accepted: the missing side is named.
    assert run(["kyc", "ocr", str(back), "--back", str(back), *today]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["accepted"] is False
    assert any("photograph the front" in p["message_en"] for p in out["problems"])
    assert run(["kyc", "ocr", str(front), "--back", str(front), *today]) == 1
    out = json.loads(capsys.readouterr().out)
    assert any("photograph the back" in p["message_en"] for p in out["problems"])
