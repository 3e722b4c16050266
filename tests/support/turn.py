"""A private coturn for one test module (infra/turn.sh): a real TURN server on loopback."""

from __future__ import annotations

from pathlib import Path

from bench.media import free_port
from tests.support.infra import infra


class PrivateTurn:
    """coturn on 127.0.0.1, relaying from 127.0.0.1 to the SFU on 127.0.0.1 only."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.secret_file = directory / "keys" / "turn-secret"
        self.log = directory / "turn" / "turnserver.log"
        # The relay ports a test's allocations take (free when probed: coturn skips any taken
        # since), apart from the listening port.
        relay = free_port(consecutive=41)
        self._options = [
            "--dir",
            str(directory / "turn"),
            "--secret-file",
            str(self.secret_file),
            "--port",
            str(self.port),
            "--min-port",
            str(relay),
            "--max-port",
            str(relay + 40),
        ]

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    @property
    def secret(self) -> str:
        return self.secret_file.read_text().strip()

    def start(self) -> None:
        infra("turn.sh", "start", *self._options)

    def stop(self) -> None:
        infra("turn.sh", "stop", *self._options)
