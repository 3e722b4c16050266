"""Prometheus metrics of one worker, on /metrics (bearer token; see README, Metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from recorder.seal.files import generated_secret
from server import __version__
from server.auth.tokens import same
from server.background import cancel_and_wait
from server.sfu.rooms import RoomRegistry
from server.workers.registry import WorkerRegistry

LOOP_LAG_INTERVAL_SECONDS = 0.5


class _RoomCollector(Collector):
    """Reads the SFU's counters at scrape time instead of mirroring every packet."""

    def __init__(self, rooms: RoomRegistry) -> None:
        self._rooms = rooms

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._rooms.stats()
        yield GaugeMetricFamily("vteller_sessions", "Live sessions on this worker", stats.sessions)
        yield GaugeMetricFamily("vteller_peers", "Connected peer connections", stats.peers)
        yield CounterMetricFamily(
            "vteller_packets_forwarded", "Encoded frames handed to senders", stats.packets
        )
        yield CounterMetricFamily(
            "vteller_bytes_forwarded", "Bytes of encoded media handed to senders", stats.bytes
        )
        yield CounterMetricFamily(
            "vteller_keyframe_requests", "Keyframe requests sent to publishers", stats.keyframes
        )


class _CapacityCollector(Collector):
    """The worker's headroom: what placement counts against its capacity, and the capacity."""

    def __init__(self, workers: WorkerRegistry) -> None:
        self._workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "vteller_worker_max_sessions",
            "Open sessions this worker may be given (worker_max_sessions; 0: no limit)",
            self._workers.max_sessions,
        )
        yield GaugeMetricFamily(
            "vteller_worker_open_sessions",
            "Open sessions (invited, in a call or interrupted) placed on this worker, counted "
            "against its capacity; as of its last heartbeat",
            self._workers.open_sessions,
        )


class Metrics:
    def __init__(self, rooms: RoomRegistry, workers: WorkerRegistry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_RoomCollector(rooms))
        self.registry.register(_CapacityCollector(workers))
        # Here, behind the scrape token, rather than on the public /healthz.
        Info("vteller_build", "The software this worker runs", registry=self.registry).info(
            {"version": __version__}
        )
        self.forwarding_delay = Histogram(
            "vteller_forwarding_delay_seconds",
            "Time from a frame's arrival at the SFU to its hand-over to a consumer's sender",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "vteller_event_loop_lag_seconds",
            "How late the event loop runs a timer (CPU saturation shows here first)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        rooms.observe_delay = self.forwarding_delay.observe
        self._lag_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._lag_task = asyncio.create_task(self._measure_loop_lag())

    async def stop(self) -> None:
        await cancel_and_wait(self._lag_task)

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LOOP_LAG_INTERVAL_SECONDS
            await asyncio.sleep(LOOP_LAG_INTERVAL_SECONDS)
            self.loop_lag.observe(max(0.0, loop.time() - expected))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_token(configured: str, data_dir: Path) -> str:
    """The scrape token: configured, or generated once into {data_dir}/metrics.token (0600)."""
    return configured or generated_secret(data_dir / "metrics.token")


def metrics_handler(
    metrics: Metrics, token: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not sent or not same(sent, token):
            raise web.HTTPUnauthorized(
                text="Send 'Authorization: Bearer <token>' (the token is in "
                "{data_dir}/metrics.token or VTELLER_METRICS_TOKEN).\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    return handle
