"""Compliance speech benchmark: real-time factor, memory, and the fixtures' decisions.

`python -m bench.compliance [--minutes M] [--json]`. Results go to docs/benchmarks.md (Compliance).

It builds a two-party recording from the committed Mandarin fixtures (tests/fixtures/speech): the
teller's and the customer's microphone tracks, taking turns through the wealth-product moments
that have fixtures (consent, risk disclosure, voluntary confirmation), then unrelated talk, the
whole repeated every 10 minutes (`--script-every`) up to M minutes. Each track is recognised
once (as `vteller compliance analyze` does: in pieces of about 5 minutes cut at quiet points),
then every moment is judged from the part of the transcript inside its span
(a segment crossing a mark is recognised again over its part; forced alignment per line), as
the after-call pipeline will do with `analyze_moment(..., transcripts=...)`. Run it with
`--minutes 30` for the goal itself; shorter runs extrapolate linearly from the real-time factor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from compliance.analyzer import analyze_moment, check_line
from compliance.asr import SAMPLE_RATE, Audio, Segment, WhisperRecognizer, ensure_model, load_wav
from compliance.report import transcribe_track
from compliance.sales_script import Speaker, load_script

SPEECH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech"
# (moment, teller clip, customer clip) in script order.
TURNS = [
    ("consent", "teller_consent.wav", "customer_agree.wav"),
    ("risk_disclosure", "teller_risk_disclosure.wav", "customer_yes.wav"),
    ("voluntary_confirmation", "teller_voluntary_question.wav", "customer_voluntary.wav"),
]
PAUSE_SECONDS = 1.0


def build_call(
    minutes: float, script_every_minutes: float
) -> tuple[Audio, Audio, list[tuple[str, float, float]]]:
    """Teller track, customer track (same clock) and the moments' spans.

    Every `script_every_minutes` the three scripted moments are spoken; the rest of the time
    both parties take turns with unrelated talk (outside any moment), as in a real call where
    the script's moments are a small part of the conversation.
    """
    teller: list[Audio] = []
    customer: list[Audio] = []
    spans: list[tuple[str, float, float]] = []
    clock = 0
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.float32)
    # Talk outside the moments: the non-scripted clips in turn. Not one clip over and over:
    # a window of identical sentences makes Whisper's output repetitive, its compression-ratio
    # check then re-decodes at higher temperatures (measured: a 30-minute run did not finish in
    # 21 minutes), which is an artefact of synthetic data, not of real calls.
    fillers = [
        load_wav(SPEECH / name)
        for name in (
            "unrelated.wav",
            "customer_hesitation.wav",
            "teller_misleading.wav",
            "customer_refusal.wav",
            "teller_voluntary_question.wav",
            "customer_yes.wav",
        )
    ]

    def say(audio: Audio, own: list[Audio], other: list[Audio]) -> int:
        own.extend([audio, pause])
        other.extend([np.zeros_like(audio), pause])
        return len(audio) + len(pause)

    end = minutes * 60 * SAMPLE_RATE
    while clock < end:
        cycle_end = min(end, clock + script_every_minutes * 60 * SAMPLE_RATE)
        for moment, teller_clip, customer_clip in TURNS:
            start = clock
            for clip, own, other in (
                (teller_clip, teller, customer),
                (customer_clip, customer, teller),
            ):
                if clip is not None:
                    clock += say(load_wav(SPEECH / clip), own, other)
            spans.append((moment, start / SAMPLE_RATE, clock / SAMPLE_RATE))
        turn = 0
        while clock < cycle_end:
            own, other = (teller, customer) if turn % 2 == 0 else (customer, teller)
            clock += say(fillers[turn % len(fillers)], own, other)
            turn += 1
    return np.concatenate(teller), np.concatenate(customer), spans


def run(minutes: float, script_every: float, cpu_threads: int) -> dict[str, Any]:
    script = load_script("bank_wealth_product")
    with TemporaryDirectory() as cache:
        started = time.perf_counter()
        recognizer = WhisperRecognizer(ensure_model(Path(cache)), cpu_threads=cpu_threads)
        load_seconds = time.perf_counter() - started

        fixtures = []
        manifest = json.loads((SPEECH / "manifest.json").read_text(encoding="utf-8"))
        for expectation in manifest["expectations"]:
            verdict = check_line(
                recognizer,
                load_wav(SPEECH / expectation["file"]),
                load_script(expectation["script"]),
                expectation["moment"],
                expectation["speaker"],
                expectation.get("values", {}),
            )
            fixtures.append({**expectation, "got": verdict.decision})

        teller, customer, spans = build_call(minutes, script_every)
        audio_seconds = len(teller) / SAMPLE_RATE
        tracks: dict[Speaker, Audio] = {"teller": teller, "customer": customer}
        cpu0, wall0 = time.process_time(), time.perf_counter()
        # Each track is recognised once as the analysis does (in pieces of about 5 minutes cut
        # at quiet points; VAD skips the other party's turns), then every moment is judged from
        # its words inside the moment's span (forced alignment per line).
        transcripts: dict[Speaker, list[Segment]] = {
            "teller": transcribe_track(recognizer, teller),
            "customer": transcribe_track(recognizer, customer),
        }
        recognise_seconds = time.perf_counter() - wall0
        decisions: dict[str, int] = {}
        unexpected: list[dict[str, Any]] = []  # every line of the call is spoken as scripted
        for moment, start, end in spans:
            moment_verdict = analyze_moment(
                recognizer, script, moment, tracks, {}, (start, end), transcripts=transcripts
            )
            for line in moment_verdict.lines:
                decisions[line.decision] = decisions.get(line.decision, 0) + 1
                if line.decision != "pass":
                    heard = "".join(s.text for s in line.transcript)
                    unexpected.append(
                        {
                            "at_s": round(start),
                            "moment": moment,
                            "speaker": line.speaker,
                            "decision": line.decision,
                            "reasons": list(line.reasons),
                            "heard": heard,
                        }
                    )
        total_seconds = time.perf_counter() - wall0
        cpu_seconds = time.process_time() - cpu0
    rtf = total_seconds / audio_seconds
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_end": os.getloadavg()[0],
        "model_version": recognizer.model_version,
        "model_load_seconds": round(load_seconds, 2),
        "call_minutes": round(audio_seconds / 60, 2),
        "tracks": 2,
        "moments_judged": len(spans),
        "line_decisions": decisions,
        "lines_not_passed": unexpected,
        "recognition_seconds": round(recognise_seconds, 1),
        "judging_seconds": round(total_seconds - recognise_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        # Processing time per second of call (both tracks together).
        "rtf_call": round(rtf, 3),
        # Per second of track audio (two tracks per call second).
        "rtf_track": round(rtf / 2, 3),
        "extrapolated_30_min_call_minutes": round(rtf * 30, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "fixtures": fixtures,
        "fixtures_as_expected": all(f["got"] == f["decision"] for f in fixtures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="synthetic call length")
    parser.add_argument(
        "--script-every",
        type=float,
        default=10.0,
        help="minutes between repetitions of the scripted moments (unrelated talk between)",
    )
    parser.add_argument("--threads", type=int, default=2, help="recogniser CPU threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args.minutes, args.script_every, args.threads)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    for key, value in result.items():
        if key != "fixtures":
            print(f"{key}: {value}")
    for fixture in result["fixtures"]:
        mark = "ok " if fixture["got"] == fixture["decision"] else "XX "
        print(
            f"  {mark}{fixture['file']} {fixture['moment']} {fixture['speaker']}: "
            f"{fixture['got']} (expected {fixture['decision']})"
        )


if __name__ == "__main__":
    main()
