"""The queue's pure rules: mobile numbers, the waiting estimate, the derived link, rate windows."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from structlog.testing import capture_logs

from server.auth.ratelimit import SlidingWindow, address_key
from server.errors import ApiError
from server.workflow.queue.estimate import HandlingTime, estimate
from server.workflow.queue.phone import mask, normalize_mobile
from server.workflow.queue.service import invitation_token


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("13800138000", "13800138000"),
        ("138 0013 8000", "13800138000"),
        ("138-0013-8000", "13800138000"),
        ("+86 138 0013 8000", "13800138000"),
        ("0086 19912345678", "19912345678"),
        ("8615012345678", "15012345678"),
        ("(+86)17012345678", "17012345678"),
        ("＋８６ １３８ ００１３ ８０００", "13800138000"),
    ],
)
def test_mainland_mobiles_are_accepted_and_normalized(raw: str, number: str) -> None:
    assert normalize_mobile(raw) == number


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "12345678901",
        "10800138000",
        "1380013800",
        "138001380001",
        "+1 138 0013 8000",
        "86 1380013800",
        "1380013800a",
        "١٣٨٠٠١٣٨٠٠٠",
        "13٨٠٠١٣٨٠٠٠",
    ],
)
def test_other_numbers_are_refused_with_a_hint(raw: str) -> None:
    with pytest.raises(ApiError) as refused:
        normalize_mobile(raw)
    assert refused.value.status == 400 and refused.value.code == "invalid_phone"
    assert "11 digits" in refused.value.message


def test_masks_keep_only_the_last_four_digits() -> None:
    assert mask("8000") == "*******8000"


@pytest.mark.parametrize(
    ("position", "tellers", "seconds"),
    [(1, 1, 200), (2, 1, 400), (1, 3, 200), (3, 3, 200), (4, 3, 400), (7, 2, 800)],
)
def test_estimate_counts_whole_rounds_of_the_median_call(
    position: int, tellers: int, seconds: int
) -> None:
    assert estimate(position, tellers, HandlingTime(200, 5)).seconds == seconds


def test_no_teller_on_duty_means_no_estimate() -> None:
    result = estimate(1, 0, HandlingTime(300, 0))
    assert result.seconds is None and result.tellers == 0


def test_the_customer_link_is_derived_from_the_ticket_as_documented() -> None:
    ticket = "rXk0u3cZ2x8h1yq4Gm7T5n0aPq9LwE6sVb2Jd8Fo1Zc"
    mac = hmac.new(ticket.encode(), b"vteller/queue/invitation/v1", hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert invitation_token(ticket) == expected
    assert invitation_token(ticket) != invitation_token(ticket + "x")
    assert "=" not in expected and len(expected) == 43


def test_sliding_window_allows_the_limit_then_waits_for_the_oldest_hit() -> None:
    now = [100.0]
    window = SlidingWindow(2, 60, clock=lambda: now[0])
    assert window.retry_after("a") == 0
    window.hit("a")
    now[0] = 110.0
    window.hit("a")
    assert window.retry_after("a") == pytest.approx(50.0)
    assert window.retry_after("b") == 0
    now[0] = 160.0
    assert window.retry_after("a") == 0
    now[0] = 170.0  # both hits have expired
    window.hit("a")
    window.hit("a")
    assert window.retry_after("a") == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 through an IPv6 socket
        ("unknown", "unknown"),
    ],
)
def test_clients_are_counted_by_address_and_ipv6_ones_by_their_64(address: str, key: str) -> None:
    assert address_key(address) == key


def test_keys_that_never_come_back_are_swept() -> None:
    """One request each from ever new addresses: their expired hits must not pile up."""
    now = [0.0]
    window = SlidingWindow(5, 60, clock=lambda: now[0])
    for n in range(5000):
        key = f"198.51.{n // 256}.{n % 256}"
        assert window.retry_after(key) == 0
        window.hit(key)
        now[0] += 0.1  # 600 keys per window
    assert len(window._hits) == 600  # the last minute's


def test_a_full_table_refuses_new_keys_for_a_window() -> None:
    now = [0.0]
    window = SlidingWindow(5, 60, clock=lambda: now[0], max_keys=100)
    with capture_logs() as logs:
        for n in range(100):
            assert window.retry_after(f"k{n}") == 0
            window.hit(f"k{n}")
        # Unknown keys are refused, however many, until the oldest key expires: they cannot be
        # counted, and must not get through uncounted.
        for n in range(100, 300):
            assert window.retry_after(f"k{n}") == 60
        now[0] = 30.0
        assert window.retry_after("k7") == 0  # clients already counted go on as before
        window.hit("k7")
        now[0] = 60.0  # the hits at 0 expire, and with them every key but k7
        assert window.retry_after("new") == 0
    assert [log["event"] for log in logs] == ["rate_limit_table_full"]
    window.hit("new")
    assert sorted(window._hits) == ["k7", "new"]
