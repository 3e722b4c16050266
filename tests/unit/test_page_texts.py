"""The staff pages' texts (web/common/i18n.js): every error code and check the server answers the
pages with has its words in both languages, so no English server text shows among Chinese."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

I18N = Path(__file__).parents[2] / "web" / "common" / "i18n.js"
KEY = re.compile(r"^  '([\w.]+)':", re.MULTILINE)


def _dictionaries() -> dict[str, set[str]]:
    text = I18N.read_text("utf-8")
    zh, en = text.split("\nconst en = {", 1)
    return {"zh-CN": set(KEY.findall(zh)), "en": set(KEY.findall(en))}


@pytest.mark.parametrize(
    "key",
    [
        "error.ticket_lost",
        "error.signature_not_in_recording",
        "error.recording_not_stored",
        "error.recording_not_verified",
        "error.archive_unavailable",
        # The checks preview's reading of the sealed recording (its failing reasons are the
        # error codes above).
        "tx.check.recording_signature",
        "tx.reason.bound",
    ],
)
def test_the_workflow_answers_are_worded_in_both_languages(key: str) -> None:
    for lang, keys in _dictionaries().items():
        assert key in keys, f"{key} is missing from the {lang} texts of {I18N}"
