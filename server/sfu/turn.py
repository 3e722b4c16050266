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
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from aioice import stun
from aioice.turn import TurnClientProtocol, TurnClientTcpProtocol, TurnClientUdpProtocol
from cryptography.hazmat.primitives import hashes, hmac
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from recorder.seal.files import generated_secret

log = structlog.get_logger(__name__)

SECRET_FILE = "turn-secret"
CHECK_SECONDS = 10.0
# The shortest asked for (coturn grants at least 10 minutes): a relay the check fails to give
# back expires soon.
ALLOCATION_SECONDS = 60


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
            turn_server(url)
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
        """Open a relay once on each TURN URL, the way the URL says (UDP, TCP or TLS), with a
        fresh credential and give it back.

        A TURN server holding another secret refuses every participant's credential, one that
        cannot be reached relays nobody, and a TLS certificate browsers do not trust keeps out the
        very customers who have only TLS; each shows only as customers who cannot connect. Run at
        start, the problems are in the log (and returned) with what to do about them."""
        if not self._turn.enabled or self._secret is None:
            return []
        problems = []
        for url in self._turn.urls:
            server = turn_server(url)
            relay = self.servers("vteller-start-check", time.time())[-1]
            problem = await _allocation_problem(server, relay["username"], relay["credential"])
            if problem is None:
                log.info("turn_check_passed", url=url, over=server.over)
            else:
                log.error("turn_check_failed", url=url, over=server.over, problem=problem)
                problems.append(f"{url}: {problem}")
        return problems


@dataclass(frozen=True)
class TurnServer:
    """Where a `turn:`/`turns:` URI (RFC 7065) sends a client, and how."""

    host: str
    port: int
    transport: Literal["udp", "tcp"]
    tls: bool

    @property
    def over(self) -> str:
        return "tls" if self.tls else self.transport


def turn_server(url: str) -> TurnServer:
    """Parse a `turn:`/`turns:` URI (RFC 7065); ValueError naming the fix for one that browsers
    refuse (Chrome's RTCPeerConnection throws on it: no call would start) or that cannot work."""
    scheme, _, rest = url.partition(":")
    if scheme not in ("turn", "turns"):
        raise ValueError(
            f"turn.urls takes turn: or turns: URIs (RFC 7065), not {url!r}; "
            "STUN servers go into ice_servers"
        )
    address, _, query = rest.partition("?")
    transports: dict[str, Literal["udp", "tcp"]] = {
        "": "tcp" if scheme == "turns" else "udp",
        "transport=udp": "udp",
        "transport=tcp": "tcp",
    }
    transport = transports.get(query)
    if transport is None:
        raise ValueError(
            f"{url!r}: a TURN URI ends in nothing, ?transport=udp or ?transport=tcp (RFC 7065)"
        )
    if scheme == "turns" and transport == "udp":
        raise ValueError(
            f"{url!r}: turns: is TURN over TLS, which runs over TCP: write ?transport=tcp "
            "(or turn:...?transport=udp for plain UDP)"
        )
    if address.startswith("["):  # an IPv6 literal
        host, _, port = address[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = address.partition(":")
    if not host or not (port == "" or (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{url!r}: a TURN URI is turn:HOST, turn:HOST:PORT or turn:[IPV6]:PORT")
    default_port = 5349 if scheme == "turns" else 3478  # RFC 7065
    return TurnServer(host, int(port) if port else default_port, transport, scheme == "turns")


@asynccontextmanager
async def turn_client(
    server: TurnServer, username: str, password: str, tls: ssl.SSLContext | None = None
) -> AsyncIterator[TurnClientProtocol]:
    """aioice's TURN client (as the SFU's and aiortc clients' ICE use it) connected to `server`,
    no relay allocated yet. Over TLS, `tls` or the system's trust store checks the certificate."""
    loop = asyncio.get_running_loop()
    address = (server.host, server.port)
    transport: asyncio.BaseTransport
    client: TurnClientProtocol
    credentials: dict[str, Any] = {
        "username": username,
        "password": password,
        "lifetime": ALLOCATION_SECONDS,
        "channel_refresh_time": ALLOCATION_SECONDS,
    }
    if server.transport == "udp":
        transport, client = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(address, **credentials), remote_addr=address
        )
    else:
        if server.tls and tls is None:
            tls = await asyncio.to_thread(ssl.create_default_context)  # reads the trust store
        transport, client = await loop.create_connection(
            lambda: TurnClientTcpProtocol(address, **credentials),
            server.host,
            server.port,
            ssl=tls if server.tls else None,
        )
    try:
        yield client
    finally:
        if client.refresh_task is not None:
            client.refresh_task.cancel()
        transport.close()


async def _allocation_problem(server: TurnServer, username: str, password: str) -> str | None:
    where = f"{server.host}:{server.port}"
    try:
        async with (
            asyncio.timeout(CHECK_SECONDS),
            turn_client(server, username, password) as client,
        ):
            await client.connect()
            await client.delete()
    except stun.TransactionFailed as exc:
        if exc.response.error_code == 401:
            return (
                "it refuses vteller's credentials: it holds another secret. Give it the contents "
                "of {data_dir}/keys/turn-secret (bash infra/turn.sh --secret-file), or set "
                "turn.secret to its static-auth-secret"
            )
        return f"it refused a relay: {exc}"
    except ssl.SSLCertVerificationError as exc:
        return (
            f"its TLS certificate is not trusted ({exc.verify_message}): give coturn the chain "
            f"for {server.host} from a CA customers' browsers trust (bash infra/turn.sh --cert); "
            "this machine checks it against its own trust store (or SSL_CERT_FILE)"
        )
    except ssl.SSLError as exc:
        return (
            f"no TLS at {where} ({exc.reason}): is that coturn's --tls-port "
            "(bash infra/turn.sh config)? A turns: URL needs it"
        )
    except socket.gaierror as exc:
        return f"cannot reach {where} ({exc}): check the host name and the network"
    except (TimeoutError, stun.TransactionTimeout, OSError):
        return (
            f"no answer from {where} over {server.over.upper()} within {CHECK_SECONDS:.0f} s: is "
            f"coturn running (bash infra/turn.sh status), and {server.transport.upper()} port "
            f"{server.port} open to it?"
        )
    return None
