"""Judging a moment from whole-track transcripts (compliance/analyzer.py, analyze_moment)."""

from __future__ import annotations

import numpy as np

from compliance.analyzer import analyze_moment
from compliance.asr import SAMPLE_RATE, Alignment, Audio, Segment, TokenScore
from compliance.sales_script import load_script


class _Recognizer:
    """Hears 是的 whenever asked about a stretch of audio on its own; fits any text well."""

    model_version = "fake-asr 1"

    def __init__(self) -> None:
        self.transcribed: list[float] = []  # seconds of audio per call

    def transcribe(self, audio: Audio) -> list[Segment]:
        self.transcribed.append(len(audio) / SAMPLE_RATE)
        return [Segment(0.5, 1.2, "是的。", -0.3)]

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        return Alignment(text, tuple(TokenScore(i, i + 1, -0.2) for i in range(len(text))))


def _judge(transcripts: dict[str, list[Segment]]) -> tuple[str, _Recognizer]:
    recognizer = _Recognizer()
    track = np.zeros(60 * SAMPLE_RATE, dtype=np.float32)
    verdict = analyze_moment(
        recognizer,
        load_script("bank_wealth_product"),
        "risk_disclosure",
        {"teller": track, "customer": track},
        {},
        (20.0, 40.0),
        transcripts=transcripts,  # type: ignore[arg-type]
    )
    customer = next(line for line in verdict.lines if line.speaker == "customer")
    return customer.decision, recognizer


def test_a_span_the_whole_track_transcript_left_silent_is_recognised_on_its_own() -> None:
    # Whole-track recognition heard the customer only outside the moment.
    decision, recognizer = _judge({"teller": [], "customer": [Segment(5.0, 6.0, "嗯。", -0.3)]})
    assert decision == "pass"
    assert 20.0 in recognizer.transcribed  # the customer's span, recognised on its own


def test_a_span_with_words_is_not_recognised_again() -> None:
    heard = [Segment(30.0, 30.8, "是的。", -0.3)]
    decision, recognizer = _judge({"teller": heard, "customer": heard})
    assert decision == "pass"
    assert recognizer.transcribed == []
