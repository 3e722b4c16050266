"""Keyed hashes of what the ID card says: the only form in which the search index can be
searched by the customer's ID number or name.

HMAC-SHA256 under a 32-byte key generated at first run into {data_dir}/keys/ (0600): without
the key, a copy of the index can neither be searched for a number or name nor brute-forced (the
space of valid numbers is small enough to enumerate for a plain hash, and so is a list of common
names). Each kind has a context of its own. Format: docs/auditor.md section 2, test vector
tests/vectors/auditor-idhash-v1.json.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac

from recorder.seal.files import generated_secret
from server.identity.idcard import normalize_id_number

KEY_FILE = "id-index-key.hex"
KEY_SIZE = 32
# Domain separation: the same key must never produce a hash that means something else.
CONTEXT = b"vteller-id-number/1\x00"
NAME_CONTEXT = b"vteller-card-name/1\x00"
_NUMBER = re.compile(r"[0-9]{17}[0-9X]")
# The separator of ethnic-minority and transliterated names (阿卜杜·热合曼) is printed as U+00B7,
# but OCR and keyboards give one of these for it (after NFKC, which has already turned U+FF65
# into U+30FB and U+FF0E into "."): each is folded to U+00B7, or the auditor finds nothing.
NAME_DOTS = "\u2022\u2027\u2219\u22c5\u30fb."
MIDDLE_DOT = "\u00b7"
_FOLD_DOTS = str.maketrans(dict.fromkeys(NAME_DOTS, MIDDLE_DOT))


class IdNumberError(ValueError):
    """Not something an 18-character resident ID number can be."""


class CardNameError(ValueError):
    """Nothing left of a name once its whitespace is removed."""


def normalize(raw: str) -> str:
    """The canonical spelling: no whitespace, ASCII digits, upper-case X; refuse anything else.
    Chinese input methods often type full-width digits (１２３): the same number (NFKC)."""
    number = normalize_id_number(unicodedata.normalize("NFKC", raw))
    if not _NUMBER.fullmatch(number):
        raise IdNumberError(
            "an ID number has 17 digits followed by a digit or X (18 characters in all)"
        )
    return number


def normalize_name(raw: str) -> str:
    """The form a name is hashed in: NFKC (full-width letters), no whitespace, case-folded
    (Latin names are printed in capitals on some cards), every name dot as U+00B7 (NAME_DOTS).
    Traditional and Simplified characters stay distinct: an exact name is what is searched, as
    the card spells it."""
    name = "".join(unicodedata.normalize("NFKC", raw).split()).casefold().translate(_FOLD_DOTS)
    if not name:
        raise CardNameError("a name needs at least one character that is not a space")
    return name


def _new_key() -> str:
    return secrets.token_bytes(KEY_SIZE).hex() + "\n"


class IdNumberHasher:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"the ID index key must be {KEY_SIZE} bytes")
        self._key = key

    @classmethod
    def open(cls, keys_dir: Path) -> IdNumberHasher:
        """The key in `keys_dir`, created at first run and never replaced (losing it makes the
        index unsearchable by number, not wrong: numbers are re-indexed from identity records)."""
        path = keys_dir / KEY_FILE
        text = generated_secret(path, _new_key)
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise ValueError(f"{path} does not hold a {KEY_SIZE}-byte hex key") from exc

    def hash(self, raw: str) -> str:
        return self._mac(CONTEXT + normalize(raw).encode("ascii"))

    def hash_name(self, raw: str) -> str:
        """The blind index of a name: equal for equal names (normalize_name), nothing more."""
        return self._mac(NAME_CONTEXT + normalize_name(raw).encode("utf-8"))

    def _mac(self, message: bytes) -> str:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        mac.update(message)
        return mac.finalize().hex()
