"""Sliding-window rate limits: failed logins per user and address, public endpoints per address."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most `limit` hits per key within the last `window_seconds`.

    Kept in the worker's memory: with several workers each enforces its own window, which bounds
    abuse per worker (a shared store would be needed for one exact global limit).
    """

    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until another hit is allowed; 0 when it is allowed now."""
        now = self._clock()
        hits = self._prune(key, now)
        if len(hits) >= self._limit:
            return hits[0] + self._window - now
        return 0.0

    def hit(self, key: str) -> None:
        self._hits.setdefault(key, deque()).append(self._clock())

    def clear(self, key: str) -> None:
        self._hits.pop(key, None)

    def _prune(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] + self._window <= now:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits


class LoginThrottle:
    def __init__(
        self,
        max_per_user: int,
        max_per_address: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = SlidingWindow(max_per_user, window_seconds, clock)
        self._addresses = SlidingWindow(max_per_address, window_seconds, clock)

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        return max(self._users.retry_after(username.lower()), self._addresses.retry_after(address))

    def failed(self, username: str, address: str) -> None:
        self._users.hit(username.lower())
        self._addresses.hit(address)

    def succeeded(self, username: str) -> None:
        self._users.clear(username.lower())
