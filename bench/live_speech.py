"""Live speech benchmark: how long after the teller stops talking the "not yet heard" verdict is.

`python -m bench.live_speech [--json] [--threads 1] [--beam 5]`. Results go to
docs/benchmarks.md (Live speech).

Each committed teller clip (tests/fixtures/speech/teller_*.wav), between half a second of quiet
before and a second after, goes through what the server does with a teller's microphone: the
loudness segmenter (server/sfu/decoded_audio.py) in 20 ms blocks, then the recogniser as the
server configures it (server/recording/live_speech.py: Whisper base int8, one thread, beam 5),
then the moment's required phrases (`Hearing`). The latency of one utterance is the time from its
last loud block to the segmenter releasing it (the pause that ends an utterance), plus one poll
interval (frames are decoded in batches), plus the recognition and the matching, measured here.
The network, the Opus decoding (about 50 µs a frame) and sending the message are left out.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from compliance.asr import SAMPLE_RATE, WhisperRecognizer, ensure_model, load_wav
from compliance.sales_script import load_script
from server.recording.live_speech import Hearing, ListenerConfig
from server.sfu.decoded_audio import Segmenter, Utterance, VadConfig

SPEECH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech"
BLOCK = SAMPLE_RATE // 50
# The moment each teller clip is read in (the misleading one pretends to be the disclosure).
MOMENTS = {
    "teller_consent.wav": "consent",
    "teller_identity.wav": "teller_identity",
    "teller_customer_identity.wav": "customer_identity",
    "teller_product_introduction.wav": "product_introduction",
    "teller_risk_disclosure.wav": "risk_disclosure",
    "teller_risk_disclosure_noise10db.wav": "risk_disclosure",
    "teller_misleading.wav": "risk_disclosure",
    "teller_risk_tolerance.wav": "risk_tolerance",
    "teller_voluntary_question.wav": "voluntary_confirmation",
    "teller_signature.wav": "signature",
    "teller_closing.wav": "closing",
}


def _segment(audio: np.ndarray, config: VadConfig) -> tuple[Utterance, float]:
    """The clip's utterance and when (media seconds) the segmenter released it."""
    segmenter = Segmenter(config)
    for i in range(0, len(audio), BLOCK):
        utterance = segmenter.push(audio[i : i + BLOCK], i / SAMPLE_RATE)
        if utterance is not None:
            return utterance, (i + BLOCK) / SAMPLE_RATE
    last = segmenter.flush()
    if last is None:
        raise SystemExit("no utterance found in a clip: is the fixture silent?")
    return last, len(audio) / SAMPLE_RATE


def run(threads: int, beam: int) -> dict[str, Any]:
    vad = VadConfig()
    script = load_script("bank_wealth_product")
    moments = {m.id: m for m in script.moments}
    values = {"bank_name": "示范银行", "teller_name": "王芳", "product_name": "稳盈一号"}
    with TemporaryDirectory() as cache:
        started = time.perf_counter()
        recognizer = WhisperRecognizer(
            ensure_model(Path(cache)), cpu_threads=threads, beam_size=beam
        )
        load_seconds = time.perf_counter() - started
        rows = []
        latencies = []
        for clip, moment in MOMENTS.items():
            speech = load_wav(SPEECH / clip)
            quiet_before = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
            quiet_after = np.zeros(SAMPLE_RATE, dtype=np.float32)
            utterance, released = _segment(np.concatenate([quiet_before, speech, quiet_after]), vad)
            pause = released - utterance.ended_at
            began = time.perf_counter()
            text = "".join(s.text for s in recognizer.transcribe(utterance.audio))
            hearing = Hearing(moments, values)
            hearing.heard([moment], "teller", text, 0)
            recognised = time.perf_counter() - began
            missing = hearing.unheard.get((moment, "teller"), (0, []))[1]
            latencies.append(round(pause + vad.poll_seconds + recognised, 2))
            rows.append(
                {
                    "clip": clip,
                    "moment": moment,
                    "speech_s": round(len(speech) / SAMPLE_RATE, 2),
                    "pause_s": round(pause, 2),
                    "recognition_s": round(recognised, 2),
                    "latency_s": latencies[-1],
                    "heard": text,
                    "missing": missing,
                }
            )
    return {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "threads": threads,
        "beam": beam,
        "model_load_s": round(load_seconds, 2),
        "clips": rows,
        "latency_median_s": round(statistics.median(latencies), 2),
        "latency_max_s": max(latencies),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    defaults = ListenerConfig()
    parser.add_argument("--threads", type=int, default=defaults.cpu_threads)
    parser.add_argument("--beam", type=int, default=defaults.beam_size)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    result = run(args.threads, args.beam)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
        return
    print(f"model load {result['model_load_s']} s, {args.threads} thread(s), beam {args.beam}")
    for row in result["clips"]:
        print(
            f"  {row['clip']:40} {row['speech_s']:5} s speech -> {row['latency_s']:5} s "
            f"(recognition {row['recognition_s']} s); missing: {row['missing'] or 'none'}"
        )
    print(f"latency median {result['latency_median_s']} s, max {result['latency_max_s']} s")


if __name__ == "__main__":
    main()
