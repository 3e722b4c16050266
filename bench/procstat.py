"""Server-side measurements: CPU and memory from /proc, latency from Prometheus histograms.

psutil is not a dependency of vteller, and /proc gives exactly what is needed: utime+stime of a
process (all its threads, so aiortc's decoder and encoder threads count) and its resident set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (0 if it is gone)."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0
    # fields[0] is stat field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the workers of a ``serve --workers N`` supervisor)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return sorted(found)


def total_cpu(pids: Iterable[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU seconds used between two snapshots, by the processes alive in both."""
    return sum(after[pid] - before[pid] for pid in after if pid in before)


def machine() -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


@dataclass
class Histogram:
    """One Prometheus histogram: cumulative counts per upper bound (``inf`` last)."""

    bounds: list[float]
    cumulative: list[float]
    count: float
    total: float

    @classmethod
    def empty(cls) -> Histogram:
        return cls([], [], 0.0, 0.0)

    def __add__(self, other: Histogram) -> Histogram:
        if not self.bounds:
            return other
        if not other.bounds:
            return self
        if self.bounds != other.bounds:
            raise ValueError("histograms with different buckets")
        return Histogram(
            self.bounds,
            [a + b for a, b in zip(self.cumulative, other.cumulative, strict=True)],
            self.count + other.count,
            self.total + other.total,
        )

    def __sub__(self, earlier: Histogram) -> Histogram:
        if not earlier.bounds:
            return self
        return Histogram(
            self.bounds,
            [a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)],
            self.count - earlier.count,
            self.total - earlier.total,
        )

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket, as Prometheus' histogram_quantile does.

        A quantile in the +Inf bucket is reported as the highest finite bound (a lower bound).
        """
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if bound == float("inf"):
                    return lower
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
            lower, below = bound, cumulative
        return lower


def parse_histograms(text: str) -> dict[str, Histogram]:
    found: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        buckets: list[tuple[float, float]] = []
        count = total = 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
        buckets.sort()
        found[family.name] = Histogram(
            [b for b, _ in buckets], [c for _, c in buckets], count, total
        )
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat.

    Everything counts here, including other people's jobs on a shared machine: the report uses
    it to show how quiet the machine was, not to cost the server.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user time
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS
