"""`python -m bench.media` still runs end to end, so the media benchmark cannot rot.

A tiny run (2 sessions, a few seconds, the naive relay and the real server): it checks that the
benchmark completes, that media flows in both modes and that the JSON report has the keys
docs/benchmarks.md documents. It measures nothing: the numbers of a run this short on a shared
machine mean little, so no threshold is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TOP_KEYS = {
    "schema",
    "started_at",
    "finished_at",
    "command",
    "machine",
    "load_average_start",
    "settings",
    "clip",
    "modes",
    "goals",
}
MODE_KEYS = {"server", "workers", "description", "rounds", "summary", "server_log_problems"}
ROUND_KEYS = {
    "sessions",
    "participants",
    "status",
    "reason",
    "window_seconds",
    "server_cpu_pct",
    "cpu_per_session_pct",
    "client_cpu_pct",
    "machine_busy_pct",
    "recv_video_ratio_min",
    "recv_audio_ratio_min",
    "sent_video_ratio_min",
    "frames_received_video",
    "frames_received_audio",
    "forwarding_delay_ms",
    "e2e_delay_ms",
    "first_frame_s",
    "server_rss_mb",
    "memory_per_session_mb",
    "load_average",
}
SUMMARY_KEYS = {
    "max_sessions_passed",
    "sessions_per_core",
    "cpu_per_session_pct",
    "sessions_per_core_from_cpu",
    "forwarding_delay_ms",
    "first_frame_s",
    "memory_per_session_mb",
    "stopped",
}


def test_media_benchmark_runs_and_reports() -> None:
    command = [
        sys.executable, "-m", "bench.media", "--json",
        "--modes", "naive,encoded,encoded-rec", "--sessions", "2",
        "--duration", "3", "--warmup", "0.5", "--clip-seconds", "1.5", "--client-procs", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)

    assert report.keys() >= TOP_KEYS
    assert report["schema"] == "vteller-bench-media/1"
    assert set(report["modes"]) == {"naive", "encoded", "encoded-rec"}
    for name, mode in report["modes"].items():
        assert mode.keys() >= MODE_KEYS, name
        assert mode["summary"].keys() >= SUMMARY_KEYS, name
        (round_,) = mode["rounds"]
        assert round_.keys() >= ROUND_KEYS, name
        assert round_["sessions"] == 2 and round_["participants"] == 4, round_
        # Media flowed both ways in every session: each participant's peer video and audio.
        assert round_["frames_received_video"] > 0, (name, round_["reason"])
        assert round_["frames_received_audio"] > 0, (name, round_["reason"])
        assert round_["first_frame_s"]["p50"] is not None, name
    encoded = report["modes"]["encoded"]["rounds"][0]
    # The real server's /metrics was scraped: frames were forwarded during the window.
    assert encoded["forwarding_delay_ms"]["samples"] > 0
    # Forwarded frames are byte-identical, so the clients matched them to their send times.
    assert encoded["e2e_delay_ms"]["samples"] > 0
    assert any(g["goal"].startswith("forwarding delay") for g in report["goals"])
    # With recording, every session was recorded (consent given) without errors.
    recorded = report["modes"]["encoded-rec"]["rounds"][0]
    assert recorded["errors"] == [], recorded["errors"]
