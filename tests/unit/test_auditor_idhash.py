"""Keyed hashes of ID numbers (docs/auditor.md section 2): the vector, normalization, the key."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from server.auditor.idhash import (
    KEY_FILE,
    CardNameError,
    IdNumberError,
    IdNumberHasher,
    normalize,
    normalize_name,
)
from tests.vectors.generate_auditor_idhash_v1 import OUT_FILE, vector


def test_the_vector_file_is_reproduced_and_follows_the_spec() -> None:
    stored = json.loads(OUT_FILE.read_text(encoding="utf-8"))
    assert stored == vector()
    key = bytes.fromhex(stored["key_hex"])
    context = bytes.fromhex(stored["context_hex"])
    assert context == b"vteller-id-number/1\x00"
    for case in stored["cases"]:
        expected = hmac.new(key, context + case["normalized"].encode(), hashlib.sha256)
        assert case["hmac_sha256"] == expected.hexdigest()
    # Spellings of the same number (lower-case x, ×, spaces) hash alike.
    assert len({c["hmac_sha256"] for c in stored["cases"][:3]}) == 1


@pytest.mark.parametrize("raw", ["", "12345", "11010519491231002Y", "1101051949123100211"])
def test_what_cannot_be_an_id_number_is_refused(raw: str) -> None:
    with pytest.raises(IdNumberError):
        normalize(raw)


def test_the_key_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = IdNumberHasher.open(keys)
    path = keys / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = IdNumberHasher.open(keys)
    assert first.hash("11010519491231002X") == again.hash("11010519491231002X")
    other = IdNumberHasher.open(tmp_path / "elsewhere")
    assert other.hash("11010519491231002X") != first.hash("11010519491231002X")
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        IdNumberHasher.open(keys)


def test_full_width_digits_are_the_same_number_and_other_digits_refused() -> None:
    # What a Chinese input method types: refused with a 500 before, the same number now.
    assert normalize("１１０１０５１９４９１２３１００２Ｘ") == "11010519491231002X"
    with pytest.raises(IdNumberError):
        normalize("١١٠١٠٥١٩٤٩١٢٣١٠٠٢X")  # Arabic-Indic digits are no ID number


def test_names_hash_alike_only_when_they_are_the_same_name(tmp_path: Path) -> None:
    hasher = IdNumberHasher.open(tmp_path)
    key = bytes.fromhex((tmp_path / KEY_FILE).read_text())
    assert normalize_name(" 李 秀英\u3000") == "李秀英"
    assert normalize_name("ＺＨＡＮＧ Wei") == "zhangwei"  # full-width, and printed in capitals
    expected = hmac.new(key, b"vteller-card-name/1\x00" + "李秀英".encode(), hashlib.sha256)
    assert hasher.hash_name("李 秀 英") == expected.hexdigest()
    assert hasher.hash_name("李秀") != hasher.hash_name("李秀英")
    assert hasher.hash_name("陈") != hasher.hash_name("陳")  # no Traditional/Simplified folding
    # Its own context: a name never hashes like an ID number.
    number = "11010519491231002X"
    assert hasher.hash_name(number) != hasher.hash(number)
    with pytest.raises(CardNameError):
        normalize_name(" \u3000\t")


@pytest.mark.parametrize(
    "dot", ["\u00b7", "\u2022", "\u30fb", "\uff65", "\u2027", "\uff0e", ".", "\u2219", "\u22c5"]
)
def test_a_name_is_the_same_whichever_dot_ocr_or_a_keyboard_gave(tmp_path: Path, dot: str) -> None:
    # Printed with U+00B7; read or typed with one of the others, it is still that card's name.
    hasher = IdNumberHasher.open(tmp_path)
    assert normalize_name(f"阿卜杜{dot}热合曼") == "阿卜杜\u00b7热合曼"
    assert normalize_name(f"Abdu {dot} Rahman") == "abdu\u00b7rahman"
    assert hasher.hash_name(f"阿卜杜{dot}热合曼") == hasher.hash_name("阿卜杜·热合曼")
    assert hasher.hash_name(f"阿卜杜{dot}热合曼") != hasher.hash_name("阿卜杜热合曼")
