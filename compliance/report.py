"""The after-call analysis of a dual recording and its report.

`analyze_recording` takes a recording (compliance/recording.py), the sales script the call
followed with its placeholder values (`choose_script`), a speech recogniser and a face counter,
and judges every moment of the script:

- speech: each speaker's own microphone track is recognised once, then every marked moment is
  judged from it with `analyzer.analyze_moment` (what was said, negations, forced alignment,
  minimum reading time);
- faces: each camera is sampled about once a second and the faces counted (YuNet); the moment's
  `visible` rule (the teller present, exactly N customers) is checked over its span;
- the document: the teller's screen track must have frames during a `document_on_screen` moment;
- the signature cannot be checked yet (the product does not capture it): listed as not checked.

A moment the teller never marked is `needs_review` ("not marked"); the recording passes only
when every moment passes. The report is a JSON document without floating-point numbers
(decimals are strings, times integer milliseconds), so it can be signed as canonical JSON
(recorder/seal/canonical.py); for the same inputs the analysis gives the same document except
`created_at`. `render_html` turns it into a page for a reviewer. docs/compliance.md, "After the
call", describes the method and the format.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from compliance.analyzer import (
    AlignmentEvidence,
    Decision,
    LineVerdict,
    PhraseEvidence,
    Thresholds,
    analyze_moment,
    combine,
)
from compliance.asr import SAMPLE_RATE, Audio, Recognizer, Segment
from compliance.recording import (
    MediaTrack,
    Progress,
    Recording,
    Span,
    StageProgress,
    Window,
)
from compliance.sales_script import (
    SPEAKERS,
    Line,
    Moment,
    Script,
    ScriptError,
    Speaker,
    load_script,
    placeholders_in,
)
from recorder.seal.manifest import Manifest, format_timestamp

REPORT_FORMAT = "vteller-compliance-report/1"

# The shipped script for each business of an invitation (as server/recording/script.py chooses
# it when the recording starts); used when the manifest names no script.
BUSINESS_SCRIPTS = {
    "wealth": "bank_wealth_product",
    "insurance": "bank_agent_life_insurance",
    "general": "general_service",
}

# Long tracks are recognised in pieces of about this length, cut at the quietest moment near
# each boundary, so that progress can be reported (one call would be silent for minutes).
_CHUNK_SECONDS = 300
_CUT_SEARCH_SECONDS = 30
_CUT_FRAME = SAMPLE_RATE // 10


class FaceCounter(Protocol):
    """Counts the faces in a BGR image (uint8, HxWx3)."""

    @property
    def model_versions(self) -> dict[str, str]: ...

    def count(self, bgr: np.ndarray) -> int: ...


class YuNetFaceCounter:
    """The identity module's YuNet detector (pinned model files, checked at load), counting
    faces as the identity check and the live check do (`live_faces`): a face under a quarter of
    the largest one's area is not a person in front of the camera but, say, the portrait on the
    ID card the customer is asked to show."""

    def __init__(self) -> None:
        # Imported here: OpenCV and the model check are only paid for when faces are counted.
        from server.identity.face.match import live_faces
        from server.identity.face.yunet import YuNetSFaceEngine

        self._engine = YuNetSFaceEngine()
        self._live_faces = live_faces

    @property
    def model_versions(self) -> dict[str, str]:
        return {"face_detector": self._engine.model_versions["detector"] + " (YuNet, score 0.6)"}

    def count(self, bgr: np.ndarray) -> int:
        return len(self._live_faces(self._engine.detect(np.ascontiguousarray(bgr))))


@dataclass(frozen=True)
class VisibilityRules:
    """How the `visible` rule of a moment is judged from sampled camera frames."""

    # One frame per this much media time and camera.
    sample_ms: int = 1000
    # Samples (of a camera, within a moment) that may miss the required face(s) before the
    # moment fails: people look down, lean out, the picture freezes for a second.
    max_violation_percent: int = 20
    # Too many faces in this many samples in a row fail the moment at once, whatever the share:
    # someone else is there. A single such sample is a detector's mistake as often as a person
    # passing behind, so it only counts towards the share above (as the live check's
    # crowded_pictures, server/recording/live_checks.py).
    crowded_samples: int = 2


@dataclass(frozen=True)
class ScriptChoice:
    script: Script
    values: dict[str, str]
    chosen_by: str  # "manifest", "business" or "command line"


def choose_script(
    manifest: Manifest,
    *,
    script_id: str | None = None,
    values: Mapping[str, str] | None = None,
    scripts_dir: Path | None = None,
) -> ScriptChoice:
    """The script the recording is judged against, and its placeholder values.

    The manifest's `compliance` object (`{"script": id, "script_version": v, "values": {...}}`,
    written when the recording started) comes first; without it, the business's script. A
    `script_id` overrides both; `values` override and complete the recorded ones. A recorded
    script whose version differs from the one available is refused unless `script_id` is given:
    the call must be judged against the text that was read.
    """
    recorded = manifest.compliance or {}
    recorded_id = recorded.get("script")
    recorded_values = recorded.get("values")
    chosen: dict[str, str] = {}
    if isinstance(recorded_values, dict):
        chosen = {k: v for k, v in recorded_values.items() if isinstance(v, str) and v}
    chosen.update(values or {})
    if script_id:
        return ScriptChoice(load_script(script_id, scripts_dir), chosen, "command line")
    if isinstance(recorded_id, str) and recorded_id:
        script = load_script(recorded_id, scripts_dir)
        version = recorded.get("script_version")
        if isinstance(version, str) and version != script.version:
            raise ScriptError(
                f"the recording followed script {recorded_id}@{version}, but the script available "
                f"is version {script.version}: point --scripts-dir at the scripts of that time, or "
                f"name the script to use with --script"
            )
        return ScriptChoice(script, chosen, "manifest")
    name = BUSINESS_SCRIPTS.get(manifest.business)
    if name is None:
        raise ScriptError(
            f"the manifest names no script and business {manifest.business!r} has none by "
            "default: name one with --script"
        )
    return ScriptChoice(load_script(name, scripts_dir), chosen, "business")


def line_placeholders(line: Line) -> list[str]:
    """The placeholders a line's texts use, in order of first use."""
    names: list[str] = []
    for text in [*line.say, *line.must_include, *line.must_not_include]:
        names += [n for n in placeholders_in(text) if n not in names]
    return names


def missing_values(script: Script, values: Mapping[str, str], moments: Iterable[str]) -> list[str]:
    """Placeholders used by the lines of these moments that have no value."""
    missing: list[str] = []
    for moment_id in moments:
        for line in script.moment(moment_id).lines:
            missing += [
                n for n in line_placeholders(line) if not values.get(n) and n not in missing
            ]
    return missing


DEFAULT_THRESHOLDS = Thresholds()


def decimal(value: float, places: int = 3) -> str:
    """A number as a decimal string ("-0.431"): the report holds no floats."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    text = f"{value:.{places}f}"
    return "0." + "0" * places if text == "-0." + "0" * places else text


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def analyze_recording(
    recording: Recording,
    choice: ScriptChoice,
    recognizer: Recognizer,
    faces: FaceCounter | None,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    visibility: VisibilityRules = VisibilityRules(),
    progress: Progress | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """Judge every moment of the script in the recording; the report document (see module doc).

    Synchronous and CPU-bound: run it in a worker thread or a subprocess. `faces` None leaves
    every visibility rule unchecked (needs_review). A line of a marked moment whose placeholders
    have no value cannot be judged: it fails, and the reason names the missing values (and
    `missing_values` in the report lists them all).
    """
    script = choice.script
    spans = {k: v for k, v in recording.spans().items() if _has_moment(script, k)}
    used = {f"{k}.{phase}" for k in spans for phase in ("start", "end")}
    ignored = sorted({m.name for m in recording.manifest.marks} - used)
    speaking = {line.speaker for k in spans for line in script.moment(k).lines}
    speakers = [s for s in SPEAKERS if s in speaking]
    tracks: dict[Speaker, Audio] = {}
    transcripts: dict[Speaker, list[Segment]] = {}
    absent: list[Speaker] = []
    for speaker in speakers:
        step = StageProgress(progress, f"transcribing {speaker}")
        step(0.0)
        track = recording.track(speaker, "microphone")
        if track is None or not track.packets:
            absent.append(speaker)
            tracks[speaker] = np.zeros(0, dtype=np.float32)
            transcripts[speaker] = []
            step(1.0)
            continue
        audio = recording.decode_audio(track, step.part(0.0, 0.1))
        tracks[speaker] = audio
        transcripts[speaker] = transcribe_track(recognizer, audio, step.part(0.1, 1.0))
        step(1.0)

    samples = _count_faces(recording, script, spans, faces, visibility, progress)

    judging = StageProgress(progress, "judging")
    judging(0.0)
    moments: list[dict[str, Any]] = []
    for position, moment in enumerate(script.moments):
        span = spans.get(moment.id)
        if span is None:
            moments.append(_unmarked(moment))
        else:
            moments.append(
                _judge(
                    recording,
                    script,
                    moment,
                    span,
                    choice.values,
                    recognizer,
                    tracks,
                    transcripts,
                    absent,
                    samples,
                    faces is not None,
                    thresholds,
                    visibility,
                )
            )
        judging((position + 1) / len(script.moments))

    decisions: list[Decision] = [m["decision"] for m in moments]
    overall: Decision = "pass" if all(d == "pass" for d in decisions) else combine(decisions)
    manifest = recording.manifest
    models: dict[str, str] = {"asr": recognizer.model_version}
    if faces is not None:
        models.update(faces.model_versions)
    return {
        "format": REPORT_FORMAT,
        "archive_id": manifest.archive_id,
        "session_id": manifest.session_id,
        "manifest_sha256": recording.manifest_sha256,
        "source": {
            "kind": "archive" if recording.verified else "decrypted recording",
            "verified": recording.verified,
        },
        "business": manifest.business,
        "script": {
            "id": script.id,
            "version": script.version,
            "title": script.title,
            "chosen_by": choice.chosen_by,
        },
        "values": dict(sorted(choice.values.items())),
        "missing_values": missing_values(script, choice.values, spans),
        "models": models,
        "thresholds": {
            "speech": {name: decimal(value) for name, value in asdict(thresholds).items()},
            "visibility": {
                "sample_ms": visibility.sample_ms,
                "max_violation_percent": visibility.max_violation_percent,
                "crowded_samples": visibility.crowded_samples,
            },
        },
        "recording": {
            "status": manifest.status,
            "duration_ms": recording.duration_ms,
            "gaps": [g.model_dump() for g in manifest.gaps],
            "tracks": [
                {
                    "track": t.index,
                    "role": t.role,
                    "source": t.source,
                    "packets": t.packets,
                    "first_ms": t.first_ms,
                    "last_ms": t.last_ms,
                }
                for t in recording.tracks
            ],
            "ignored_marks": ignored,
        },
        "moments": moments,
        "summary": {d: decisions.count(d) for d in ("pass", "fail", "needs_review")},
        "decision": overall,
        "created_at": created_at or format_timestamp(datetime.now(UTC)),
    }


def exit_code(document: Mapping[str, Any]) -> int:
    """0 when the recording passes, 1 otherwise (fail or needs_review)."""
    return 0 if document.get("decision") == "pass" else 1


def _has_moment(script: Script, moment_id: str) -> bool:
    return any(m.id == moment_id for m in script.moments)


def transcribe_track(
    recognizer: Recognizer, audio: Audio, progress: Callable[[float], None] | None = None
) -> list[Segment]:
    """One whole track's transcript, recognised in pieces of about _CHUNK_SECONDS cut at the
    quietest 100 ms near each boundary (deterministic: the same audio is cut the same way)."""
    if not len(audio):
        return []
    cuts = [0]
    chunk = _CHUNK_SECONDS * SAMPLE_RATE
    while len(audio) - cuts[-1] > chunk + chunk // 5:
        boundary = cuts[-1] + chunk
        lo = boundary - _CUT_SEARCH_SECONDS * SAMPLE_RATE
        frames = audio[lo:boundary].reshape(-1, _CUT_FRAME)
        quietest = int(np.argmin(np.einsum("ij,ij->i", frames, frames)))
        cuts.append(lo + quietest * _CUT_FRAME + _CUT_FRAME // 2)
    cuts.append(len(audio))
    segments: list[Segment] = []
    for start, end in itertools.pairwise(cuts):
        offset = start / SAMPLE_RATE
        segments += [s.shifted(offset) for s in recognizer.transcribe(audio[start:end])]
        if progress is not None:
            progress(end / max(1, len(audio)))
    return segments


# -- faces -----------------------------------------------------------------------------------

# Per role ("teller", "customer"): sample cell -> (media ms of the frame, faces counted).
_Samples = dict[str, dict[int, tuple[int, int]]]


def _count_faces(
    recording: Recording,
    script: Script,
    spans: Mapping[str, Span],
    faces: FaceCounter | None,
    rules: VisibilityRules,
    progress: Progress | None,
) -> _Samples:
    step = StageProgress(progress, "faces")
    step(0.0)
    samples: _Samples = {"teller": {}, "customer": {}}
    # Faces are judged inside marked moments only, so only those stretches are decoded.
    needed: dict[str, list[Window]] = {}
    for moment_id, span in spans.items():
        visible = script.moment(moment_id).visible
        for role, wanted in (("teller", visible.teller), ("customer", visible.customers)):
            if wanted:
                needed.setdefault(role, []).append((span.start_ms, span.end_ms))
    cameras = [
        track
        for role in sorted(needed)
        if (track := recording.track(role, "camera")) is not None and track.packets
    ]
    if faces is None or not cameras:
        step(1.0)
        return samples

    def visit(track: MediaTrack, ms: int, bgr: np.ndarray) -> None:
        samples[track.role][ms // rules.sample_ms] = (ms, faces.count(bgr))

    windows = {track.index: needed[track.role] for track in cameras}
    recording.sample_video(cameras, rules.sample_ms, visit, step, windows)
    step(1.0)
    return samples


def _cells(span: Span, rules: VisibilityRules) -> range:
    """The sample cells a span overlaps."""
    if span.end_ms <= span.start_ms:
        return range(0)
    return range(span.start_ms // rules.sample_ms, -(-span.end_ms // rules.sample_ms))


def _judge_visibility(
    moment: Moment,
    span: Span,
    samples: _Samples,
    counted: bool,
    rules: VisibilityRules,
) -> dict[str, Any] | None:
    visible = moment.visible
    required = {"teller": visible.teller, "customers": visible.customers}
    if not visible.teller and not visible.customers:
        return None
    result: dict[str, Any] = {"required": required, "checks": [], "violations": []}
    if not counted:
        result.update(decision="needs_review", reasons=["faces were not counted"])
        return result
    cells = _cells(span, rules)
    decisions: list[Decision] = []
    reasons: list[str] = []
    for who, need in (("teller", 1 if visible.teller else 0), ("customer", visible.customers)):
        if not need:
            continue
        seen = samples.get(who, {})
        problems: list[tuple[int, str]] = []  # (cell, problem)
        histogram: dict[str, int] = {}
        run = longest_run = 0  # samples in a row with too many faces
        frozen = 0
        for cell in cells:
            count = seen[cell][1] if cell in seen else None
            if count is None and cell - 1 in seen and cell + 1 in seen:
                # One second without a new frame between two with one: the picture froze (a
                # browser pauses its camera for a moment when its bandwidth estimate dips, as
                # when a screen share starts), and a player shows the last frame meanwhile.
                # Longer gaps stay "no video".
                count = seen[cell - 1][1]
                frozen += 1
            run = run + 1 if who == "customer" and count is not None and count > need else 0
            longest_run = max(longest_run, run)
            if count is None:
                problems.append((cell, "no video"))
                continue
            histogram[str(count)] = histogram.get(str(count), 0) + 1
            if who == "teller" and count < 1:
                problems.append((cell, "no face"))
            elif who == "customer" and count != need:
                problems.append((cell, "no face" if count == 0 else f"{count} faces"))
        sampled = sum(1 for cell in cells if cell in seen)
        check: dict[str, Any] = {
            "who": who,
            "need": f"exactly {need}" if who == "customer" else "at least 1",
            "cells": len(cells),
            "sampled": sampled,
            "violations": len(problems),
            "violation_percent": decimal(100 * len(problems) / len(cells), 1) if cells else "0.0",
            "faces": dict(sorted(histogram.items())),
            "frozen": frozen,
        }
        if not cells:
            decision: Decision = "needs_review"
            reasons.append(f"{who}: the moment is too short to sample")
        elif not sampled:
            decision = "needs_review"
            reasons.append(f"{who}: no video during the moment")
        elif longest_run >= rules.crowded_samples:
            decision = "fail"
            reasons.append(
                f"{who}: more than {need} face(s) on camera in {longest_run} samples in a row "
                "(someone else in the picture)"
            )
        elif len(problems) * 100 > rules.max_violation_percent * len(cells):
            decision = "fail"
            reasons.append(
                f"{who}: not visible as required in {len(problems)} of {len(cells)} samples "
                f"(tolerance {rules.max_violation_percent} %)"
            )
        else:
            decision = "pass"
        check["decision"] = decision
        decisions.append(decision)
        result["checks"].append(check)
        result["violations"] += _ranges(who, problems, span, rules)
    result["decision"] = combine(decisions)
    result["reasons"] = reasons
    return result


def _ranges(
    who: str, problems: Sequence[tuple[int, str]], span: Span, rules: VisibilityRules
) -> list[dict[str, Any]]:
    """Consecutive cells with the same problem as one time range, clipped to the span."""
    ranges: list[dict[str, Any]] = []
    for cell, problem in problems:
        start = max(span.start_ms, cell * rules.sample_ms)
        end = min(span.end_ms, (cell + 1) * rules.sample_ms)
        last = ranges[-1] if ranges else None
        if last is not None and last["problem"] == problem and last["end_ms"] == start:
            last["end_ms"] = end
        else:
            ranges.append({"who": who, "problem": problem, "start_ms": start, "end_ms": end})
    return ranges


def _judge_document(recording: Recording, span: Span) -> dict[str, Any]:
    screen = recording.track("teller", "screen")
    frames = 0
    if screen is not None:
        times = recording.screen_packets.get(screen.index, [])
        frames = sum(1 for ms in times if span.start_ms <= ms < span.end_ms)
    if frames:
        return {"decision": "pass", "screen_frames": frames, "reasons": []}
    return {"decision": "needs_review", "screen_frames": 0, "reasons": ["no document shown"]}


# -- moments ---------------------------------------------------------------------------------


def _unmarked(moment: Moment) -> dict[str, Any]:
    return {
        "id": moment.id,
        "title": moment.title,
        "decision": "needs_review",
        "reasons": ["not marked"],
        "span_ms": None,
        "span_ended_by": None,
        "span_replaced": None,
        "duration_ms": None,
        "lines": [],
        "visibility": None,
        "document": None,
        "not_checked": _not_checked(moment),
    }


def _not_checked(moment: Moment) -> list[str]:
    # The product does not capture signatures yet (docs/compliance.md, "After the call").
    return ["signature_captured"] if moment.signature_captured else []


def _judge(
    recording: Recording,
    script: Script,
    moment: Moment,
    span: Span,
    values: Mapping[str, str],
    recognizer: Recognizer,
    tracks: Mapping[Speaker, Audio],
    transcripts: Mapping[Speaker, list[Segment]],
    absent: Sequence[Speaker],
    samples: _Samples,
    counted: bool,
    thresholds: Thresholds,
    rules: VisibilityRules,
) -> dict[str, Any]:
    # A line whose placeholders have no value cannot be judged: what was to be said is unknown.
    judged = [line for line in moment.lines if not _unfilled(line, values)]
    verdict = analyze_moment(
        recognizer,
        script.model_copy(
            update={
                "moments": [
                    moment.model_copy(update={"lines": judged}) if m.id == moment.id else m
                    for m in script.moments
                ]
            }
        ),
        moment.id,
        tracks,
        values,
        (span.start_ms / 1000, span.end_ms / 1000),
        thresholds,
        transcripts,
    )
    by_speaker = {v.speaker: _line(v) for v in verdict.lines}
    lines: list[dict[str, Any]] = []
    reasons: list[str] = []
    for line in moment.lines:
        if line.speaker in by_speaker:
            lines.append(by_speaker[line.speaker])
        else:
            lines.append(_unjudged(line, _unfilled(line, values), script))
        if line.speaker in absent:
            reasons.append(f"{line.speaker}: no {line.speaker} microphone in the recording")
        reasons += [f"{line.speaker}: {reason}" for reason in lines[-1]["reasons"]]
    decisions: list[Decision] = [line["decision"] for line in lines]
    visibility = _judge_visibility(moment, span, samples, counted, rules)
    if visibility is not None:
        decisions.append(visibility["decision"])
        reasons += [f"visibility: {r}" for r in visibility["reasons"]]
    document = _judge_document(recording, span) if moment.document_on_screen else None
    if document is not None:
        decisions.append(document["decision"])
        reasons += document["reasons"]
    if span.ended_by != "end mark":
        reasons.append(f"no end mark: the span ends at the {span.ended_by}")
    return {
        "id": moment.id,
        "title": moment.title,
        "decision": combine(decisions),
        "reasons": reasons,
        "span_ms": [span.start_ms, span.end_ms],
        "span_ended_by": span.ended_by,
        "span_replaced": span.replaced,
        "duration_ms": span.duration_ms,
        "lines": lines,
        "visibility": visibility,
        "document": document,
        "not_checked": _not_checked(moment),
    }


def _unfilled(line: Line, values: Mapping[str, str]) -> list[str]:
    return [name for name in line_placeholders(line) if not values.get(name)]


def _unjudged(line: Line, missing: Sequence[str], script: Script) -> dict[str, Any]:
    names = ", ".join(f"{{{n}}} ({script.placeholders.get(n, n)})" for n in missing)
    fix = " ".join(f"--set {n}=VALUE" for n in missing)
    return {
        "speaker": line.speaker,
        "decision": "fail",
        "reasons": [f"not judged: no value for {names}; the recording does not carry it ({fix})"],
        "expected": line.say[0],
        "transcript": [],
        "speech_ms": 0,
        "min_ms": _ms(line.min_seconds),
        "phrases": [],
        "alignment": None,
    }


def _line(verdict: LineVerdict) -> dict[str, Any]:
    return {
        "speaker": verdict.speaker,
        "decision": verdict.decision,
        "reasons": list(verdict.reasons),
        "expected": verdict.expected,
        "transcript": [
            {
                "start_ms": _ms(s.start),
                "end_ms": _ms(s.end),
                "text": s.text,
                "avg_logprob": decimal(s.avg_logprob),
            }
            for s in verdict.transcript
        ],
        "speech_ms": _ms(verdict.speech_seconds),
        "min_ms": _ms(verdict.min_seconds),
        "phrases": [_phrase(p) for p in verdict.phrases],
        "alignment": _alignment(verdict.alignment),
    }


def _phrase(evidence: PhraseEvidence) -> dict[str, Any]:
    return {
        "phrase": evidence.phrase,
        "kind": evidence.kind,
        "found": evidence.found,
        "negated": evidence.negated,
        "heard": evidence.heard,
        "similarity": decimal(evidence.similarity),
        "start_ms": None if evidence.start is None else _ms(evidence.start),
        "end_ms": None if evidence.end is None else _ms(evidence.end),
        "logprob": None if evidence.logprob is None else decimal(evidence.logprob),
        "note": evidence.note,
    }


def _alignment(evidence: AlignmentEvidence | None) -> dict[str, Any] | None:
    if evidence is None:
        return None
    return {
        "verdict": evidence.verdict,
        "text": evidence.text,
        "mean_logprob": decimal(evidence.mean_logprob),
        "heard_text": evidence.heard_text,
        "heard_mean_logprob": decimal(evidence.heard_mean_logprob),
        "margin": decimal(evidence.margin),
        "weakest_token": evidence.weakest_token,
        "weakest_probability": decimal(evidence.weakest_probability, 5),
        "window_ms": [_ms(evidence.window[0]), _ms(evidence.window[1])],
    }


# -- HTML ------------------------------------------------------------------------------------

_DECISION_LABELS = {
    "pass": "通过 pass",
    "fail": "不通过 fail",
    "needs_review": "待人工复核 needs review",
}
_SPEAKER_LABELS = {"teller": "柜员 teller", "customer": "客户 customer"}
_STYLE = """
body{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;margin:2em;color:#222;
max-width:70em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}h3{font-size:1.05em;margin:.2em 0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}
.pass{background:#d9f2d9}.fail{background:#f8d0d0}.needs_review{background:#fdf0c8}
.badge{display:inline-block;padding:.1em .5em;border-radius:.3em;font-weight:bold}
.timeline{position:relative;height:2.2em;background:#eee;border:1px solid #ccc;margin:1em 0}
.timeline a{position:absolute;top:0;bottom:0;overflow:hidden;white-space:nowrap;font-size:.75em;
border-right:1px solid #fff;color:#222;text-decoration:none;padding:.2em}
.moment{border:1px solid #ddd;padding:.5em 1em;margin:1em 0;border-radius:.3em}
.muted{color:#777}code{background:#f4f4f4;padding:0 .2em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time(ms: int | None) -> str:
    if ms is None:
        return "–"
    seconds, millis = divmod(int(ms), 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes:02d}:{seconds:02d}.{millis // 100}"


def _seconds(ms: int) -> str:
    return f"{int(ms) / 1000:.1f} s"


def _badge(decision: str) -> str:
    label = _DECISION_LABELS.get(decision, decision)
    return f'<span class="badge {_e(decision)}">{_e(label)}</span>'


def render_html(document: Mapping[str, Any]) -> str:
    """A self-contained page (no scripts, no external resources) for a human reviewer."""
    script = document.get("script", {})
    recording = document.get("recording", {})
    moments: list[Mapping[str, Any]] = list(document.get("moments", []))
    duration = max(
        [int(recording.get("duration_ms") or 0)]
        + [int(m["span_ms"][1]) for m in moments if m.get("span_ms")]
        + [1]
    )
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>双录质检报告 Compliance report {_e(document.get('archive_id', ''))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>双录质检报告 <span class='muted'>Dual-recording compliance report</span></h1>",
        f"<p>{_badge(str(document.get('decision', '')))}</p>",
        "<table>",
    ]
    summary = document.get("summary", {})
    source = document.get("source", {})
    rows = [
        ("录像编号 Archive", document.get("archive_id")),
        ("会话 Session", document.get("session_id")),
        ("清单 SHA-256 Manifest", document.get("manifest_sha256")),
        (
            "来源 Source",
            f"{source.get('kind')} ("
            + ("已验签 verified" if source.get("verified") else "未验签 not verified")
            + ")",
        ),
        ("业务 Business", document.get("business")),
        (
            "话术 Script",
            f"{script.get('title', '')} — {script.get('id')}@{script.get('version')} "
            f"(chosen by {script.get('chosen_by')})",
        ),
        ("时长 Duration", _time(recording.get("duration_ms"))),
        (
            "结果 Moments",
            f"pass {summary.get('pass', 0)}, fail {summary.get('fail', 0)}, "
            f"needs review {summary.get('needs_review', 0)}",
        ),
        ("生成时间 Created", document.get("created_at")),
    ]
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</table>")

    out.append("<h2>时间线 Timeline</h2><div class='timeline'>")
    for moment in moments:
        span = moment.get("span_ms")
        if not span:
            continue
        left = 100 * int(span[0]) / duration
        width = max(0.5, 100 * (int(span[1]) - int(span[0])) / duration)
        out.append(
            f"<a class='{_e(moment['decision'])}' href='#m-{_e(moment['id'])}' "
            f"style='left:{left:.2f}%;width:{width:.2f}%' "
            f"title='{_e(moment['title'])} {_e(_time(span[0]))}–{_e(_time(span[1]))}'>"
            f"{_e(moment['title'])}</a>"
        )
    out.append("</div>")

    out.append("<h2>关键环节 Moments</h2><table><tr><th>环节 Moment</th><th>时间 Time</th>")
    out.append("<th>时长 Duration</th><th>结果 Decision</th><th>原因 Reasons</th></tr>")
    for moment in moments:
        span = moment.get("span_ms")
        when = f"{_time(span[0])}–{_time(span[1])}" if span else "未标记 not marked"
        out.append(
            f"<tr><td><a href='#m-{_e(moment['id'])}'>{_e(moment['title'])}</a> "
            f"<code>{_e(moment['id'])}</code></td><td>{_e(when)}</td>"
            f"<td>{_e(_time(moment.get('duration_ms')))}</td>"
            f"<td class='{_e(moment['decision'])}'>{_e(_DECISION_LABELS.get(moment['decision']))}"
            f"</td><td>{'<br>'.join(_e(r) for r in moment.get('reasons', []))}</td></tr>"
        )
    out.append("</table>")

    for moment in moments:
        out += _moment_html(moment)

    out.append("<h2>模型与阈值 Models and thresholds</h2><table>")
    for name, version in document.get("models", {}).items():
        out.append(f"<tr><th>{_e(name)}</th><td>{_e(version)}</td></tr>")
    for group, values in document.get("thresholds", {}).items():
        text = ", ".join(f"{k} = {v}" for k, v in values.items())
        out.append(f"<tr><th>{_e(group)}</th><td>{_e(text)}</td></tr>")
    values = document.get("values", {})
    text = ", ".join(f"{k} = {v}" for k, v in values.items()) or "–"
    out.append(f"<tr><th>占位值 Values</th><td>{_e(text)}</td></tr>")
    missing = document.get("missing_values") or []
    if missing:
        out.append(f"<tr><th>缺少的值 Missing values</th><td>{_e(', '.join(missing))}</td></tr>")
    out.append("</table>")
    ignored = recording.get("ignored_marks") or []
    if ignored:
        text = ", ".join(ignored)
        out.append(f"<p class='muted'>未用的标记 Marks not in the script: {_e(text)}</p>")
    out.append(f"<p class='muted'>{_e(document.get('format', ''))}</p></body></html>")
    return "\n".join(out) + "\n"


def _moment_html(moment: Mapping[str, Any]) -> list[str]:
    out = [
        f"<div class='moment' id='m-{_e(moment['id'])}'>",
        f"<h3>{_e(moment['title'])} <code>{_e(moment['id'])}</code> "
        f"{_badge(moment['decision'])}</h3>",
    ]
    span = moment.get("span_ms")
    if span:
        out.append(
            f"<p>{_e(_time(span[0]))}–{_e(_time(span[1]))} "
            f"({_e(_time(moment.get('duration_ms')))}; ended by "
            f"{_e(moment.get('span_ended_by'))})</p>"
        )
    if moment.get("reasons"):
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in moment["reasons"]) + "</ul>")
    for line in moment.get("lines", []):
        out.append(
            f"<h3>{_e(_SPEAKER_LABELS.get(line['speaker'], line['speaker']))} "
            f"{_badge(line['decision'])}</h3>"
        )
        out.append(f"<p>应说 Expected: {_e(line['expected'])}</p>")
        heard = "<br>".join(
            f"{_e(_time(s['start_ms']))}–{_e(_time(s['end_ms']))} {_e(s['text'])}"
            for s in line.get("transcript", [])
        )
        out.append(f"<p>听到 Heard:<br>{heard or '<span class=muted>(nothing)</span>'}</p>")
        out.append(
            f"<p class='muted'>语音时长 Speech {_e(_seconds(line['speech_ms']))}, "
            f"minimum {_e(_seconds(line['min_ms']))}</p>"
        )
        if line.get("phrases"):
            out.append(
                "<table><tr><th>短语 Phrase</th><th>类型 Kind</th><th>状态 State</th>"
                "<th>听为 Heard as</th><th>相似度 Similarity</th><th>时间 Time</th></tr>"
            )
            for phrase in line["phrases"]:
                state = (
                    "否定 negated"
                    if phrase["negated"]
                    else "找到 found"
                    if phrase["found"]
                    else "缺失 missing"
                )
                when = (
                    f"{_time(phrase['start_ms'])}–{_time(phrase['end_ms'])}"
                    if phrase.get("start_ms") is not None
                    else ""
                )
                note = f" ({phrase['note']})" if phrase.get("note") else ""
                out.append(
                    f"<tr><td>{_e(phrase['phrase'])}</td><td>{_e(phrase['kind'])}</td>"
                    f"<td>{_e(state)}</td><td>{_e(phrase['heard'])}{_e(note)}</td>"
                    f"<td>{_e(phrase['similarity'])}</td><td>{_e(when)}</td></tr>"
                )
            out.append("</table>")
        alignment = line.get("alignment")
        if alignment:
            out.append(
                f"<p class='muted'>强制对齐 Alignment: {_e(alignment['verdict'])}, mean "
                f"{_e(alignment['mean_logprob'])}, margin {_e(alignment['margin'])}, weakest "
                f"{_e(alignment['weakest_token'])} p={_e(alignment['weakest_probability'])}</p>"
            )
    visibility = moment.get("visibility")
    if visibility:
        required = visibility["required"]
        wanted = (
            f"柜员 teller {'required' if required.get('teller') else 'not required'}, "
            f"客户 customers {required.get('customers')}"
        )
        checks = "; ".join(
            f"{c['who']} ({c['need']}): {c['sampled']} of {c['cells']} samples seen, "
            f"{c['violations']} violations ({c['violation_percent']} %); samples with "
            + (", ".join(f"{k} face(s): {n}" for k, n in c["faces"].items()) or "–")
            for c in visibility.get("checks", [])
        )
        out.append(
            f"<p>画面 Visibility {_badge(visibility['decision'])} {_e(wanted)}. {_e(checks)}</p>"
        )
        if visibility.get("reasons"):
            out.append(
                "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in visibility["reasons"]) + "</ul>"
            )
        if visibility.get("violations"):
            out.append(
                "<ul>"
                + "".join(
                    f"<li>{_e(v['who'])}: {_e(v['problem'])} "
                    f"{_e(_time(v['start_ms']))}–{_e(_time(v['end_ms']))}</li>"
                    for v in visibility["violations"]
                )
                + "</ul>"
            )
    document = moment.get("document")
    if document:
        out.append(
            f"<p>文件展示 Document on screen {_badge(document['decision'])} "
            f"({_e(document['screen_frames'])} screen frames)</p>"
        )
    if moment.get("not_checked"):
        out.append(
            f"<p class='muted'>未检查 Not checked: {_e(', '.join(moment['not_checked']))}</p>"
        )
    out.append("</div>")
    return out
