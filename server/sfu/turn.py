"""How browsers reach the SFU: STUN/TURN servers and short-lived TURN credentials.

Customers on mobile networks, hotel Wi-Fi or behind corporate proxies often have no UDP path to
the SFU; a TURN server (coturn, `infra/turn.sh`) relays their media. vteller never hands a
standing TURN password to a browser: every `joined` carries a credential of its own in the "TURN
REST API" form that coturn checks with a secret shared with vteller (`use-auth-secret`):

    username   = "<expiry, Unix seconds>:<participant id>"
    credential = base64(HMAC-SHA1(secret, username))

coturn checks a credential when a relay is allocated (and keeps a relay allocated before the expiry
alive while the browser refreshes it): it needs to live only until the browser has gathered its
candidates, and every (re)join gets a fresh one. A credential copied out of a page stops opening
relays when it expires, and names whose it was. Test vector: docs/deployment.md, "TURN".
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import structlog
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from cryptography.hazmat.primitives import hashes, hmac
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from recorder.seal.files import generated_secret

log = structlog.get_logger(__name__)

SECRET_FILE = "turn-secret"
CHECK_SECONDS = 10.0


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
        default=60,
        ge=5,
        le=24 * 60,
        description="how long a participant's TURN credential opens relays; a relay opened "
        "before it expires lasts the call, and a rejoin gets a fresh credential",
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

    async def check(self) -> list[str]:
        """Open a relay once on each UDP TURN URL with a fresh credential and give it back.

        A TURN server holding another secret refuses every participant's credential, and one that
        cannot be reached relays nobody; either shows only as customers who cannot connect. Run
        at start, the problems are in the log (and returned) with what to do about them."""
        if not self._turn.enabled or self._secret is None:
            return []
        problems = []
        for url in self._turn.urls:
            target = udp_target(url)
            if target is None:
                continue  # turns: or TCP: the browser's path, which this check cannot take
            relay = self.servers("vteller-start-check", time.time())[-1]
            problem = await _allocation_problem(target, relay["username"], relay["credential"])
            if problem is None:
                log.info("turn_check_passed", url=url)
            else:
                log.error("turn_check_failed", url=url, problem=problem)
                problems.append(f"{url}: {problem}")
        return problems


def udp_target(url: str) -> tuple[str, int] | None:
    """(host, port) of a `turn:` URI over UDP (RFC 7065), None for turns: or TCP."""
    scheme, _, rest = url.partition(":")
    address, _, query = rest.partition("?")
    transport = parse_qs(query).get("transport", ["udp"])[0]
    if scheme != "turn" or transport != "udp":
        return None
    if address.startswith("["):  # an IPv6 literal
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    return host, int(port) if port else 3478


async def _allocation_problem(target: tuple[str, int], username: str, password: str) -> str | None:
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(
                target, username=username, password=password, lifetime=60, channel_refresh_time=60
            ),
            remote_addr=target,
        )
    except OSError as exc:
        return f"cannot reach {target[0]}:{target[1]} ({exc}): check the host name and the network"
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await protocol.connect()
            await protocol.delete()
    except stun.TransactionFailed as exc:
        if exc.response.error_code == 401:
            return (
                "it refuses vteller's credentials: it holds another secret. Give it the contents "
                "of {data_dir}/keys/turn-secret (bash infra/turn.sh --secret-file), or set "
                "turn.secret to its static-auth-secret"
            )
        return f"it refused a relay: {exc}"
    except (TimeoutError, stun.TransactionTimeout, ConnectionError, OSError):
        return (
            f"no answer from {target[0]}:{target[1]} within {CHECK_SECONDS:.0f} s: is coturn "
            "running (bash infra/turn.sh status), and UDP open to it?"
        )
    finally:
        if protocol.refresh_task is not None:
            protocol.refresh_task.cancel()
        transport.close()
    return None
