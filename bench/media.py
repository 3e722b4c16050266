"""Media-plane benchmark: how many two-party video sessions one server core carries.

``python -m bench.media --help``; method and results in docs/benchmarks.md ("Media plane").

For every mode (a server configuration) and a rising series of session counts, this process
starts the server as a subprocess, starts load-generator processes (``bench.loadgen``) that join
that many teller+customer sessions sending pre-encoded VP8 640x480 20 fps + Opus, lets the media
settle, then measures a window: frames received versus frames sent per participant, server CPU
and memory from /proc (server processes only: the clients run in their own processes), the
server's forwarding-delay histogram from /metrics, and time to first frame at the clients. A
mode's series stops at the first round that fails (or that the clients themselves cannot keep
up with). This process only orchestrates and sleeps, so it adds no load of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.clip import FPS, make_clip
from bench.procstat import (
    Histogram,
    children,
    cpu_delta,
    load_average,
    machine,
    machine_busy,
    parse_histograms,
    rss_bytes,
    total_cpu,
)

SCHEMA = "vteller-bench-media/1"
DEFAULT_SESSIONS = "1,2,4,8,12,16,24,32,48,64"
DEFAULT_MODES = "naive,encoded,encoded-rec,encoded-2w"
BENCH_USER = "bench-teller"
# Every participant must receive at least this share of the frames its peer sent in the window.
MIN_RECEIVED = 0.99
# Below this share of the nominal 20 fps sent, the load generator (not the server) was too slow.
MIN_SENT = 0.99
# A server process using this much of a core is saturated (its event loop is one thread).
SERVER_SATURATED_PCT = 90.0
# p95 event-loop lag of a load generator beyond which frame loss is blamed on the clients.
CLIENT_LAG_LIMIT_MS = 50.0
DELAY = "vteller_forwarding_delay_seconds"
LOOP_LAG = "vteller_event_loop_lag_seconds"

# Goals the results are reported against (docs/benchmarks.md); nothing is asserted.
GOALS = {
    "sessions_per_core": 25.0,
    "speedup_over_naive": 10.0,
    "forwarding_delay_p95_ms": 20.0,
    "first_frame_p95_s": 1.0,
    "memory_per_session_mb": 30.0,
    "multi_worker_efficiency": 0.9,
}
# A mode's `stopped` when no count failed: its capacity is at least the largest count run.
SERIES_EXHAUSTED = "series exhausted (all rounds passed)"


@dataclass(frozen=True)
class ModeSpec:
    """One server configuration to benchmark."""

    name: str
    server: str  # "naive" (bench/naive_relay.py) or "vteller" (python -m server serve)
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)  # extra VTELLER_* settings
    description: str = ""
    record: bool = False  # every session is dual-recorded (the teller starts it, consent given)


def mode_spec(name: str) -> ModeSpec:
    if name == "naive":
        return ModeSpec(name, "naive", 1, description="aiortc MediaRelay: decode + re-encode")
    if name == "encoded":
        return ModeSpec(name, "vteller", 1, description="vteller, encoded forwarding, 1 worker")
    if name == "encoded-rec":
        return ModeSpec(
            name,
            "vteller",
            1,
            description="vteller, encoded forwarding + dual recording",
            record=True,
            # Per-session costs only. The after-call analysis of earlier rounds' recordings would
            # run inside later rounds' windows: a batch job, measured by bench.analysis. Live
            # speech is one recogniser per worker, busy back to back on this clip's endless
            # sound: a bounded per-worker cost, measured by bench.live_speech. The live face
            # checks are per camera and stay on.
            env={"VTELLER_COMPLIANCE_ANALYSIS": "false", "VTELLER_LIVE_SPEECH": "false"},
        )
    if match := re.fullmatch(r"encoded-(\d+)w", name):
        workers = int(match.group(1))
        return ModeSpec(
            name, "vteller", workers, description=f"vteller, encoded forwarding, {workers} workers"
        )
    raise ValueError(f"unknown mode {name!r} (naive, encoded, encoded-rec, encoded-<N>w)")


def progress(began: float, text: str) -> None:
    print(f"[{time.monotonic() - began:7.1f} s] {text}", file=sys.stderr, flush=True)


def free_port(consecutive: int = 1) -> int:
    """A port with ``consecutive`` free ports from it (workers take base, base+1, ...)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        try:
            for offset in range(1, consecutive):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue


class Server:
    """The server under test, as subprocesses on loopback."""

    def __init__(self, spec: ModeSpec, workdir: Path, store_env: dict[str, str]) -> None:
        self.spec = spec
        self.store_env = store_env
        self.dir = workdir / spec.name
        self.dir.mkdir(parents=True)
        self.port = free_port(spec.workers)
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(18)
        self.token = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "server.log"
        self._log = self.log_path.open("wb")

    @property
    def worker_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port + i}" for i in range(self.spec.workers)]

    def _env(self) -> dict[str, str]:
        return dict(os.environ) | {
            "VTELLER_DATA_DIR": str(self.dir / "data"),
            "VTELLER_ICE_HOST_ADDRESSES": json.dumps(["127.0.0.1"]),
            "VTELLER_ICE_PEER_NETWORKS": json.dumps(["127.0.0.1/32"]),
            "VTELLER_LOG_LEVEL": "INFO",
            # The benchmark looks for a worker's ceiling: admission control must not set it.
            "VTELLER_WORKER_MAX_SESSIONS": "0",
            **self.store_env,
            **self.spec.env,
        }

    async def start(self) -> None:
        if self.spec.server == "naive":
            command = [sys.executable, "-m", "bench.naive_relay", "--port", str(self.port)]
        else:
            data = self.dir / "data"
            data.mkdir(mode=0o700)
            # Written before start: with --workers N every worker would otherwise generate the
            # token file at the same moment (see the report in docs/benchmarks.md).
            self.token = secrets.token_urlsafe(32)
            token_file = data / "metrics.token"
            token_file.touch(mode=0o600)
            token_file.write_text(self.token)
            await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "server",
                    "admin",
                    "create-user",
                    "--username",
                    BENCH_USER,
                    "--role",
                    "teller",
                    "--password-stdin",
                ],
                input=(self.password + "\n").encode(),
                env=self._env(),
                check=True,
                capture_output=True,
            )
            command = [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--workers",
                str(self.spec.workers),
                "--port",
                str(self.port),
            ]
        self.process = await asyncio.to_thread(
            subprocess.Popen, command, env=self._env(), stdout=self._log, stderr=subprocess.STDOUT
        )
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            for url in self.worker_urls:
                while True:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"server exited; see {self.log_path}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url + "/healthz") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.2)

    def pids(self) -> list[int]:
        """The supervisor (or single process) and its worker processes."""
        assert self.process is not None
        return [self.process.pid, *children(self.process.pid)]

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    async def scrape(self) -> tuple[dict[str, Histogram], float]:
        """Histograms summed over workers, and the live session count."""
        if self.spec.server != "vteller":
            return {}, 0.0
        merged: dict[str, Histogram] = {}
        sessions = 0.0
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            for url in self.worker_urls:
                async with http.get(url + "/metrics") as response:
                    text = await response.text()
                    if response.status != 200:
                        raise RuntimeError(f"{url}/metrics: {response.status} {text[:200]}")
                for name, histogram in parse_histograms(text).items():
                    merged[name] = merged.get(name, Histogram.empty()) + histogram
                match = re.search(r"^vteller_sessions (\S+)$", text, re.MULTILINE)
                sessions += float(match.group(1)) if match else 0.0
        return merged, sessions

    async def settle(self, within: float = 15.0) -> None:
        """Wait until the previous round's sessions are gone from the server."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.spec.server != "vteller":
                await asyncio.sleep(2.0)  # the relay closes a session when its sockets close
                return
            _, live = await self.scrape()
            if live == 0:
                await asyncio.sleep(1.0)
                return
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def problems(self, limit: int = 12) -> list[str]:
        """Errors, tracebacks and media failures in the server's log (for the report)."""
        found: list[str] = []
        pattern = re.compile(
            r'Traceback|"level": ?"(error|critical|warning)"|\bERROR\b|\bWARNING\b|media_failed'
        )
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if pattern.search(line):
                    found.append(line[:300])
        counted = [f"{len(found)} matching log lines"] if found else []
        return counted + found[:limit]


REPO = Path(__file__).resolve().parent.parent


class ArchiveStore:
    """A throwaway MinIO for the vteller modes (the server needs an archive store to start).

    Started with infra/minio.sh in the run's working directory unless ``VTELLER_S3_*`` is
    already set. It idles while nothing is recorded; it is not one of the measured server
    processes (recording modes, when added, should report its CPU separately).
    """

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "minio"
        self.port = free_port(2)  # S3 API and console
        self.env: dict[str, str] = {}
        self.started = False

    async def _script(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "bash",
            str(REPO / "infra" / "minio.sh"),
            *args,
            "--data-dir",
            str(self.dir),
            "--port",
            str(self.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"infra/minio.sh {args[0]} failed: {err.decode()[-500:]}")
        return out.decode()

    async def start(self) -> dict[str, str]:
        if os.environ.get("VTELLER_S3_ACCESS_KEY") or os.environ.get("VTELLER_STORE__ACCESS_KEY"):
            return {}
        await self._script("start")
        self.started = True
        for line in (await self._script("env")).splitlines():
            if match := re.fullmatch(r"export (VTELLER_S3_\w+)=(.*)", line.strip()):
                self.env[match.group(1)] = shlex.split(match.group(2))[0]
        return self.env

    async def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                await self._script("stop")


class Client:
    """One load-generator process and its line protocol (see bench/loadgen.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def spawn(cls, config: dict[str, Any], log: Path) -> Client:
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadgen",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=64 << 20,  # a result line carries every end-to-end delay sample
            )
        client = cls(process)
        await client.send(config)
        return client

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()

    async def expect(self, event: str, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"load generator exited (code {self.process.returncode})")
                message: dict[str, Any] = json.loads(line)
                if message.get("event") == event:
                    return message

    async def finish(self) -> None:
        with contextlib.suppress(Exception):
            await self.send({"cmd": "quit"})
        try:
            await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _quantiles(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * scale, digits)

    return {"p50": pick(0.5), "p95": pick(0.95), "max": round(ordered[-1] * scale, digits)}


async def run_round(
    server: Server, sessions: int, args: argparse.Namespace, clip_path: Path, began: float
) -> dict[str, Any]:
    name = server.spec.name
    procs = max(1, min(args.client_procs, sessions))
    shares = [sessions // procs + (1 if i < sessions % procs else 0) for i in range(procs)]
    ready_timeout = args.ready_timeout or 20 + 1.5 * sessions
    progress(began, f"{name}: {sessions} sessions: connecting ({procs} client processes)")
    rss_idle = server.rss()
    load_before = load_average()
    clients: list[Client] = []
    first = 0
    for i, share in enumerate(shares):
        config = {
            "target": server.spec.server,
            "url": server.url,
            "username": BENCH_USER,
            "password": server.password,
            "sessions": share,
            "first_index": first + 100_000 * args.round_id,
            "clip": str(clip_path),
            "concurrency": args.concurrency,
            "ready_timeout": ready_timeout,
            "nice": args.client_nice,
            "record": server.spec.record,
        }
        first += share
        clients.append(await Client.spawn(config, server.dir / f"clients-{sessions}-{i}.log"))
    try:
        readies = await asyncio.gather(*(c.expect("ready", ready_timeout + 120) for c in clients))
        setup = max(r["setup_seconds"] for r in readies)
        missing = [m for r in readies for m in r["missing_media"]]
        progress(
            began,
            f"{name}: {sessions} sessions: connected in {setup:.1f} s"
            + (f", {len(missing)} participants without media" if missing else "")
            + f"; warm-up {args.warmup:g} s, measuring {args.duration:g} s",
        )
        await asyncio.sleep(args.warmup)
        client_pids = [c.process.pid for c in clients]
        hist_before, _ = await server.scrape()
        cpu_before = total_cpu(server.pids())
        client_cpu_before = total_cpu(client_pids)
        busy_before = machine_busy()
        t0 = time.monotonic()
        for c in clients:
            await c.send({"cmd": "start"})
        await asyncio.gather(*(c.expect("started", 30) for c in clients))
        remaining = args.duration
        while remaining > 0:
            step = min(10.0, remaining)
            await asyncio.sleep(step)
            remaining -= step
            if remaining > 0:
                progress(began, f"{name}: {sessions} sessions: measuring, {remaining:g} s left")
        for c in clients:
            await c.send({"cmd": "stop"})
        results = await asyncio.gather(*(c.expect("result", 60) for c in clients))
        elapsed = time.monotonic() - t0
        cpu_after = total_cpu(server.pids())
        client_cpu_after = total_cpu(client_pids)
        busy_after = machine_busy()
        hist_after, _ = await server.scrape()
        rss_load = server.rss()
    finally:
        await asyncio.gather(*(c.finish() for c in clients))
    workers_restarted = set(cpu_after) != set(cpu_before)
    return summarise_round(
        server=server,
        sessions=sessions,
        procs=procs,
        results=results,
        missing=missing,
        setup_seconds=setup,
        elapsed=elapsed,
        server_cpu=cpu_delta(cpu_before, cpu_after),
        server_cpu_by_process=[
            round((cpu_after[pid] - cpu_before[pid]) / elapsed * 100, 1)
            for pid in sorted(cpu_after)
            if pid in cpu_before
        ],
        client_cpu=cpu_delta(client_cpu_before, client_cpu_after),
        machine_busy_pct=(busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1]) * 100,
        histograms={k: hist_after[k] - hist_before.get(k, Histogram.empty()) for k in hist_after},
        rss_idle=rss_idle,
        rss_load=rss_load,
        load=load_before,
        workers_restarted=workers_restarted,
    )


def summarise_round(
    *,
    server: Server,
    sessions: int,
    procs: int,
    results: list[dict[str, Any]],
    missing: list[str],
    setup_seconds: float,
    elapsed: float,
    server_cpu: float,
    server_cpu_by_process: list[float],
    client_cpu: float,
    machine_busy_pct: float,
    histograms: dict[str, Histogram],
    rss_idle: int,
    rss_load: int,
    load: tuple[float, float, float],
    workers_restarted: bool,
) -> dict[str, Any]:
    people = [p for r in results for p in r["participants"]]
    window = statistics.mean(r["window_seconds"] for r in results)
    nominal = window * FPS
    video = [p["recv_video"] / max(1, p["peer_sent_video"]) for p in people]
    audio = [p["recv_audio"] / max(1, p["peer_sent_audio"]) for p in people]
    sent = [p["sent_video"] / nominal for p in people]
    first = [p["first_frame_seconds"] for p in people if p["first_frame_seconds"] is not None]
    e2e = [d for r in results for d in r["e2e_delay_seconds"]]
    lags = [r["client_loop_lag_p95"] for r in results if r["client_loop_lag_p95"] is not None]
    errors = sorted({e for p in people for e in p["errors"]})
    delay = histograms.get(DELAY, Histogram.empty())
    loop_lag = histograms.get(LOOP_LAG, Histogram.empty())
    server_pct = server_cpu / elapsed * 100
    min_video, min_audio = min(video, default=0.0), min(audio, default=0.0)
    min_sent = min(sent, default=0.0)
    # Who fell behind: a starved load generator leaves received packets unread in its socket
    # buffers, which looks like loss. Blame the clients only if their event loop lagged more
    # than CLIENT_LAG_LIMIT and more than the server's (unknown for the naive relay).
    client_lag_ms = (max(lags) * 1000) if lags else 0.0
    server_lag = loop_lag.quantile(0.95)
    server_lag_ms = None if server_lag is None else server_lag * 1000
    client_lagged = client_lag_ms > CLIENT_LAG_LIMIT_MS and (
        server_lag_ms is None or server_lag_ms < client_lag_ms
    )

    busiest = max(server_cpu_by_process, default=0.0)
    received_all = min_video >= MIN_RECEIVED and min_audio >= MIN_RECEIVED
    if not received_all and busiest >= SERVER_SATURATED_PCT:
        # Checked first: a saturated server also starves the clients of the shared cores, and
        # their small shortfall must not hide the server's.
        status, reason = (
            "fail",
            f"server saturated ({busiest:g} % of a core in one process): a participant "
            f"received {min_video:.1%} of video / {min_audio:.1%} of audio frames",
        )
    elif min_sent < MIN_SENT:
        status, reason = (
            "client-limited",
            (f"a client sent only {min_sent:.1%} of {FPS} fps: the load generator is saturated"),
        )
    elif missing:
        status, reason = "fail", f"{len(missing)} participants got no media: {missing[0]}"
    elif (min_video < MIN_RECEIVED or min_audio < MIN_RECEIVED) and client_lagged:
        status, reason = (
            "client-limited",
            f"a participant received {min_video:.1%} of video / {min_audio:.1%} of audio "
            f"frames while the load generator's event loop lagged {client_lag_ms:.0f} ms "
            f"(p95; server: {_fmt(server_lag_ms)} ms): the clients fell behind",
        )
    elif min_video < MIN_RECEIVED or min_audio < MIN_RECEIVED:
        status, reason = (
            "fail",
            (f"a participant received {min_video:.1%} of video / {min_audio:.1%} of audio frames"),
        )
    else:
        status, reason = "pass", ""
    if workers_restarted:
        status, reason = "fail", "a server process died during the round"
    return {
        "sessions": sessions,
        "participants": len(people),
        "status": status,
        "reason": reason,
        "window_seconds": round(window, 2),
        "setup_seconds": setup_seconds,
        "client_procs": procs,
        "server_cpu_pct": round(server_pct, 1),
        "cpu_per_session_pct": round(server_pct / sessions, 2),
        # Supervisor first when there are workers: shows how evenly sessions were placed.
        "server_cpu_by_process_pct": server_cpu_by_process,
        "client_cpu_pct": round(client_cpu / elapsed * 100, 1),
        # Of the whole machine (100 % = every core busy), whoever used it: other jobs included.
        "machine_busy_pct": round(machine_busy_pct, 1),
        "recv_video_ratio_min": round(min_video, 4),
        "recv_audio_ratio_min": round(min_audio, 4),
        "sent_video_ratio_min": round(min_sent, 4),
        "frames_received_video": sum(p["recv_video"] for p in people),
        "frames_received_audio": sum(p["recv_audio"] for p in people),
        "forwarding_delay_ms": {
            "p50": _ms(delay.quantile(0.5)),
            "p95": _ms(delay.quantile(0.95)),
            "samples": int(delay.count),
        },
        "e2e_delay_ms": _quantiles(e2e, 1000, 2) | {"samples": len(e2e)},
        "server_loop_lag_ms_p95": _ms(loop_lag.quantile(0.95)),
        "client_loop_lag_ms_p95": _ms(max(lags, default=None)),
        "first_frame_s": _quantiles(first),
        "server_rss_mb": round(rss_load / 2**20, 1),
        "server_rss_idle_mb": round(rss_idle / 2**20, 1),
        "memory_per_session_mb": round((rss_load - rss_idle) / 2**20 / sessions, 2),
        "load_average": [round(x, 2) for x in load],
        "errors": errors[:5],
    }


def aborted_round(sessions: int, reason: str) -> dict[str, Any]:
    """A round that could not be measured (setup or a process failed), with every key."""
    empty = {"p50": None, "p95": None}
    return {
        "sessions": sessions,
        "participants": 2 * sessions,
        "status": "fail",
        "reason": reason,
        "window_seconds": 0.0,
        "setup_seconds": None,
        "client_procs": 0,
        "server_cpu_pct": 0.0,
        "cpu_per_session_pct": 0.0,
        "server_cpu_by_process_pct": [],
        "client_cpu_pct": 0.0,
        "machine_busy_pct": 0.0,
        "recv_video_ratio_min": 0.0,
        "recv_audio_ratio_min": 0.0,
        "sent_video_ratio_min": 0.0,
        "frames_received_video": 0,
        "frames_received_audio": 0,
        "forwarding_delay_ms": empty | {"samples": 0},
        "e2e_delay_ms": empty | {"max": None, "samples": 0},
        "server_loop_lag_ms_p95": None,
        "client_loop_lag_ms_p95": None,
        "first_frame_s": empty | {"max": None},
        "server_rss_mb": 0.0,
        "server_rss_idle_mb": 0.0,
        "memory_per_session_mb": 0.0,
        "load_average": [round(x, 2) for x in load_average()],
        "errors": [],
    }


def summarise_mode(spec: ModeSpec, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    passed = [r for r in rounds if r["status"] == "pass"]
    best = max(passed, key=lambda r: r["sessions"]) if passed else None
    stop = next((r for r in rounds if r["status"] != "pass"), None)
    cpu = best["cpu_per_session_pct"] if best else None
    return {
        "max_sessions_passed": best["sessions"] if best else 0,
        "sessions_per_core": round(best["sessions"] / spec.workers, 2) if best else 0.0,
        "cpu_per_session_pct": cpu,
        # What one fully available core would carry at the measured cost per session: the
        # machine's second core also runs the clients, so measured capacity is a lower bound.
        "sessions_per_core_from_cpu": round(100 / cpu, 1) if cpu else None,
        "forwarding_delay_ms": best["forwarding_delay_ms"] if best else None,
        "e2e_delay_ms": best["e2e_delay_ms"] if best else None,
        "first_frame_s": best["first_frame_s"] if best else None,
        "memory_per_session_mb": best["memory_per_session_mb"] if best else None,
        "stopped": (
            f"{stop['status']} at {stop['sessions']} sessions: {stop['reason']}"
            if stop
            else SERIES_EXHAUSTED
        ),
    }


def evaluate_goals(modes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []

    def add(goal: str, target: str, value: Any, met: bool | None) -> None:
        goals.append({"goal": goal, "target": target, "value": value, "met": met})

    def capacity(name: str, label: str) -> None:
        summary = modes.get(name, {}).get("summary")
        if not summary:
            return
        spc: Any = summary["sessions_per_core"]
        met: bool | None = spc >= GOALS["sessions_per_core"]
        if not met and summary["stopped"] == SERIES_EXHAUSTED:
            spc, met = f">= {spc} (every count passed)", None
        add(f"{label} sessions per core (measured)", ">= 25", spc, met)
        derived = summary["sessions_per_core_from_cpu"]
        add(
            f"{label} sessions per core (100 % / CPU per session)",
            ">= 25",
            derived,
            None if derived is None else derived >= GOALS["sessions_per_core"],
        )

    capacity("encoded-rec", "recorded (encoded-rec)")
    capacity("encoded", "forwarded (encoded)")
    encoded = modes.get("encoded", {}).get("summary")
    naive = modes.get("naive", {}).get("summary")
    if encoded:
        spc = encoded["sessions_per_core"]
        p95 = (encoded["forwarding_delay_ms"] or {}).get("p95")
        add(
            "forwarding delay p95 (ms)",
            "<= 20",
            p95,
            None if p95 is None else p95 <= GOALS["forwarding_delay_p95_ms"],
        )
        e2e = (encoded["e2e_delay_ms"] or {}).get("p95")
        add(
            "client-to-client delay p95 (ms), loopback: what the server adds",
            "<= 20",
            e2e,
            None if e2e is None else e2e <= GOALS["forwarding_delay_p95_ms"],
        )
        first = (encoded["first_frame_s"] or {}).get("p95")
        add(
            "time to first frame p95 (s)",
            "<= 1",
            first,
            None if first is None else first <= GOALS["first_frame_p95_s"],
        )
        memory = encoded["memory_per_session_mb"]
        add(
            "memory per session (MB)",
            "<= 30",
            memory,
            None if memory is None else memory <= GOALS["memory_per_session_mb"],
        )
        if naive:
            ratio = (
                round(spc / naive["sessions_per_core"], 1) if naive["sessions_per_core"] else None
            )
            value: Any = ratio
            met = None if ratio is None else ratio >= GOALS["speedup_over_naive"]
            if ratio is not None and not met and encoded["stopped"] == SERIES_EXHAUSTED:
                value, met = f">= {ratio} (every encoded count passed)", None
            add("encoded / naive sessions per core (measured)", ">= 10", value, met)
            if naive["cpu_per_session_pct"] and encoded["cpu_per_session_pct"]:
                cpu_ratio = round(naive["cpu_per_session_pct"] / encoded["cpu_per_session_pct"], 1)
                add(
                    "naive / encoded CPU per session",
                    ">= 10",
                    cpu_ratio,
                    cpu_ratio >= GOALS["speedup_over_naive"],
                )
        for name, mode in modes.items():
            if (match := re.fullmatch(r"encoded-(\d+)w", name)) and encoded["max_sessions_passed"]:
                _worker_goals(add, name, int(match.group(1)), mode, modes["encoded"])
    return goals


def _worker_goals(
    add: Callable[[str, str, Any, bool | None], None],
    name: str,
    workers: int,
    mode: dict[str, Any],
    encoded: dict[str, Any],
) -> None:
    summary, one = mode["summary"], encoded["summary"]
    total = summary["max_sessions_passed"]
    ratio = round(total / (workers * one["max_sessions_passed"]), 2)
    exhausted = SERIES_EXHAUSTED in (summary["stopped"], one["stopped"])
    add(
        f"{name} capacity / ({workers} x encoded), measured",
        ">= 0.9",
        f"{ratio} (a series passed every count: not a capacity)" if exhausted else ratio,
        None if exhausted else ratio >= GOALS["multi_worker_efficiency"],
    )
    # On a machine whose cores the clients share, the measured ratio is bounded by the
    # clients; the cost per session says whether N workers carry N times as much on cores of
    # their own. Compared at the same load per worker (N x S sessions against S): a process's
    # fixed costs spread over more sessions make a loaded worker cheaper per session.
    cpu_n = summary["cpu_per_session_pct"]
    same_load = [
        r
        for r in encoded["rounds"]
        if r["status"] == "pass" and r["cpu_per_session_pct"] and r["sessions"] * workers <= total
    ]
    if cpu_n and same_load:
        reference = max(same_load, key=lambda r: r["sessions"])
        derived_ratio = round(reference["cpu_per_session_pct"] / cpu_n, 2)
        add(
            f"{name} capacity / ({workers} x encoded), from CPU per session "
            f"({total} sessions against {reference['sessions']})",
            ">= 0.9",
            derived_ratio,
            derived_ratio >= GOALS["multi_worker_efficiency"],
        )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render(report: dict[str, Any]) -> str:
    lines = [
        "Rounds",
        "",
        "| mode | sessions | status | server CPU % | CPU/session % | client CPU % | machine "
        "busy % | min recv video/audio | fwd delay p50/p95 ms | e2e p50/p95 ms | first frame "
        "p50/p95 s | RSS MB | MB/session | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, mode in report["modes"].items():
        for r in mode["rounds"]:
            lines.append(
                f"| {name} | {r['sessions']} | {r['status']} | {r['server_cpu_pct']} | "
                f"{r['cpu_per_session_pct']} | {r['client_cpu_pct']} | {r['machine_busy_pct']} | "
                f"{r['recv_video_ratio_min']:.3f}/{r['recv_audio_ratio_min']:.3f} | "
                f"{_fmt(r['forwarding_delay_ms']['p50'])}/{_fmt(r['forwarding_delay_ms']['p95'])}"
                f" | {_fmt(r['e2e_delay_ms']['p50'])}/{_fmt(r['e2e_delay_ms']['p95'])} | "
                f"{_fmt(r['first_frame_s']['p50'])}/{_fmt(r['first_frame_s']['p95'])} | "
                f"{r['server_rss_mb']} | {r['memory_per_session_mb']} | "
                f"{r['load_average'][0]} |"
            )
    lines += [
        "",
        "Summary (at the largest passing session count)",
        "",
        "| mode | workers | sessions passed | sessions/core | CPU/session % | sessions/core "
        "from CPU | fwd delay p50/p95 ms | first frame p50/p95 s | MB/session | stopped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, mode in report["modes"].items():
        s = mode["summary"]
        delay = s["forwarding_delay_ms"] or {}
        first = s["first_frame_s"] or {}
        lines.append(
            f"| {name} | {mode['workers']} | {s['max_sessions_passed']} | "
            f"{s['sessions_per_core']} | {_fmt(s['cpu_per_session_pct'])} | "
            f"{_fmt(s['sessions_per_core_from_cpu'])} | "
            f"{_fmt(delay.get('p50'))}/{_fmt(delay.get('p95'))} | "
            f"{_fmt(first.get('p50'))}/{_fmt(first.get('p95'))} | "
            f"{_fmt(s['memory_per_session_mb'])} | {s['stopped']} |"
        )
    lines += [
        "",
        "Goals (reported, not asserted)",
        "",
        "| goal | target | value | met |",
        "|---|---|---|---|",
    ]
    for g in report["goals"]:
        met = {True: "yes", False: "no", None: "-"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['target']} | {_fmt(g['value'])} | {met} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    began = time.monotonic()
    counts = [int(x) for x in args.sessions.split(",") if x.strip()]
    specs = [mode_spec(m.strip()) for m in args.modes.split(",") if m.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="vteller-bench-"))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.media " + shlex.join(argv),
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in load_average()],
        "settings": {
            "sessions": counts,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "client_procs": args.client_procs,
            "client_nice": args.client_nice,
            "min_received": MIN_RECEIVED,
            "fps": FPS,
        },
        "workdir": str(workdir),
        "modes": {},
    }
    store = ArchiveStore(workdir)
    try:
        progress(began, f"pre-encoding a {args.clip_seconds:g} s VP8 640x480 + Opus clip")
        clip = make_clip(args.clip_seconds)
        clip_path = workdir / "clip.pickle"
        clip.save(clip_path)
        report["clip"] = {
            "video_kbps": round(clip.video_kbps, 1),
            "audio_kbps": round(clip.audio_kbps, 1),
            "video_frames": len(clip.video),
            "keyframe_bytes": len(clip.video[0][0]),
            "mean_frame_bytes": round(sum(len(d) for d, _ in clip.video) / len(clip.video)),
        }
        store_env: dict[str, str] = {}
        if any(spec.server == "vteller" for spec in specs):
            progress(began, "starting a throwaway MinIO (the server needs an archive store)")
            store_env = await store.start()
        for spec in specs:
            server = Server(spec, workdir, store_env)
            rounds: list[dict[str, Any]] = []
            progress(began, f"{spec.name}: starting {spec.description}")
            try:
                await server.start()
                for sessions in counts:
                    args.round_id += 1
                    try:
                        result = await run_round(server, sessions, args, clip_path, began)
                    except Exception as exc:  # a round that cannot finish is a failed round
                        result = aborted_round(sessions, f"{type(exc).__name__}: {exc}")
                    rounds.append(result)
                    progress(
                        began,
                        f"{spec.name}: {sessions} sessions: {result['status']}, server CPU "
                        f"{result['server_cpu_pct']} %, min received video "
                        f"{result['recv_video_ratio_min']:.3f}"
                        + (f" ({result['reason']})" if result["reason"] else ""),
                    )
                    if result["status"] != "pass":
                        break
                    await server.settle()
            finally:
                server.stop()
            report["modes"][spec.name] = {
                "server": spec.server,
                "workers": spec.workers,
                "description": spec.description,
                "rounds": rounds,
                "summary": summarise_mode(spec, rounds),
                "server_log_problems": server.problems(),
                "server_log": str(server.log_path),
            }
        report["goals"] = evaluate_goals(report["modes"])
    finally:
        await store.stop()
        report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        report["elapsed_seconds"] = round(time.monotonic() - began, 1)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.media",
        description="Media-plane benchmark of vteller: two-party sessions of headless aiortc "
        "clients sending pre-encoded VP8 640x480 20 fps + Opus, against the naive aiortc relay "
        "and the real server with 1 and N workers. See docs/benchmarks.md.",
    )
    p.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help="comma-separated: naive, encoded, encoded-rec (with recording), encoded-<N>w "
        f"(default {DEFAULT_MODES})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="shorthand: the multi-worker mode uses this many workers "
        "(replaces encoded-2w in --modes)",
    )
    p.add_argument(
        "--sessions",
        default=DEFAULT_SESSIONS,
        help="rising session counts; a mode stops at its first failing count "
        f"(default {DEFAULT_SESSIONS})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="measured window per round, seconds (default 20)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        help="seconds between all media flowing and the window (default 3)",
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=2,
        help="load-generator processes (each up to one core; default 2)",
    )
    p.add_argument(
        "--client-nice",
        type=int,
        default=10,
        help="niceness of the load generators, so the server keeps its core (default 10)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="sessions being set up at once per load-generator process (default 2)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=0.0,
        help="seconds for all media to flow (default 20 + 1.5 per session)",
    )
    p.add_argument(
        "--clip-seconds",
        type=float,
        default=5.0,
        help="length of the looped pre-encoded clip (default 5)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the results as JSON on standard output (progress stays on stderr)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the working directory (server and client logs)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.workers is not None:
        args.modes = args.modes.replace("encoded-2w", f"encoded-{args.workers}w")
    args.round_id = 0
    try:
        for name in args.modes.split(","):
            mode_spec(name.strip())
    except ValueError as exc:
        parser().error(str(exc))
    report = asyncio.run(run(args, argv))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
