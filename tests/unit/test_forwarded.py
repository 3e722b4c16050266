"""Which X-Forwarded-For hop is the client (server/api/forwarded.py)."""

from __future__ import annotations

from ipaddress import ip_network

from server.api.forwarded import client_address

PROXIES = [ip_network("10.0.0.0/24"), ip_network("fd00::/64")]


def test_the_nearest_hop_no_trusted_proxy_wrote_is_the_client() -> None:
    # The client wrote the first entry itself; the proxies appended the rest.
    assert client_address("10.0.0.5", "6.6.6.6, 203.0.113.7", PROXIES) == "203.0.113.7"
    assert client_address("10.0.0.5", "6.6.6.6, 203.0.113.7, 10.0.0.9", PROXIES) == "203.0.113.7"
    assert client_address("fd00::1", "2001:db8::7", PROXIES) == "2001:db8::7"


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client_address("198.51.100.1", "10.0.0.9, 203.0.113.7", PROXIES) == "198.51.100.1"


def test_garbage_ends_the_chain_of_trust_and_proxies_all_the_way_name_the_farthest() -> None:
    assert client_address("10.0.0.5", "203.0.113.7, unknown", PROXIES) == "unknown"
    assert client_address("10.0.0.5", "10.0.0.8, 10.0.0.9", PROXIES) == "10.0.0.8"
