"""The speech and analysis benchmarks still run end to end, so they cannot rot (one went stale
once: new fixtures needed placeholder values it did not pass). Tiny runs; no timing is asserted:
the numbers of runs this short on a shared machine mean little (docs/benchmarks.md has the real
ones).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", *args, "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_the_compliance_benchmark_runs_and_judges_every_fixture_as_expected() -> None:
    report = _bench("bench.compliance", "--minutes", "0.5", "--script-every", "0.5")
    assert report["fixtures_as_expected"], [
        (f["file"], f["moment"], f["decision"], f["got"])
        for f in report["fixtures"]
        if f["got"] != f["decision"]
    ]
    assert report["moments_judged"] == 3
    assert report["line_decisions"] == {"pass": 6}, report["lines_not_passed"]


def test_the_live_speech_benchmark_runs_and_hears_the_disclosure() -> None:
    report = _bench("bench.live_speech")
    clips = {row["clip"]: row for row in report["clips"]}
    assert clips["teller_risk_disclosure.wav"]["missing"] == []
    assert clips["teller_misleading.wav"]["missing"] == ["理财非存款", "产品有风险", "投资须谨慎"]
    for row in report["clips"]:
        assert row["pause_s"] >= 0.6 and row["latency_s"] > row["recognition_s"], row


def test_the_whole_analysis_benchmark_runs_and_the_recorded_sale_passes() -> None:
    report = _bench("bench.analysis", "--minutes", "1", "--compare")
    assert report["decision"] == "pass", report["not_passed"]
    assert report["marked_moments"] == 9
    assert set(report["stage_seconds"]) >= {"transcribing teller", "faces", "judging"}
    assert report["faces_over_the_whole_call_seconds"] is not None
