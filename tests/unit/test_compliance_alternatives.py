"""A customer line with several accepted answers: any answer the audio confirms passes it."""

from __future__ import annotations

import numpy as np

from compliance.analyzer import check_line
from compliance.asr import SAMPLE_RATE, Alignment, Audio, Segment, TokenScore
from compliance.matching import sounds
from compliance.sales_script import load_script


class _Recognizer:
    """Hears `heard` (the customer said "对，是我本人。"); the audio fits any part of what was
    heard well, and any other text weakly."""

    model_version = "fake-asr 1"

    def __init__(self, heard: str) -> None:
        self.heard = heard
        self.scored: list[str] = []

    def transcribe(self, audio: Audio) -> list[Segment]:
        return [Segment(0.2, 1.6, self.heard, -0.4)]

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        self.scored.append(text)
        logprob = -0.4 if text in self.heard else -2.4
        return Alignment(text, tuple(TokenScore(i, i + 1, logprob) for i in range(len(text))))


def _check(recognizer: _Recognizer) -> tuple[str, tuple[str, ...], str]:
    verdict = check_line(
        recognizer,
        np.zeros(2 * SAMPLE_RATE, dtype=np.float32),
        load_script("bank_wealth_product"),
        "customer_identity",
        "customer",
        {"customer_name": "张伟"},
    )
    assert verdict.alignment is not None
    return verdict.decision, verdict.reasons, verdict.alignment.text


def test_a_confirmed_short_answer_passes_when_the_longer_one_fits_weakly() -> None:
    recognizer = _Recognizer("对，是我的人。")
    decision, reasons, aligned = _check(recognizer)
    assert (decision, reasons, aligned) == ("pass", (), "对")
    assert recognizer.scored[:2] == ["是我本人", "是我的人"]  # the longest answer is tried first


def test_no_answer_the_audio_confirms_still_needs_review() -> None:
    recognizer = _Recognizer("是我的人。")
    decision, reasons, aligned = _check(recognizer)
    assert decision == "needs_review"
    assert reasons == ("the audio fits the expected text only weakly",)
    assert aligned == "是我本人"  # the report shows the first choice's evidence


def test_an_answer_heard_in_traditional_characters_is_the_same_answer() -> None:
    # Whisper wrote the whole call in Traditional characters (a CI run of the Chromium whole
    # sale): 是我本人 heard as 是我被人 fits weakly, and 对 was scored against the 對 it wrote.
    recognizer = _Recognizer("對，是我被人。")
    decision, reasons, aligned = _check(recognizer)
    assert (decision, reasons, aligned) == ("pass", (), "对")
    # Other sounds stay another reading: 被 is not 本.
    assert sounds("對，是我被人。") == sounds("对是我被人") != sounds("对，是我本人")
