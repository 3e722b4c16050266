"""A private MinIO for one test (infra/minio.sh), for tests that stop the archive store."""

from __future__ import annotations

from pathlib import Path

from bench.media import free_port
from tests.support.infra import infra


class PrivateMinio:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port(consecutive=2)  # S3 and console
        self._options = ["--data-dir", str(data_dir), "--port", str(self.port)]

    def _run(self, command: str) -> str:
        return infra("minio.sh", command, *self._options)

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def environment(self) -> dict[str, str]:
        """VTELLER_S3_ENDPOINT, VTELLER_S3_ACCESS_KEY, VTELLER_S3_SECRET_KEY."""
        values = {}
        for line in self._run("env").splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value.strip("'\"")
        return values
