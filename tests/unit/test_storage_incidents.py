"""The bookkeeping of archive store failures for the audit log: once per archive and kind until
it recovers, a bounded memory, and nothing that could stop the storage work that reports them."""

from __future__ import annotations

from typing import Any, cast

import pytest

from server.audit.incidents import (
    RECOVERED,
    RETENTION_UNVERIFIED,
    SEAL_FAILED,
    StorageIncidents,
    archive_of,
)
from server.audit.log import AuditLog


class Written:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    async def append_fact(self, action: str, **kwargs: Any) -> None:
        self.entries.append((action, kwargs["target"], kwargs["detail"]))


def incidents(remembered: int = 4096) -> tuple[StorageIncidents, Written]:
    written = Written()
    return StorageIncidents(cast(AuditLog, written), remembered), written


def test_the_archive_of_an_object_name() -> None:
    assert archive_of("archives/a_1/segment-000000") == "a_1"
    assert archive_of("archives/a_1/reports/report-1.json") == "a_1"
    assert archive_of("archives/a_1") == ""  # not an object of an archive
    assert archive_of("a/locked") == ""


async def test_each_kind_is_written_once_per_archive_until_it_recovers() -> None:
    found, written = incidents()
    for _ in range(3):
        await found.failed(SEAL_FAILED, "a_1", {"stage": "retry"})
    await found.failed(SEAL_FAILED, "a_2", {"stage": "retry"})
    await found.failed(RETENTION_UNVERIFIED, "a_1", {"object": "x"})
    await found.recovered(RETENTION_UNVERIFIED, "a_3", {"object": "y"})  # never failed: nothing
    await found.recovered(SEAL_FAILED, "a_1", {"status": "complete"})
    await found.failed(SEAL_FAILED, "a_1", {"stage": "stop"})  # a new failure after recovery
    assert written.entries == [
        (SEAL_FAILED, "a_1", {"stage": "retry"}),
        (SEAL_FAILED, "a_2", {"stage": "retry"}),
        (RETENTION_UNVERIFIED, "a_1", {"object": "x"}),
        (RECOVERED, "a_1", {"failure": SEAL_FAILED, "suppressed": 2, "status": "complete"}),
        (SEAL_FAILED, "a_1", {"stage": "stop"}),
    ]


async def test_the_oldest_outstanding_failures_are_forgotten_beyond_the_bound() -> None:
    found, written = incidents(remembered=2)
    for archive_id in ("a_1", "a_2", "a_3", "a_1"):
        await found.failed(SEAL_FAILED, archive_id, {})
    assert [target for _, target, _ in written.entries] == ["a_1", "a_2", "a_3", "a_1"]
    assert not found.outstanding(SEAL_FAILED, "a_2")


async def test_a_spool_file_naming_no_archive_is_written_once_per_file() -> None:
    found, written = incidents()
    for spool_file in ("1.spool", "1.spool", "2.spool"):
        await found.set_aside(None, "corrupt", "bad magic", spool_file)
    assert [(target, detail["spool_file"]) for _, target, detail in written.entries] == [
        ("", "1.spool"),
        ("", "2.spool"),
    ]


async def test_only_storage_failures_are_taken() -> None:
    found, _ = incidents()
    with pytest.raises(ValueError, match="not a storage failure"):
        await found.failed("auth.login", "a_1", {})
