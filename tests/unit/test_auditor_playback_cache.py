"""The playback memory of the auditor portal: bounded in bytes, least recently used out."""

from __future__ import annotations

import pytest

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


def test_viewers_are_remembered_per_recording() -> None:
    cache = PlaybackCache(capacity_bytes=1000, ttl_seconds=3600)
    prepared = cache.put("a", _views(10))
    prepared.viewers.add("u_1")
    again = cache.get("a")
    assert again is not None and again.viewers == {"u_1"}
    assert set(again.views) == {"customer", "teller"} and again.size == 20
