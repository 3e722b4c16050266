"""Which network addresses the SFU's ICE agent may use (aioice 0.13.0).

Servers with several interfaces (and the tests, which must send nothing beyond loopback) restrict
ICE to chosen addresses. aioice has no option for this, so the policy is installed into it once per
process: host candidates come only from the allowed addresses, connectivity checks arriving from
other addresses are ignored (answering them would make aioice send there), and remote candidates on
other addresses are dropped before aiortc sees them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import aioice.ice

AIOICE_VERSION = "0.13.0"
_INSTALLED = "_vteller_ice_policy"


class IcePolicy:
    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = [str(ipaddress.ip_address(a)) for a in addresses]

    @property
    def restricted(self) -> bool:
        return bool(self.addresses)

    def allows(self, host: str) -> bool:
        if not self.restricted:
            return True
        try:
            return str(ipaddress.ip_address(host)) in self.addresses
        except ValueError:  # mDNS (.local) or other names cannot be checked: refuse them
            return False

    def allows_candidate_line(self, candidate: str) -> bool:
        """`candidate:...` as in SDP or trickle ICE; the address is the fifth field."""
        fields = candidate.split()
        return len(fields) >= 8 and self.allows(fields[4])

    def filter_sdp(self, sdp: str) -> str:
        if not self.restricted:
            return sdp
        kept = [
            line
            for line in sdp.splitlines()
            if not line.startswith("a=candidate:") or self.allows_candidate_line(line[2:])
        ]
        return "\r\n".join(kept) + "\r\n"

    def install(self) -> None:
        """Apply to aioice for this process; every SFU in a process shares one policy."""
        if not self.restricted:
            return
        from importlib.metadata import version

        if version("aioice") != AIOICE_VERSION:
            raise RuntimeError(
                f"server/sfu/ice_policy.py is written for aioice {AIOICE_VERSION}, "
                f"found {version('aioice')}: review it before upgrading"
            )
        previous: IcePolicy | None = getattr(aioice.ice, _INSTALLED, None)
        if previous is not None:
            if previous.addresses != self.addresses:
                raise RuntimeError("a different ICE address policy is already installed")
            return
        setattr(aioice.ice, _INSTALLED, self)
        addresses = list(self.addresses)
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)
        original: Callable[..., Any] = aioice.ice.Connection.request_received
        policy = self

        def request_received(
            connection: Any, message: Any, addr: tuple[str, int], protocol: Any
        ) -> None:
            if policy.allows(addr[0]):
                original(connection, message, addr, protocol)

        aioice.ice.Connection.request_received = request_received  # type: ignore[method-assign,assignment]
