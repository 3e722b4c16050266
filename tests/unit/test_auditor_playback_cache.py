"""The playback memory of the auditor portal: bounded in bytes, least recently used out; each
viewer admitted for the TTL from their own start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from server.auditor import playback
from server.auditor.playback import PlaybackCache, PlaybackError, View


def _views(size: int) -> list[View]:
    return [View("customer", b"c" * size, 1000), View("teller", b"t" * size, 1000)]


def test_the_least_recently_used_recording_goes_first() -> None:
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=3600)
    cache.put("a", _views(200))  # 400 bytes
    cache.put("b", _views(200))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", _views(200))  # 1200 bytes in all: "b" must go
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_a_recording_larger_than_the_memory_is_refused() -> None:
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=3600)
    cache.put("a", _views(100))
    with pytest.raises(PlaybackError, match="playback_cache_mb"):
        cache.put("big", _views(600))
    assert cache.get("a") is not None  # what was there stays


def test_each_viewer_is_admitted_for_the_ttl_from_their_own_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = 1000.0
    monkeypatch.setattr(playback, "time", SimpleNamespace(monotonic=lambda: now))
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=60)
    prepared = cache.put("a", _views(10))
    assert cache.admitted("a", "u_1") is None  # in memory, but nobody started it yet
    cache.admit(prepared, "u_1")
    assert cache.admitted("a", "u_1") is prepared and cache.admitted("a", "u_2") is None
    assert set(prepared.views) == {"customer", "teller"} and prepared.size == 20
    now += 50
    cache.admit(prepared, "u_2")  # keeps the recording in memory until 110...
    now += 20
    assert cache.admitted("a", "u_1") is None  # ...but u_1 started it 70 s ago
    assert cache.admitted("a", "u_2") is prepared
    now += 45
    assert cache.get("a") is None and cache.admitted("a", "u_2") is None


def test_a_second_preparation_keeps_the_entry_its_viewers_stream() -> None:
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=3600)
    first = cache.put("a", _views(10))
    cache.admit(first, "u_1")
    # Prepared again meanwhile (another viewer's start): the first viewer keeps streaming.
    again = cache.put("a", _views(10))
    assert again is first
    assert cache.admit(again, "u_2") is first
    assert cache.admitted("a", "u_1") is first and cache.admitted("a", "u_2") is first


def test_a_start_keeps_the_recording_that_went_to_make_room_meanwhile() -> None:
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=3600)
    prepared = cache.put("a", _views(200))
    # While "a"'s start is being logged, two other recordings push it out of the memory.
    cache.put("b", _views(200))
    cache.put("c", _views(200))
    assert cache.get("a") is None
    assert cache.admit(prepared, "u_1") is prepared
    assert cache.admitted("a", "u_1") is prepared
    assert cache.get("b") is None and cache.get("c") is not None  # room made again, LRU first


def test_a_dropped_recording_is_gone_for_every_viewer_at_once() -> None:
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=3600)
    cache.admit(cache.put("a", _views(10)), "u_1")
    cache.admit(cache.put("b", _views(10)), "u_1")
    cache.drop("a")  # its archive was purged
    assert cache.get("a") is None and cache.admitted("a", "u_1") is None
    assert cache.admitted("b", "u_1") is not None  # the others stay
    cache.drop("a")  # dropping what is not kept changes nothing
