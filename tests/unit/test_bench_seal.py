"""A short run of the sealing benchmark, so that it cannot rot."""

from __future__ import annotations

import pytest

from bench import seal


async def test_the_sealing_benchmark_runs_and_reports_its_goals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = seal.throughput
    monkeypatch.setattr(seal, "throughput", lambda size: real(size, total=4 * 1024 * 1024))
    results = await seal.run(seconds=2.5)
    assert set(results["throughput_mb_per_s"]) == {"64KiB_writes", "4KiB_writes"}
    assert all(v > 0 for v in results["throughput_mb_per_s"].values())
    session = results["session"]
    assert session["segments"] >= 2  # cut every two seconds, plus the last one
    assert 0 < session["max_media_at_risk_seconds"] <= 5
