"""Sealing benchmark: encrypt+hash throughput, CPU per recording session, media at risk.

`python -m bench.seal [--seconds N] [--json]`. Results go to docs/benchmarks.md (Sealing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from recorder.capture import RecordingWriter, SealedSegment
from recorder.container import standard_slots
from recorder.seal.keyring import LocalKeyring
from recorder.seal.sealer import ArchiveSealer
from recorder.seal.stream import SegmentEncryptor

# A two-party session: two VP8 cameras at about 500 kbit/s (20 fps) and two Opus microphones
# at about 32 kbit/s (50 packets/s), as the SFU forwards them.
VIDEO_FRAME = bytes(3125)
AUDIO_FRAME = bytes(80)
SEGMENT_SECONDS = 2.0


def throughput(write_size: int, total: int = 256 * 1024 * 1024) -> float:
    """MB/s of AES-256-GCM STREAM encryption plus both SHA-256s, on one core."""
    encryptor = SegmentEncryptor(os.urandom(32), uuid.uuid4(), 0)
    block = os.urandom(write_size)
    started = time.process_time()
    for _ in range(total // write_size):
        encryptor.update(block)
    encryptor.finalize()
    return total / (time.process_time() - started) / 1e6


async def session_cost(seconds: float, keyring: LocalKeyring) -> dict[str, float]:
    """CPU of one recording (mux + encrypt + hash) fed in real time, and the media at risk."""
    sealer = ArchiveSealer(uuid.uuid4(), keyring)
    unsealed: list[float] = []  # arrival times of packets not yet in a sealed segment
    at_risk = 0.0

    def sealed(_: SealedSegment) -> None:
        unsealed.clear()

    writer = RecordingWriter(sealer, standard_slots(), sealed)
    cpu0, wall0 = time.process_time(), time.monotonic()
    next_cut = SEGMENT_SECONDS
    tick = 0
    while (elapsed := time.monotonic() - wall0) < seconds:
        media_ms = int(elapsed * 1000)
        for slot in (0, 3):  # microphones, every 20 ms
            writer.packet(slot, AUDIO_FRAME, media_ms, True)
        if tick % 2 == 0:  # cameras at 25 fps-ish
            for slot in (1, 4):
                writer.packet(slot, VIDEO_FRAME, media_ms, tick % 100 == 0)
        unsealed.append(time.monotonic())
        at_risk = max(at_risk, time.monotonic() - unsealed[0])
        if elapsed >= next_cut:
            writer.cut(media_ms)
            next_cut += SEGMENT_SECONDS
        tick += 1
        await asyncio.sleep(0.02)
    await writer.close(int(seconds * 1000))
    cpu = time.process_time() - cpu0
    return {
        "cpu_percent_of_a_core": round(100 * cpu / seconds, 2),
        "segments": len(sealer.segments),
        "max_media_at_risk_seconds": round(at_risk, 2),
    }


async def baseline(seconds: float) -> float:
    """CPU of the same feeding loop without the recorder, to subtract."""
    cpu0 = time.process_time()
    for _ in range(int(seconds / 0.02)):
        await asyncio.sleep(0.02)
    return 100 * (time.process_time() - cpu0) / seconds


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version()}


async def run(seconds: float) -> dict[str, Any]:
    with TemporaryDirectory() as keys:
        keyring = LocalKeyring.open(Path(keys) / "keyring.json", create=True)
        print("seal: encrypt+hash throughput ...", flush=True)
        results: dict[str, Any] = {
            "machine": machine(),
            "throughput_mb_per_s": {
                "64KiB_writes": round(throughput(64 * 1024), 1),
                "4KiB_writes": round(throughput(4 * 1024), 1),
            },
        }
        print(f"seal: one recording session for {seconds:.0f} s ...", flush=True)
        idle = await baseline(min(seconds, 5))
        cost = await session_cost(seconds, keyring)
        cost["cpu_percent_of_a_core"] = round(cost["cpu_percent_of_a_core"] - idle, 2)
        results["session"] = cost
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seal", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30, help="recording length to simulate")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = asyncio.run(run(args.seconds))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"machine: {results['machine']}")
    for name, value in results["throughput_mb_per_s"].items():
        print(f"encrypt+hash, {name}: {value} MB/s per core (goal >= 300)")
    session = results["session"]
    print(
        f"sealing one two-party session: {session['cpu_percent_of_a_core']} % of a core (goal <= 5)"
    )
    print(f"media at risk at most: {session['max_media_at_risk_seconds']} s (goal <= 5)")


if __name__ == "__main__":
    main()
