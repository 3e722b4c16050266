"""Which candidates the SFU keeps (server/sfu/ice_policy.py): local addresses and peers apart."""

from __future__ import annotations

from server.sfu.ice_policy import IcePolicy

CUSTOMER = "candidate:1 1 udp 2122260223 203.0.113.7 50000 typ srflx raddr 0.0.0.0 rport 0"
RELAY = "candidate:2 1 udp 41885439 198.51.100.20 61000 typ relay raddr 0.0.0.0 rport 0"
LOOPBACK = "candidate:3 1 udp 2122260223 127.0.0.1 50001 typ host"
MDNS = "candidate:4 1 udp 2122260223 0b8e6c6e-0000-4000-8000-000000000000.local 50002 typ host"

SDP = "".join(
    f"{line}\r\n"
    for line in ("v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", *(f"a={c}" for c in (CUSTOMER, RELAY)))
)


def test_a_server_offering_one_address_still_hears_customers_from_anywhere() -> None:
    # A machine with several interfaces offers its public one only; its customers (and the
    # TURN relays they come through) are on other networks, and must not be dropped.
    policy = IcePolicy(["192.0.2.10"])
    assert policy.addresses == ["192.0.2.10"]
    assert policy.restricted
    for candidate in (CUSTOMER, RELAY, LOOPBACK, MDNS):
        assert policy.allows_candidate_line(candidate)
    assert policy.filter_sdp(SDP) == SDP


def test_loopback_peers_only_keeps_everything_on_loopback() -> None:
    policy = IcePolicy.loopback()
    assert policy.allows_candidate_line(LOOPBACK)
    for candidate in (CUSTOMER, RELAY, MDNS):
        assert not policy.allows_candidate_line(candidate)
    kept = policy.filter_sdp(SDP)
    assert "a=candidate" not in kept
    assert kept.startswith("v=0\r\nm=audio")


def test_peer_networks_are_networks() -> None:
    policy = IcePolicy([], ["198.51.100.0/24", "2001:db8::/32"])
    assert policy.restricted
    assert policy.allows_peer("198.51.100.20")
    assert policy.allows_peer("2001:db8::1")
    assert not policy.allows_peer("203.0.113.7")
    assert not policy.allows_candidate_line("candidate:1 1 udp 1 198.51.100.20")  # truncated


def test_no_policy_restricts_nothing() -> None:
    policy = IcePolicy([])
    assert not policy.restricted
    assert policy.allows_peer("203.0.113.7")
    assert policy.filter_sdp(SDP) == SDP
