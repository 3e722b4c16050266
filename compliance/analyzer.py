"""Judging speech against a script: one participant's audio for one key moment.

The unit is a *line*: what one speaker (teller or customer) must say in one moment. Its evidence
is the recognised transcript (matched on pinyin, negation-aware: compliance/matching.py; a
customer's answers by their whole clause, so that a question or a refusal is no yes) and the
forced-alignment score of the expected text against the audio (compliance/asr.py), which
confirms or contradicts what the transcript suggests. docs/compliance.md explains the decision
table and the thresholds.

For a recording, `analyze_moment` takes each participant's microphone track (decoded to 16 kHz
mono: asr.decode_audio) and the moment's span from the manifest marks, and judges every line of
the moment; times in the evidence are then on the recording's clock.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from compliance.asr import (
    SAMPLE_RATE,
    WINDOW_SECONDS,
    Alignment,
    Audio,
    Recognizer,
    Segment,
)
from compliance.matching import (
    Match,
    Syllables,
    best_affirmed,
    locate,
    locate_answer,
    sounds,
    to_syllables,
)
from compliance.sales_script import Script, ScriptError, Speaker, render

Decision = Literal["pass", "fail", "needs_review"]

# Audio kept on either side of the recognised segments when the expected text is scored: the
# recogniser's segment times are coarse, and a clipped first syllable would lower the score.
_SCORE_PADDING_SECONDS = 0.5


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds; docs/compliance.md gives the measurements behind each default."""

    # Pinyin similarity (1 - edit distance / phrase length) from which a phrase counts as said.
    match_similarity: float = 0.8
    # Forbidden phrases are short, so one different initial is too much: 产品风险 (pin) must
    # not be heard as 零风险 (ling). Homophones (宝本 for 保本) still match exactly.
    forbidden_similarity: float = 0.9
    # Below this the expected text is taken as not said at all (no candidate in the transcript).
    candidate_similarity: float = 0.5
    # Forced alignment confirms the text when its mean token log-probability reaches this...
    confirm_logprob: float = -1.5
    # ...or when it is within this of the score of what the recogniser itself heard there.
    confirm_margin: float = -1.2
    # It contradicts the text when both are below these.
    reject_logprob: float = -3.0
    reject_margin: float = -2.0
    # A mandatory phrase that the transcript garbled still counts when its part of the aligned
    # text reaches this mean log-probability.
    phrase_logprob: float = -1.5


@dataclass(frozen=True)
class PhraseEvidence:
    phrase: str
    kind: Literal["say", "must_include", "must_not_include"]
    found: bool
    negated: bool = False
    heard: str = ""
    similarity: float = 0.0
    start: float | None = None
    end: float | None = None
    logprob: float | None = None
    note: str = ""


@dataclass(frozen=True)
class AlignmentEvidence:
    text: str
    mean_logprob: float
    heard_text: str
    heard_mean_logprob: float
    margin: float
    weakest_token: str
    weakest_probability: float
    window: tuple[float, float]
    verdict: Literal["confirmed", "uncertain", "contradicted"]


@dataclass(frozen=True)
class LineVerdict:
    script: str
    moment: str
    speaker: Speaker
    decision: Decision
    reasons: tuple[str, ...]
    expected: str
    transcript: tuple[Segment, ...]
    speech_seconds: float
    min_seconds: float
    phrases: tuple[PhraseEvidence, ...]
    alignment: AlignmentEvidence | None
    thresholds: Thresholds
    model_version: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MomentVerdict:
    script: str
    moment: str
    decision: Decision
    lines: tuple[LineVerdict, ...]
    span: tuple[float, float] | None
    # What the script also requires in this moment but speech cannot show (faces, screen,
    # signature); the face and screen analyzers add their findings for these.
    not_checked_here: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def combine(decisions: list[Decision]) -> Decision:
    if "fail" in decisions:
        return "fail"
    if "needs_review" in decisions:
        return "needs_review"
    return "pass"


class _Transcript:
    """Recognised segments as one text, with the way back from characters to times."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        # A line break between segments: a clause boundary, so a negation does not reach over.
        self.text = "\n".join(s.text for s in segments)
        self.ranges: list[tuple[int, int]] = []
        position = 0
        for segment in segments:
            self.ranges.append((position, position + len(segment.text)))
            position += len(segment.text) + 1
        self.syllables: Syllables = to_syllables(self.text)

    def covering(self, char_start: int, char_end: int) -> list[int]:
        return [
            i for i, (lo, hi) in enumerate(self.ranges) if lo < char_end and hi > char_start
        ] or [0]

    def times(self, match: Match) -> tuple[float, float]:
        chosen = self.covering(match.char_start, match.char_end)
        return self.segments[chosen[0]].start, self.segments[chosen[-1]].end


def _evidence(
    kind: Literal["say", "must_include", "must_not_include"],
    phrase: str,
    match: Match | None,
    transcript: _Transcript,
    offset: float,
) -> PhraseEvidence:
    if match is None:
        return PhraseEvidence(phrase, kind, found=False)
    start, end = transcript.times(match)
    return PhraseEvidence(
        phrase,
        kind,
        found=True,
        negated=match.negated,
        heard=match.excerpt,
        similarity=match.similarity,
        start=round(start + offset, 2),
        end=round(end + offset, 2),
        note=match.doubt,
    )


def _spoken(text: str) -> str:
    return "".join(c for c in text if c.isalnum())


def _score_window(
    transcript: _Transcript, match: Match | None, audio: Audio
) -> tuple[int, int, str]:
    """Samples [lo, hi) to score the expected text in, and what was heard before it there."""
    if match is None:
        return 0, min(len(audio), int(WINDOW_SECONDS * SAMPLE_RATE)), ""
    chosen = transcript.covering(match.char_start, match.char_end)
    first = transcript.segments[chosen[0]]
    start = max(0.0, first.start - _SCORE_PADDING_SECONDS)
    end = min(transcript.segments[chosen[-1]].end + _SCORE_PADDING_SECONDS, start + WINDOW_SECONDS)
    prefix = transcript.text[transcript.ranges[chosen[0]][0] : match.char_start]
    return int(start * SAMPLE_RATE), min(len(audio), int(end * SAMPLE_RATE)), prefix


def check_line(
    recognizer: Recognizer,
    audio: Audio,
    script: Script,
    moment_id: str,
    speaker: Speaker,
    values: Mapping[str, str],
    thresholds: Thresholds = Thresholds(),
    *,
    offset: float = 0.0,
    segments: list[Segment] | None = None,
) -> LineVerdict:
    """Judge `audio` (one speaker, 16 kHz mono) against that speaker's line in one moment.

    `offset` is the audio's start on the recording's clock, added to every reported time.
    `segments`, if given, is the transcript of `audio` (times relative to its start), from a
    whole-track recognition done once for all moments; otherwise the audio is recognised here.
    """
    line = script.moment(moment_id).line(speaker)
    alternatives = [render(text, values) for text in line.say]
    required = [render(text, values) for text in line.must_include]
    forbidden = [render(text, values) for text in script.forbidden_for(line)]
    if segments is None:
        segments = recognizer.transcribe(audio)
    transcript = _Transcript(segments)
    speech_seconds = round(sum(s.end - s.start for s in segments), 2)

    def verdict(
        decision: Decision,
        reasons: list[str],
        expected: str,
        phrases: list[PhraseEvidence],
        alignment: AlignmentEvidence | None,
    ) -> LineVerdict:
        return LineVerdict(
            script=script.label,
            moment=moment_id,
            speaker=speaker,
            decision=decision,
            reasons=tuple(reasons),
            expected=expected,
            transcript=tuple(
                Segment(
                    round(s.start + offset, 2),
                    round(s.end + offset, 2),
                    s.text,
                    round(s.avg_logprob, 3),
                )
                for s in segments
            ),
            speech_seconds=speech_seconds,
            min_seconds=line.min_seconds,
            phrases=tuple(phrases),
            alignment=alignment,
            thresholds=thresholds,
            model_version=recognizer.model_version,
        )

    if not segments:
        return verdict("fail", ["no speech recognised"], alternatives[0], [], None)

    fails: list[str] = []
    reviews: list[str] = []
    phrases: list[PhraseEvidence] = []

    for phrase in forbidden:
        for hit in locate(phrase, transcript.syllables, thresholds.forbidden_similarity):
            evidence = _evidence("must_not_include", phrase, hit, transcript, offset)
            phrases.append(evidence)
            if not hit.negated:
                fails.append(
                    f"forbidden phrase {phrase} said (heard {hit.excerpt!r} at "
                    f"{evidence.start}-{evidence.end} s)"
                )

    # A customer's line lists accepted answers, judged by their clause; a teller's is a reading.
    answering = speaker == "customer"
    candidates = _ranked_alternatives(alternatives, transcript, thresholds, answering)
    expected, match = candidates[0]
    alignment, aligned = _align(recognizer, audio, transcript, expected, match, thresholds, offset)
    said = match is not None and match.similarity >= thresholds.match_similarity
    if said and alignment.verdict != "confirmed":
        # Any accepted answer the audio confirms will do: "对，是我本人" heard as "对，是我的人"
        # is a confirmed 对 even when the longer 是我本人 only weakly fits.
        for other, other_match in candidates[1:]:
            if other_match is None or not other_match.affirmed:
                break
            if other_match.similarity < thresholds.match_similarity:
                break
            found = _align(recognizer, audio, transcript, other, other_match, thresholds, offset)
            if found[0].verdict == "confirmed":
                expected, match, (alignment, aligned) = other, other_match, found
                break
    phrases.insert(0, _evidence("say", expected, match, transcript, offset))
    if answering and match is not None and match.affirmed:
        # A yes beside a no or a doubt (不是的，是我本人; 可以，可以吗？) is for a person to weigh.
        for answer, unsaid in _unaffirmed_answers(alternatives, transcript, thresholds):
            phrases.append(_evidence("say", answer, unsaid, transcript, offset))
            state = "negated" if unsaid.negated else unsaid.doubt
            reviews.append(f"also heard {unsaid.excerpt!r} ({state}) for {answer}")

    if match is not None and match.negated:
        fails.append(f"said the opposite: heard {match.excerpt!r} (negated) for {expected}")
    elif match is not None and match.doubt:
        reviews.append(
            f"not a plain answer ({match.doubt}): heard {match.excerpt!r} for {expected}"
        )
    elif said:
        if alignment.verdict == "contradicted":
            reviews.append("the transcript has the text but the audio does not fit it")
        elif alignment.verdict == "uncertain":
            reviews.append("the audio fits the expected text only weakly")
    elif alignment.verdict == "confirmed":
        reviews.append("the recogniser did not hear the text, but the audio fits it")
    elif alignment.verdict == "contradicted" or match is None:
        fails.append(f"not said: {expected}")
    else:
        reviews.append(f"partly heard ({match.similarity:.2f}): {match.excerpt!r}")

    for phrase in required:
        evidence, problem = _required(phrase, expected, aligned, transcript, thresholds, offset)
        phrases.append(evidence)
        if problem:
            fails.append(problem)

    spoken_seconds = speech_seconds
    if match is not None:
        start, end = transcript.times(match)
        spoken_seconds = round(end - start, 2)
    if said and spoken_seconds < line.min_seconds:
        fails.append(f"too short: {spoken_seconds} s of speech, at least {line.min_seconds} s")

    decision: Decision = "fail" if fails else "needs_review" if reviews else "pass"
    return verdict(decision, fails + reviews, expected, phrases, alignment)


def _ranked_alternatives(
    alternatives: list[str], transcript: _Transcript, thresholds: Thresholds, answering: bool
) -> list[tuple[str, Match | None]]:
    """The line's alternatives found in the transcript, best first; never empty (nothing found:
    the first alternative, unmatched).

    Affirmed beats the rest; then heard beats partly heard, and negated beats an answer only
    doubted (a refusal decides the line); then the longest (more specific, and forced alignment
    scores a one-character answer such as 对 poorly without context); among those only partly
    heard, the closest.
    """
    find = locate_answer if answering else locate
    ranked: list[tuple[tuple[bool, bool, bool, int, float], str, Match]] = []
    for text in alternatives:
        matches = find(text, transcript.syllables, thresholds.candidate_similarity)
        match = best_affirmed(matches) or (matches[0] if matches else None)
        if match is None:
            continue
        heard = match.similarity >= thresholds.match_similarity
        rank = (
            match.affirmed,
            heard,
            match.negated,
            len(_spoken(text)) if heard else 0,
            match.similarity,
        )
        ranked.append((rank, text, match))
    ranked.sort(key=lambda found: found[0], reverse=True)
    return [(text, match) for _, text, match in ranked] or [(alternatives[0], None)]


def _unaffirmed_answers(
    alternatives: list[str], transcript: _Transcript, thresholds: Thresholds
) -> list[tuple[str, Match]]:
    """Accepted answers heard negated, as a question or as a condition; one per stretch."""
    found: list[tuple[str, Match]] = []
    for text in alternatives:
        for match in locate_answer(text, transcript.syllables, thresholds.match_similarity):
            overlaps = any(
                match.char_start < other.char_end and other.char_start < match.char_end
                for _, other in found
            )
            if not match.affirmed and not overlaps:
                found.append((text, match))
    return sorted(found, key=lambda pair: pair[1].char_start)


def _align(
    recognizer: Recognizer,
    audio: Audio,
    transcript: _Transcript,
    expected: str,
    match: Match | None,
    thresholds: Thresholds,
    offset: float,
) -> tuple[AlignmentEvidence, Alignment]:
    lo, hi, prefix = _score_window(transcript, match, audio)
    window = audio[lo:hi]
    aligned = recognizer.score(window, expected, prefix)
    mean = aligned.mean_logprob()
    if match is not None:
        heard_text = match.excerpt
    else:
        heard_text = "".join(s.text for s in transcript.segments if s.start * SAMPLE_RATE < hi)
        prefix = ""
    # The margin weighs the expected text against another reading of the same audio. When the
    # recogniser, free to write anything, heard the expected text's very sounds, there is no
    # other reading: that free reading is the confirmation, unless the text fits the audio
    # hopelessly (a hallucination over noise), which a person weighs. The same sounds, not the
    # same characters: Whisper now and then writes Traditional characters despite its prompt,
    # and a one-character 对 scores poorly against the 對 it wrote, even when right.
    compared = sounds(heard_text) != sounds(expected)
    heard_mean = recognizer.score(window, heard_text, prefix).mean_logprob() if compared else mean
    margin = mean - heard_mean
    state: Literal["confirmed", "uncertain", "contradicted"] = "uncertain"
    if not compared:
        if mean >= thresholds.reject_logprob:
            state = "confirmed"
    elif mean >= thresholds.confirm_logprob or margin >= thresholds.confirm_margin:
        state = "confirmed"
    elif mean < thresholds.reject_logprob and margin < thresholds.reject_margin:
        state = "contradicted"
    weakest = aligned.weakest() or ("", 1.0)
    evidence = AlignmentEvidence(
        text=expected,
        mean_logprob=round(mean, 3),
        heard_text=heard_text,
        heard_mean_logprob=round(heard_mean, 3),
        margin=round(margin, 3),
        weakest_token=weakest[0],
        weakest_probability=round(weakest[1], 5),
        window=(round(lo / SAMPLE_RATE + offset, 2), round(hi / SAMPLE_RATE + offset, 2)),
        verdict=state,
    )
    return evidence, aligned


def _required(
    phrase: str,
    expected: str,
    aligned: Alignment,
    transcript: _Transcript,
    thresholds: Thresholds,
    offset: float,
) -> tuple[PhraseEvidence, str]:
    matches = locate(phrase, transcript.syllables, thresholds.match_similarity)
    affirmed = best_affirmed(matches)
    if affirmed is not None:
        return _evidence("must_include", phrase, affirmed, transcript, offset), ""
    if matches:
        evidence = _evidence("must_include", phrase, matches[0], transcript, offset)
        return evidence, f"mandatory phrase negated: heard {matches[0].excerpt!r} for {phrase}"
    # The transcript garbled it (noise, accent): ask the audio. Only possible when the phrase is
    # part of the text that was scored.
    where = expected.find(phrase)
    if where >= 0:
        logprob = aligned.mean_logprob(where, where + len(phrase))
        if logprob >= thresholds.phrase_logprob:
            return (
                PhraseEvidence(
                    phrase,
                    "must_include",
                    found=True,
                    logprob=round(logprob, 3),
                    note="not in the transcript; confirmed by forced alignment",
                ),
                "",
            )
        return (
            PhraseEvidence(phrase, "must_include", found=False, logprob=round(logprob, 3)),
            f"mandatory phrase missing: {phrase}",
        )
    return PhraseEvidence(
        phrase, "must_include", found=False
    ), f"mandatory phrase missing: {phrase}"


def _segments_in_span(
    recognizer: Recognizer, track: Audio, segments: list[Segment], start: float, end: float
) -> list[Segment]:
    """A whole-track transcript cut to [start, end), on the span's own clock.

    Whisper's segments run up to 30 s and can hold several turns across a mark. A segment with
    word times is cut at the mark; one without is recognised again over just its part inside
    the span (measured: Whisper's own word timestamps made it decode trailing silence into
    hallucinations at 10-20x the cost, and cross-attention times over long silences were
    seconds off).
    """
    kept: list[Segment] = []
    for segment in segments:
        crosses = segment.start < start < segment.end or segment.start < end < segment.end
        if crosses and not segment.words:
            lo, hi = max(segment.start, start), min(segment.end, end)
            piece = track[int(lo * SAMPLE_RATE) : int(hi * SAMPLE_RATE)]
            kept.extend(s.shifted(lo - start) for s in recognizer.transcribe(piece))
            continue
        part = segment.within(start, end)
        if part is not None:
            kept.append(part.shifted(-start))
    return kept


def analyze_moment(
    recognizer: Recognizer,
    script: Script,
    moment_id: str,
    tracks: Mapping[Speaker, Audio],
    values: Mapping[str, str],
    span: tuple[float, float] | None = None,
    thresholds: Thresholds = Thresholds(),
    transcripts: Mapping[Speaker, list[Segment]] | None = None,
) -> MomentVerdict:
    """Judge every line of a moment from each speaker's own track.

    `tracks` are whole recordings of one participant each (16 kHz mono, media time 0 at sample
    0); `span` is the moment's [start, end] in seconds from the manifest marks. `transcripts`
    are the tracks' whole transcripts (with word times) if already recognised: recognise each
    track once and judge every moment from it, which is several times cheaper than recognising
    each span (each recognition call costs a full 30 s window). Without them, each span is
    recognised on its own.
    """
    moment = script.moment(moment_id)
    verdicts: list[LineVerdict] = []
    start = span[0] if span else 0.0
    for line in moment.lines:
        track = tracks.get(line.speaker)
        if track is None:
            raise ScriptError(f"no {line.speaker} track to judge moment {moment_id!r}")
        if span is not None:
            track = track[int(span[0] * SAMPLE_RATE) : int(span[1] * SAMPLE_RATE)]
        segments = None
        if transcripts is not None:
            end = span[1] if span else float("inf")
            segments = _segments_in_span(
                recognizer, tracks[line.speaker], transcripts.get(line.speaker, []), start, end
            )
            # Nothing of the whole-track transcript falls in the span: recognise the span on
            # its own before calling it silent. Whole-track recognition can drop a short answer
            # after a long silence (measured: a lone 是的), and a second look at a silent span
            # costs one window. Never a second opinion on a span that has words: taking the
            # better of two transcripts would favour the one that missed a forbidden phrase.
            if not segments:
                segments = None
        verdicts.append(
            check_line(
                recognizer,
                track,
                script,
                moment_id,
                line.speaker,
                values,
                thresholds,
                offset=start,
                segments=segments,
            )
        )
    not_checked = []
    if moment.visible.teller or moment.visible.customers:
        not_checked.append(
            f"visible: teller={moment.visible.teller}, customers={moment.visible.customers}"
        )
    if moment.document_on_screen:
        not_checked.append("document on screen")
    if moment.signature_captured:
        not_checked.append("signature captured")
    return MomentVerdict(
        script=script.label,
        moment=moment_id,
        decision=combine([v.decision for v in verdicts]),
        lines=tuple(verdicts),
        span=span,
        not_checked_here=tuple(not_checked),
    )


class ComplianceEngine:
    """Async front of the analyzer: recognition is CPU-bound and must not run on the event loop.

    One worker thread by default: the recogniser already uses its own threads, and parallel
    calls would only compete for the same cores (and memory) as the media server.
    """

    def __init__(self, recognizer: Recognizer, executor: Executor | None = None) -> None:
        self.recognizer = recognizer
        self._owned = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="compliance"
        )

    async def check_line(
        self,
        audio: Audio,
        script: Script,
        moment_id: str,
        speaker: Speaker,
        values: Mapping[str, str],
        thresholds: Thresholds = Thresholds(),
    ) -> LineVerdict:
        call = functools.partial(
            check_line, self.recognizer, audio, script, moment_id, speaker, values, thresholds
        )
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def analyze_moment(
        self,
        script: Script,
        moment_id: str,
        tracks: Mapping[Speaker, Audio],
        values: Mapping[str, str],
        span: tuple[float, float] | None = None,
        thresholds: Thresholds = Thresholds(),
    ) -> MomentVerdict:
        call = functools.partial(
            analyze_moment, self.recognizer, script, moment_id, tracks, values, span, thresholds
        )
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        if self._owned:
            self._executor.shutdown(wait=True)
