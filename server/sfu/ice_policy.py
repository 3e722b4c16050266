"""Which network addresses the SFU's ICE agent may use (aioice 0.13.0).

Two separate restrictions, because they serve different people:

- **addresses**: the local addresses the SFU offers host candidates on (a server with several
  interfaces offers only the one customers can reach). It says nothing about the peers: customers
  and TURN relays come from anywhere.
- **peers**: the networks remote candidates and connectivity checks may come from. Empty (any) in
  production; the tests and benchmarks, which must send nothing beyond loopback, set it to
  127.0.0.1/32 (`IcePolicy.loopback()`): connectivity checks from elsewhere are ignored (answering
  them would make aioice send there), and remote candidates elsewhere are dropped before aiortc
  sees them.

aioice has no option for either, so the policy is installed into it once per process.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import aioice.ice

AIOICE_VERSION = "0.13.0"
_INSTALLED = "_vteller_ice_policy"


class IcePolicy:
    def __init__(self, addresses: Iterable[str], peers: Iterable[str] = ()) -> None:
        self.addresses = [str(ipaddress.ip_address(a)) for a in addresses]
        self.peers = [ipaddress.ip_network(n) for n in peers]

    @classmethod
    def loopback(cls) -> IcePolicy:
        """Nothing offered, checked or sent beyond 127.0.0.1 (tests and benchmarks)."""
        return cls(["127.0.0.1"], ["127.0.0.1/32"])

    @property
    def restricted(self) -> bool:
        return bool(self.addresses or self.peers)

    def allows_peer(self, host: str) -> bool:
        if not self.peers:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # mDNS (.local) or other names cannot be checked: refuse them
            return False
        return any(address in network for network in self.peers)

    def allows_candidate_line(self, candidate: str) -> bool:
        """`candidate:...` as in SDP or trickle ICE; the address is the fifth field."""
        fields = candidate.split()
        return len(fields) >= 8 and self.allows_peer(fields[4])

    def filter_sdp(self, sdp: str) -> str:
        """The remote description without the candidates of peers this policy refuses."""
        if not self.peers:
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
            if (previous.addresses, previous.peers) != (self.addresses, self.peers):
                raise RuntimeError("a different ICE address policy is already installed")
            return
        setattr(aioice.ice, _INSTALLED, self)
        if self.addresses:
            addresses = list(self.addresses)
            aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)
        if not self.peers:
            return
        original: Callable[..., Any] = aioice.ice.Connection.request_received
        policy = self

        def request_received(
            connection: Any, message: Any, addr: tuple[str, int], protocol: Any
        ) -> None:
            if policy.allows_peer(addr[0]):
                original(connection, message, addr, protocol)

        aioice.ice.Connection.request_received = request_received  # type: ignore[method-assign,assignment]
