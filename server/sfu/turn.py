"""How browsers reach the SFU: STUN/TURN servers and short-lived TURN credentials.

Customers on mobile networks, hotel Wi-Fi or behind corporate proxies often have no UDP path to
the SFU; a TURN server (coturn, `infra/turn.sh`) relays their media. vteller never hands a
standing TURN password to a browser: every `joined` carries a credential of its own in the "TURN
REST API" form that coturn checks with a secret shared with vteller (`use-auth-secret`):

    username   = "<expiry, Unix seconds>:<participant id>"
    credential = base64(HMAC-SHA1(secret, username))

A credential copied out of a page stops working when it expires and names whose it was; a rejoin
gets a fresh one. Test vector: docs/deployment.md, "TURN".
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, hmac
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from recorder.seal.files import generated_secret

SECRET_FILE = "turn-secret"


class TurnConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    urls: list[str] = Field(
        default_factory=list,
        description="the TURN server's URIs as browsers use them, e.g. "
        '["turn:turn.bank.example:3478?transport=udp", '
        '"turns:turn.bank.example:5349?transport=tcp"]; empty: no TURN',
    )
    secret: SecretStr = Field(
        default=SecretStr(""),
        description="shared with the TURN server (coturn static-auth-secret); empty: generated "
        "into {data_dir}/keys/turn-secret",
    )
    credential_minutes: int = Field(
        default=480,
        ge=5,
        le=24 * 60,
        description="how long a participant's TURN credential is valid: the longest call, since "
        "an expired credential ends the relay (a rejoin gets a fresh one)",
    )
    relay_only: bool = Field(
        default=False,
        description="browsers send media only through TURN (iceTransportPolicy 'relay'): hides "
        "customers' addresses from the SFU's network; every call then costs TURN bandwidth",
    )

    @field_validator("urls")
    @classmethod
    def _turn_uris(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(
                    f"turn.urls takes turn: or turns: URIs (RFC 7065), not {url!r}; "
                    "STUN servers go into ice_servers"
                )
        return urls

    @property
    def enabled(self) -> bool:
        return bool(self.urls)


def turn_secret(config: TurnConfig, data_dir: Path) -> str:
    """The shared secret: configured, or generated once into {data_dir}/keys/turn-secret (0600)."""
    configured = config.secret.get_secret_value()
    return configured or generated_secret(data_dir / "keys" / SECRET_FILE)


def turn_credential(secret: str, username: str) -> str:
    mac = hmac.HMAC(secret.encode(), hashes.SHA1())  # what coturn's use-auth-secret checks
    mac.update(username.encode())
    return base64.b64encode(mac.finalize()).decode("ascii")


class BrowserIce:
    """The RTCPeerConnection configuration each participant's browser gets in `joined`."""

    def __init__(self, servers: list[dict[str, Any]], turn: TurnConfig, secret: str | None) -> None:
        if turn.enabled and not secret:
            raise ValueError("TURN is configured without a secret")
        self._servers = servers
        self._turn = turn
        self._secret = secret

    @property
    def transport_policy(self) -> Literal["all", "relay"]:
        return "relay" if self._turn.enabled and self._turn.relay_only else "all"

    def servers(self, participant_id: str, now: float) -> list[dict[str, Any]]:
        """`ice_servers` for one participant: the configured ones, and TURN with its credential."""
        if not self._turn.enabled or self._secret is None:
            return list(self._servers)
        username = f"{int(now) + self._turn.credential_minutes * 60}:{participant_id}"
        relay = {
            "urls": list(self._turn.urls),
            "username": username,
            "credential": turn_credential(self._secret, username),
        }
        return [*self._servers, relay]
