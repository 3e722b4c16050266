"""Requests refused to someone who proved who they are, for the audit log (`access.denied`).

A teller probing the auditor's API or another teller's session is an incident a bank's security
team must see in the tamper-evident log, but a logged-in principal must not be able to grow the
log at will: each principal gets at most one entry per route (and method) per window on each
worker, and the next entry after a window says how many refusals went unlogged in it. Every
refusal is counted on /metrics either way, and so are refusals of requests with no credential
(401), which anyone can make and which are therefore never logged.

Some refusals are answered 404, as if the object did not exist (server.errors.HiddenRefusal: a
download link another auditor exported): those are audited the same way, in a task the answer
does not wait for, so that its time does not tell them from an object that really is missing.
An object that really is missing is not audited: it names nothing anyone could have seen.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from server.audit.log import AuditLog
from server.auth.principal import Principal

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 60.0
# Beyond this many remembered principal+route windows, the expired ones are dropped.
REMEMBERED = 4096
# A path variable as it may be logged: what an id looks like. Anything else (a probe with
# arbitrary text) is logged as OTHER, so that nobody can write what they like into the log.
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
OTHER = "(not an id)"


@dataclass
class _Window:
    since: float
    suppressed: int = 0


class Denials(Collector):
    """This worker's refusals: audits those of principals, counts all of them (/metrics)."""

    def __init__(
        self,
        audit: AuditLog,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._window = window
        self._clock = clock
        self._windows: dict[tuple[str, str, str, str], _Window] = {}
        # (status, code, audited) -> refusals
        self._counts: dict[tuple[str, str, str], int] = {}
        self._later: set[asyncio.Task[None]] = set()

    def count(self, status: int, code: str, *, audited: bool = False) -> None:
        key = (str(status), code, "true" if audited else "false")
        self._counts[key] = self._counts.get(key, 0) + 1

    async def refused(
        self,
        principal: Principal,
        *,
        method: str,
        route: str,
        path_ids: Mapping[str, str],
        reason: str,
        address: str | None,
        status: int = 403,
        code: str = "forbidden",
    ) -> None:
        """Log that `principal` was refused `method route` (the route's pattern, never the raw
        path: some path variables are credentials), unless it was within the window. `status`
        and `code`: the answer, 403 forbidden, or a 404 that hid an object not theirs."""
        actor = principal.user_id or principal.participant_id or ""
        key = (actor, principal.role.value, method, route)
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.since < self._window:
            window.suppressed += 1
            self.count(status, code)
            return
        if len(self._windows) >= REMEMBERED:
            self._windows = {k: w for k, w in self._windows.items() if now - w.since < self._window}
        self._windows[key] = _Window(now)
        log.warning(
            "access_denied", actor=actor, role=principal.role.value, method=method, route=route
        )
        try:
            await self._append(principal, actor, method, route, path_ids, reason, address, window)
        except Exception:
            # The refusal stands either way: a log that cannot be written (the database down)
            # must not turn a 403 into a 500 or a dropped WebSocket into a crash.
            log.exception("access_denied_not_audited", actor=actor, route=route)
            self.count(status, code)
        else:
            self.count(status, code, audited=True)

    def later(self, refusal: Coroutine[Any, Any, None]) -> None:
        """Run `refused(...)` in a task of its own, which the answer does not wait for (`close`
        waits for those still running)."""
        task = asyncio.create_task(refusal)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def close(self) -> None:
        """Wait for the refusals still being written (the worker stops)."""
        await asyncio.gather(*self._later, return_exceptions=True)

    async def _append(
        self,
        principal: Principal,
        actor: str,
        method: str,
        route: str,
        path_ids: Mapping[str, str],
        reason: str,
        address: str | None,
        window: _Window | None,
    ) -> None:
        await self._audit.append_fact(
            "access.denied",
            actor=actor,
            actor_role=principal.role.value,
            target=route,
            detail={
                "method": method,
                "ids": {
                    name: value if _ID.fullmatch(value) else OTHER
                    for name, value in sorted(path_ids.items())
                    if name.endswith("_id")
                },
                "reason": reason,
                "suppressed": window.suppressed if window is not None else 0,
            },
            address=address,
        )

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "vteller_access_refused",
            "Requests refused by authentication (401) or authorization (403, or 404 for an "
            "object that is not theirs) on this worker, by error code; audited: whether the "
            "refusal was written to the audit log (access.denied: principals' authorization "
            "refusals, one per principal and route a minute)",
            labels=["status", "code", "audited"],
        )
        for (status, code, audited), value in sorted(self._counts.items()):
            family.add_metric([status, code, audited], value)
        yield family
