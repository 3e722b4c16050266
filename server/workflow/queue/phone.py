"""Mainland China mobile numbers: what a callback request accepts, and how staff lists show it."""

from __future__ import annotations

import re
import unicodedata

from server.errors import ApiError

# 11 digits starting 13-19 (every mainland mobile range); the country code is optional.
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_SEPARATORS = re.compile(r"[\s\-()]")
_COUNTRY_PREFIXES = ("+86", "0086", "86")


def normalize_mobile(raw: str) -> str:
    """The 11-digit number, or ApiError 400 `invalid_phone` saying what a valid one looks like."""
    # Chinese input methods often type full-width digits (１３８…): NFKC makes them ASCII.
    number = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    for prefix in _COUNTRY_PREFIXES:
        if number.startswith(prefix) and len(number) == len(prefix) + 11:
            number = number[len(prefix) :]
            break
    if not _MOBILE.fullmatch(number):
        raise ApiError(
            400,
            "invalid_phone",
            "Please enter a mainland China mobile number: 11 digits starting with 1, "
            "for example 138 0013 8000.",
        )
    return number


def mask(hint: str) -> str:
    """How lists show a number of which only the last four digits are kept in the clear."""
    return f"*******{hint}"
