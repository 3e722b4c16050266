"""vteller as a separate process (`python -m server ...`), for tests that kill or restart it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from bench.media import free_port
from tests.support.server import PASSWORD


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 1,
        store: Mapping[str, str] | None = None,
        database_url: str = "",
        **settings: str,
    ) -> None:
        """`store`: the archive store's VTELLER_S3_* variables; `database_url`: empty for SQLite
        in `data_dir`; `settings`: other VTELLER_*."""
        self.port = free_port(consecutive=workers)  # worker i takes port + i
        self.workers = workers
        self.env = (
            dict(os.environ)
            | {
                "VTELLER_DATA_DIR": str(data_dir),
                "VTELLER_ICE_HOST_ADDRESSES": json.dumps(["127.0.0.1"]),
                "VTELLER_ICE_PEER_NETWORKS": json.dumps(["127.0.0.1/32"]),
                "VTELLER_LOG_LEVEL": "WARNING",
                # As in tests/support/server.py: no model preloading or after-call analysis
                # competing for the 2 cores with what the test measures, unless it asks.
                "VTELLER_IDENTITY__PRELOAD": "false",
                "VTELLER_COMPLIANCE_ANALYSIS": "false",
            }
            | dict(store or {})
            | ({"VTELLER_DATABASE_URL": database_url} if database_url else {})
            | settings
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port + index}"

    def create_user(self, username: str, role: str) -> None:
        subprocess.run(
            [
                *self._command(),
                "admin",
                "create-user",
                "--username",
                username,
                "--role",
                role,
                "--password-stdin",
            ],
            input=PASSWORD.encode(),
            env=self.env,
            check=True,
            capture_output=True,
        )

    async def start(self) -> None:
        self._spawn()
        for index in range(self.workers):
            await healthy(self.worker_url(index))

    def _spawn(self) -> None:
        self.process = subprocess.Popen(self._serve_command(), env=self.env)

    def _serve_command(self) -> list[str]:
        return [*self._command(), "serve", "--workers", str(self.workers), "--port", str(self.port)]

    async def exit_status(self, timeout: float = 120) -> tuple[int, str]:
        """Run `serve` when it is expected to exit by itself: its status and standard error."""
        child = await asyncio.create_subprocess_exec(
            *self._serve_command(), env=self.env, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(timeout):
            _, stderr = await child.communicate()
        assert child.returncode is not None
        return child.returncode, stderr.decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when a machine loses power."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    @staticmethod
    def _command() -> list[str]:
        return [sys.executable, "-m", "server"]


async def healthy(url: str, timeout: float = 60) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        while True:
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
