"""Whole after-call analysis benchmark: a recorded call, analysed as the server does it.

`python -m bench.analysis [--minutes M] [--json]`. Results go to docs/benchmarks.md (Compliance,
"End to end").

It writes the recording the recorder would have written (its own WebM muxer and track layout,
docs/archive-format.md) for a two-party call of M minutes: the teller's and the customer's
microphones as Opus, going through the whole wealth-product sale (every moment of the script,
from the committed fixtures) with unrelated talk between the moments, and both cameras as VP8
at 640x480, 20 frames a second (the pages' camera constraints), each showing a face, and the
teller's screen sharing a document (1280x720, 5 frames a second), each video with a keyframe
every 10 s as the recorder asks for them. A manifest marks the moments. Then
`compliance.report.analyze_recording` runs on it with the real recogniser and face detector:
Opus decoding, recognition, face sampling and judging, everything the analysis job does after
it has verified and decrypted the archive.

Each video loops one encoded 10-second stretch (a face with a little motion; every loop starts
with its keyframe), so building a 30-minute recording does not take 30 minutes of encoding.
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import av
import numpy as np

from compliance.asr import SAMPLE_RATE, Audio, WhisperRecognizer, ensure_model, load_wav
from compliance.recording import MediaTrack, Recording, open_decrypted
from compliance.report import YuNetFaceCounter, analyze_recording, choose_script
from recorder.container import WebmMuxer, standard_slots
from tests.fixtures.idcards import load_face
from tests.fixtures.liveness import webcam_frame
from tests.fixtures.manifests import CUSTOMER, TELLER, two_party_manifest

FPS = 20
WIDTH, HEIGHT = 640, 480
SCREEN_FPS = 5  # the teller shares the product document for the whole call
KEYFRAME_SECONDS = 10
SPEECH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech"
# Talk between the moments: each party goes through all of its clips in turn. Varied on
# purpose: a track repeating two sentences makes Whisper's output repetitive and its
# compression-ratio check re-decode at higher temperatures (measured: 539 s for such a teller
# track), an artefact of synthetic data that real conversation does not have.
FILLERS = {
    "teller": sorted(p.name for p in SPEECH.glob("teller_*.wav")),
    "customer": [*sorted(p.name for p in SPEECH.glob("customer_*.wav")), "unrelated.wav"],
}


def _encoded_loop(image: np.ndarray, fps: int, sway: bool) -> list[tuple[bytes, int, bool]]:
    """KEYFRAME_SECONDS of `image` as VP8: (frame, ms from the loop's start, keyframe)."""
    height, width = image.shape[:2]
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.bit_rate = 800_000
    codec.gop_size = fps * KEYFRAME_SECONDS * 2  # only the first frame is a keyframe
    codec.options = {"deadline": "realtime", "cpu-used": "8"}
    rng = np.random.default_rng(1)
    frames: list[tuple[bytes, int, bool]] = []
    for index in range(fps * KEYFRAME_SECONDS):
        picture = image
        if sway:  # a person is never perfectly still: a slight sway and sensor noise
            shifted = np.roll(image, int(3 * np.sin(index / 7)), axis=1)
            picture = np.clip(shifted + rng.normal(0, 2, shifted.shape), 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
        frame.pts = index
        for packet in codec.encode(frame):
            frames.append((bytes(packet), (packet.pts or 0) * 1000 // fps, packet.is_keyframe))
    for packet in codec.encode(None):
        frames.append((bytes(packet), (packet.pts or 0) * 1000 // fps, packet.is_keyframe))
    assert frames[0][2], "the loop must start with a keyframe"
    return frames


def _camera(photo: str) -> np.ndarray:
    import cv2

    frame = webcam_frame(load_face(photo))
    return cv2.resize(frame, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def _document() -> np.ndarray:
    """A product document on the teller's screen: a white page with lines of 'text'."""
    page = np.full((720, 1280, 3), 255, dtype=np.uint8)
    for row in range(80, 680, 28):
        page[row : row + 12, 120 : 120 + 40 * (row % 25 + 1)] = 40
    return page


def _opus(audio: Audio) -> Iterator[tuple[bytes, int]]:
    """The track as 20 ms Opus packets at 48 kHz, as browsers send it: (packet, ms)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 48000, "mono", "s16"
    codec.bit_rate = 32000
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    step = SAMPLE_RATE // 50
    for start in range(0, len(audio) - step + 1, step):
        chunk = (audio[start : start + step] * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        for resampled in resampler.resample(frame):
            for packet in codec.encode(resampled):
                yield bytes(packet), (packet.pts or 0) * 1000 // 48000


class _File:
    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()


def write_recording(
    path: Path, teller: Audio, customer: Audio, duration_ms: int
) -> dict[str, float]:
    """The recorder's WebM for the call; seconds spent encoding and muxing."""
    slots = standard_slots()
    index = {(slot.role, slot.source): n for n, slot in enumerate(slots)}
    started = time.perf_counter()
    loops = {
        ("teller", "camera"): _encoded_loop(_camera("biden.jpg"), FPS, sway=True),
        ("customer", "camera"): _encoded_loop(_camera("obama.jpg"), FPS, sway=True),
        ("teller", "screen"): _encoded_loop(_document(), SCREEN_FPS, sway=False),
    }
    packets: list[tuple[int, int, bytes, bool]] = []  # (ms, slot, data, keyframe)
    for role, audio in (("teller", teller), ("customer", customer)):
        slot = index[(role, "microphone")]
        packets += [(ms, slot, data, True) for data, ms in _opus(audio)]
    for key, loop in loops.items():
        slot = index[key]
        for base in range(0, duration_ms, KEYFRAME_SECONDS * 1000):
            packets += [
                (base + ms, slot, data, key) for data, ms, key in loop if base + ms < duration_ms
            ]
    encoded = time.perf_counter() - started
    packets.sort(key=lambda p: (p[0], p[1]))
    sink = _File(path)
    muxer = WebmMuxer(sink, slots)
    for ms, slot, data, keyframe in packets:
        muxer.write(slot, data, ms, keyframe)
    muxer.close()
    sink.close()
    return {"encode_seconds": encoded, "mux_seconds": time.perf_counter() - started - encoded}


def write_manifest(path: Path, spans: list[tuple[str, float, float]]) -> None:
    owners = {"teller": TELLER, "customer": CUSTOMER}
    manifest = two_party_manifest(
        session_id="s_bench",
        business="wealth",
        marks=[
            (f"{moment}.{edge}", int(at * 1000))
            for moment, start, end in spans
            for edge, at in (("start", start), ("end", end))
        ],
        tracks=[
            (str(n), owners[slot.role], slot.source)
            for n, slot in enumerate(standard_slots())
            if (slot.role in owners and slot.source in ("microphone", "camera"))
            or (slot.role, slot.source) == ("teller", "screen")
        ],
        recorder_version="bench",
    )
    path.write_bytes(manifest.canonical_bytes())


def build_sale(minutes: float) -> tuple[Audio, Audio, list[tuple[str, float, float]]]:
    """The whole wealth-product sale (every moment, tests/fixtures/speech "whole_sale"),
    its moments spread evenly over the call with unrelated talk between them."""
    sale = json.loads((SPEECH / "manifest.json").read_text(encoding="utf-8"))["whole_sale"]
    teller: list[Audio] = []
    customer: list[Audio] = []
    spans: list[tuple[str, float, float]] = []
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    fillers = {who: [load_wav(SPEECH / name) for name in names] for who, names in FILLERS.items()}
    clock = turn = 0

    def say(audio: Audio, own: list[Audio], other: list[Audio]) -> None:
        nonlocal clock
        own.extend([audio, pause])
        other.extend([np.zeros_like(audio), pause])
        clock += len(audio) + len(pause)

    steps = sale["moments"]
    every = minutes * 60 * SAMPLE_RATE / len(steps)
    for position, step in enumerate(steps):
        start = clock
        for clip, own, other in (
            (step["teller"], teller, customer),
            (step["customer"], customer, teller),
        ):
            if clip is not None:
                say(load_wav(SPEECH / clip), own, other)
        spans.append((step["moment"], start / SAMPLE_RATE, clock / SAMPLE_RATE))
        while clock < (position + 1) * every:
            who, own, other = (
                ("teller", teller, customer) if turn % 2 == 0 else ("customer", customer, teller)
            )
            say(fillers[who][turn // 2 % len(fillers[who])], own, other)
            turn += 1
    return np.concatenate(teller), np.concatenate(customer), spans


def _faces_everywhere(recording: Recording, faces: YuNetFaceCounter) -> float:
    """Seconds to sample both cameras over the whole call (as before windows): for comparison."""
    cameras = [t for role in ("teller", "customer") if (t := recording.track(role, "camera"))]

    def count(_track: MediaTrack, _ms: int, bgr: np.ndarray) -> None:
        faces.count(bgr)

    started = time.perf_counter()
    recording.sample_video(cameras, 1000, count)
    return time.perf_counter() - started


def run(minutes: float, cpu_threads: int, compare: bool) -> dict[str, Any]:
    teller, customer, spans = build_sale(minutes)
    duration_ms = len(teller) * 1000 // SAMPLE_RATE
    stages: dict[str, float] = {}
    with TemporaryDirectory() as work:
        webm, manifest_path = Path(work) / "recording.webm", Path(work) / "manifest.json"
        building = write_recording(webm, teller, customer, duration_ms)
        write_manifest(manifest_path, spans)
        del teller, customer
        recognizer = WhisperRecognizer(ensure_model(Path(work) / "models"), cpu_threads=cpu_threads)
        faces = YuNetFaceCounter()
        started: dict[str, float] = {}

        def progress(stage: str, fraction: float) -> None:
            now = time.perf_counter()
            started.setdefault(stage, now)
            if fraction >= 1.0:
                stages[stage] = round(now - started[stage], 1)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        with open_decrypted(webm, manifest_path) as recording:
            values = json.loads((SPEECH / "manifest.json").read_text(encoding="utf-8"))[
                "whole_sale"
            ]["values"]
            choice = choose_script(recording.manifest, values=values)
            report = analyze_recording(recording, choice, recognizer, faces, progress=progress)
            total = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            everywhere = _faces_everywhere(recording, faces) if compare else None
        size_mb = webm.stat().st_size / 1e6
    marked_seconds = sum(end - start for _, start, end in spans)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_end": os.getloadavg()[0],
        "call_minutes": round(duration_ms / 60000, 2),
        "recording_mb": round(size_mb, 1),
        "video": f"2 cameras VP8 {WIDTH}x{HEIGHT} {FPS} fps, screen 1280x720 {SCREEN_FPS} fps, "
        f"keyframe every {KEYFRAME_SECONDS} s",
        "build_seconds": {k: round(v, 1) for k, v in building.items()},
        "marked_moments": len(spans),
        "marked_minutes": round(marked_seconds / 60, 2),
        "stage_seconds": stages,
        "total_seconds": round(total, 1),
        "total_minutes": round(total / 60, 2),
        "cpu_seconds": round(cpu, 1),
        "rtf_call": round(total / (duration_ms / 1000), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "faces_over_the_whole_call_seconds": None if everywhere is None else round(everywhere, 1),
        "decision": report["decision"],
        "moment_decisions": {m["id"]: m["decision"] for m in report["moments"]},
        "not_passed": {m["id"]: m["reasons"] for m in report["moments"] if m["decision"] != "pass"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="recorded call length")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time face sampling over the whole call (what the analysis did before it "
        "sampled only the marked moments)",
    )
    parser.add_argument("--threads", type=int, default=2, help="recogniser CPU threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args.minutes, args.threads, args.compare)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
