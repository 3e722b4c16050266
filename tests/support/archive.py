"""The archive store's uploader, started for a test and stopped however the test ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from recorder.store.spool import Spool, Uploader, UploadTarget


@contextlib.asynccontextmanager
async def running_uploader(
    spool: Spool,
    target: UploadTarget,
    *,
    backoff_min_seconds: float = 0.05,
    backoff_max_seconds: float = 0.5,
) -> AsyncIterator[Uploader]:
    """An uploader emptying `spool` into `target`, retrying within a fraction of a second."""
    uploader = Uploader(
        spool,
        target,
        backoff_min_seconds=backoff_min_seconds,
        backoff_max_seconds=backoff_max_seconds,
    )
    await uploader.start()
    try:
        yield uploader
    finally:
        await uploader.stop()
