"""A customer's answer is a yes only as a plain statement: refusals, questions and conditions
that contain an accepted answer must not pass (compliance/matching.py, locate_answer)."""

from __future__ import annotations

import numpy as np
import pytest

from compliance.analyzer import LineVerdict, check_line
from compliance.asr import SAMPLE_RATE, Alignment, Audio, Segment, TokenScore
from compliance.sales_script import load_script

VALUES = {
    "bank_name": "示范银行",
    "teller_name": "王芳",
    "qualification_number": "20261234",
    "customer_name": "张伟",
    "product_name": "稳盈一号",
    "risk_level": "中低风险",
    "customer_risk_level": "稳健型",
    "term": "一年",
}


class _Recognizer:
    """Hears `heard`; the audio fits any forced text with the same score per token (well by
    default), so that only the transcript tells a yes from a no."""

    model_version = "fake-asr 1"

    def __init__(self, heard: str, logprob: float = -0.2) -> None:
        self.heard = heard
        self.logprob = logprob

    def transcribe(self, audio: Audio) -> list[Segment]:
        return [Segment(0.2, 1.8, self.heard, -0.3)]

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        return Alignment(text, tuple(TokenScore(i, i + 1, self.logprob) for i in range(len(text))))


def _check(moment: str, heard: str, logprob: float = -0.2) -> LineVerdict:
    return check_line(
        _Recognizer(heard, logprob),
        np.zeros(2 * SAMPLE_RATE, dtype=np.float32),
        load_script("bank_wealth_product"),
        moment,
        "customer",
        VALUES,
    )


@pytest.mark.parametrize(
    ("moment", "heard"),
    [
        ("customer_identity", "是的"),
        ("customer_identity", "是的。"),
        ("customer_identity", "我是本人。"),
        ("customer_identity", "对，是我本人。"),
        ("customer_identity", "嗯对的"),
        ("risk_disclosure", "明白了。"),
        ("risk_disclosure", "我清楚了。"),
        ("consent", "同意录音。"),
        ("consent", "可以。"),
        ("consent", "好的，没问题。"),
        ("voluntary_confirmation", "我确认是自愿购买。"),
    ],
)
def test_plain_affirmations_pass(moment: str, heard: str) -> None:
    verdict = _check(moment, heard)
    assert (verdict.decision, verdict.reasons) == ("pass", ())


@pytest.mark.parametrize(
    ("moment", "heard", "reason"),
    [
        # 对 opens 对不起 (sorry); the clause after it denies being the customer.
        ("customer_identity", "对不起，我不是本人", "said the opposite: heard '我不是本人'"),
        ("customer_identity", "不是的。", "said the opposite: heard '不是的'"),
        ("customer_identity", "不对。", "said the opposite: heard '不对'"),
        ("risk_disclosure", "我不清楚。", "said the opposite"),
        ("consent", "我没说同意。", "said the opposite: heard '我没说同意'"),
    ],
)
def test_a_negated_answer_fails(moment: str, heard: str, reason: str) -> None:
    verdict = _check(moment, heard)
    assert verdict.decision == "fail"
    assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


@pytest.mark.parametrize(
    ("moment", "heard", "reason"),
    [
        # What follows a yes in its clause can take it back: a person decides.
        ("consent", "可以不录吗？", "not a plain answer (a question): heard '可以不录吗'"),
        ("risk_disclosure", "明白不了", "not a plain answer (a negation after it)"),
        ("voluntary_confirmation", "是自愿的不是被迫的", "not a plain answer (a negation after"),
        # "If so, I'll think about it": a condition, not a yes.
        ("voluntary_confirmation", "是的话我再看看", "not a plain answer (a condition)"),
        ("consent", "可以吗？", "not a plain answer (a question)"),
        ("risk_disclosure", "清楚吗", "not a plain answer (a question)"),
        # A yes beside a no is for a person to weigh.
        ("customer_identity", "不是的，是我本人。", "also heard '不是的' (negated)"),
        ("consent", "可以，可以不录吗？", "also heard '可以不录吗' (a question)"),
    ],
)
def test_a_doubted_or_contradicted_answer_needs_review(
    moment: str, heard: str, reason: str
) -> None:
    verdict = _check(moment, heard)
    assert verdict.decision == "needs_review"
    assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


def test_a_short_answer_inside_another_word_is_no_answer() -> None:
    # 反对 (object) holds 对; nothing else heard is an accepted answer.
    verdict = _check("customer_identity", "我反对。")
    assert verdict.decision != "pass"
    assert verdict.phrases[0].found is False


def test_the_refusing_clause_is_the_evidence() -> None:
    verdict = _check("risk_disclosure", "明白不了。")
    said = verdict.phrases[0]
    assert (said.kind, said.found, said.negated) == ("say", True, False)
    assert (said.heard, said.note) == ("明白不了", "a negation after it")


def test_an_exact_transcript_the_audio_hardly_fits_goes_to_review() -> None:
    # Heard exactly as expected: the recogniser's own free reading confirms it, unless the text
    # fits the audio hopelessly (a hallucination over noise): then a person weighs it.
    verdict = _check("voluntary_confirmation", "我确认是自愿购买。", logprob=-5.0)
    assert verdict.alignment is not None
    assert verdict.alignment.text == verdict.alignment.heard_text == "我确认是自愿购买"
    assert verdict.alignment.verdict == "uncertain"
    assert verdict.decision == "needs_review"
    # A short answer scores poorly without context even when right: confirmed all the same.
    weak = _check("voluntary_confirmation", "我确认是自愿购买。", logprob=-2.0)
    assert weak.alignment is not None and weak.alignment.verdict == "confirmed"
    assert weak.decision == "pass"


def test_a_different_reading_still_lets_the_margin_confirm() -> None:
    # 是等 for 是的: scored without context both are weak, the margin between them decides.
    class Near(_Recognizer):
        def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
            logprob = -2.0 if text == "是的" else -1.4
            return Alignment(text, tuple(TokenScore(i, i + 1, logprob) for i in range(len(text))))

    verdict = check_line(
        Near("是等。"),
        np.zeros(2 * SAMPLE_RATE, dtype=np.float32),
        load_script("bank_wealth_product"),
        "voluntary_confirmation",
        "customer",
        VALUES,
    )
    assert verdict.alignment is not None and verdict.alignment.verdict == "confirmed"
    assert verdict.decision == "pass"
