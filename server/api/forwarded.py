"""The client's address behind the bank's TLS proxies and load balancers.

Every request through a proxy comes from the proxy's address, so per-address limits (the public
queue, staff logins) would lump all customers together and the audit log would name the proxy.
For a request from one of `trusted_proxies` the address is taken from `X-Forwarded-For`
instead: the nearest entry that is not itself a trusted proxy (read from the right, as each
proxy appends the address it received the request from). Entries further left were written by
the client and are never believed. With no trusted proxies the header is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import web
from aiohttp.typedefs import Middleware

from server.api.middleware import Handler

Network = IPv4Network | IPv6Network
# The address the request came from, on the original request (the access log reads it there).
CLIENT_ADDRESS = web.RequestKey("client_address", str)


def client_address(peer: str, forwarded_for: str, trusted: Sequence[Network]) -> str:
    """`peer` unless it is a trusted proxy; then the nearest untrusted X-Forwarded-For hop."""
    hops = [peer, *reversed([hop.strip() for hop in forwarded_for.split(",") if hop.strip()])]
    for hop in hops:
        if not _is_trusted(hop, trusted):
            return hop
    return hops[-1]  # proxies all the way: the farthest one named


def _is_trusted(hop: str, trusted: Sequence[Network]) -> bool:
    try:
        address = ip_address(hop)
    except ValueError:
        return False  # not an address a proxy writes: the chain of trust ends here
    return any(address in network for network in trusted)


def forwarded_client(trusted: Sequence[Network]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        header = request.headers.get("X-Forwarded-For")
        if peer is not None and header and _is_trusted(peer, trusted):
            client = client_address(peer, header, trusted)
            request[CLIENT_ADDRESS] = client
            request = request.clone(remote=client)
        return await handler(request)

    return middleware
