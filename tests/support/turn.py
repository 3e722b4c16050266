"""A private coturn for one test module (infra/turn.sh): a real TURN server on loopback."""

from __future__ import annotations

from pathlib import Path

from bench.media import free_port
from tests.support.infra import infra
from tests.support.tls import loopback_tls


class PrivateTurn:
    """coturn on 127.0.0.1, relaying from 127.0.0.1 to the SFU on 127.0.0.1 only; over UDP and
    plain TCP on `port`, and over TLS on `tls_port` with a certificate from a throwaway CA
    (`ca_file`), as for customers whose networks let only TLS out."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.tls_port = free_port()
        self.secret_file = directory / "keys" / "turn-secret"
        self.log = directory / "turn" / "turnserver.log"
        self.ca_file, _ = loopback_tls(directory / "tls")
        self.cert_file = directory / "tls" / "receiver.pem"
        self.key_file = directory / "tls" / "receiver.key"
        self.key_file.chmod(0o600)  # turn.sh refuses a key that others can read
        # The relay ports a test's allocations take (free when probed: coturn skips any taken
        # since), apart from the listening ports.
        relay = free_port(consecutive=41)
        self.options = [
            "--dir",
            str(directory / "turn"),
            "--secret-file",
            str(self.secret_file),
            "--port",
            str(self.port),
            "--tls-port",
            str(self.tls_port),
            "--cert",
            str(self.cert_file),
            "--key",
            str(self.key_file),
            "--min-port",
            str(relay),
            "--max-port",
            str(relay + 40),
        ]

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    @property
    def tls_url(self) -> str:
        return f"turns:127.0.0.1:{self.tls_port}?transport=tcp"

    @property
    def secret(self) -> str:
        return self.secret_file.read_text().strip()

    def start(self) -> None:
        infra("turn.sh", "start", *self.options)

    def stop(self) -> None:
        infra("turn.sh", "stop", *self.options)
