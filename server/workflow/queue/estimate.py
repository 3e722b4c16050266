"""The estimated wait a queued customer is shown (docs/workflow-queue.md, "Estimated wait").

estimate = ceil(position / tellers) x handling time, where `tellers` is the number of tellers
serving the ticket's business who are available or in a call (away ones are not counted), and the
handling time is the median length (start to end) of the most recent ended sessions of the last
seven days; with too few of them, a configured default. The median is used because one very long
call must not make every waiting customer's estimate jump.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import CallSession, utcnow
from server.workflow.queue.config import QueueConfig

HANDLING_LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class HandlingTime:
    seconds: int
    samples: int  # 0: the configured default


@dataclass(frozen=True)
class Estimate:
    seconds: int | None  # None: no teller serving this business is on duty
    tellers: int
    handling: HandlingTime


async def handling_time(db: AsyncSession, config: QueueConfig) -> HandlingTime:
    query = (
        select(CallSession.started_at, CallSession.ended_at)
        .where(
            CallSession.state == "ended",
            CallSession.started_at.is_not(None),
            CallSession.ended_at >= utcnow() - HANDLING_LOOKBACK,
        )
        .order_by(CallSession.ended_at.desc())
        .limit(config.handling_sample)
    )
    durations = [
        (ended - started).total_seconds()
        for started, ended in (await db.execute(query)).all()
        if started is not None and ended is not None
    ]
    if len(durations) < config.handling_min_samples:
        return HandlingTime(config.default_handling_seconds, 0)
    return HandlingTime(max(1, round(statistics.median(durations))), len(durations))


def estimate(position: int, tellers: int, handling: HandlingTime) -> Estimate:
    if tellers <= 0:
        return Estimate(None, 0, handling)
    return Estimate(math.ceil(position / tellers) * handling.seconds, tellers, handling)
