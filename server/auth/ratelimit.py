"""Failed-login throttling per username and per client address (sliding window)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(
        self,
        max_per_user: int,
        max_per_address: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": max_per_user, "address": max_per_address}
        self._window = window_seconds
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        now = self._clock()
        wait = 0.0
        for key in (("user", username.lower()), ("address", address)):
            failures = self._prune(key, now)
            if len(failures) >= self._limits[key[0]]:
                wait = max(wait, failures[0] + self._window - now)
        return wait

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        for key in (("user", username.lower()), ("address", address)):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(("user", username.lower()), None)

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] + self._window <= now:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures
