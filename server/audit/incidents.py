"""Archive store failures that matter for evidence, for the audit log (`archive.*`, actor system).

Logs and metrics tell an operator that the store misbehaves; the audit log must tell an auditor
which archives were, for a while, not protected as the bank says they are: an object whose
retention read back is not the COMPLIANCE retention asked for, a legal hold that reads back off,
an object the store refused for good, a recording that could not be sealed. During an outage the
uploader retries every few seconds and the manager every minute, so each kind of failure is
written at most once per archive on each worker until it clears; then `archive.recovered` says
so, with how many further failures went unlogged in between. A failure that never clears by
itself (an object set aside for an operator) is written once. Writing never raises: the storage
work that reports a failure must go on whether or not the log takes the entry.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

import structlog

from server.audit.actions import SYSTEM
from server.audit.log import AuditLog

log = structlog.get_logger(__name__)

RETENTION_UNVERIFIED: Final = "archive.retention_unverified"
LEGAL_HOLD_UNVERIFIED: Final = "archive.legal_hold_unverified"
UPLOAD_FAILED: Final = "archive.upload_failed"
SEAL_FAILED: Final = "archive.seal_failed"
RECOVERED: Final = "archive.recovered"
FAILURES = frozenset({RETENTION_UNVERIFIED, LEGAL_HOLD_UNVERIFIED, UPLOAD_FAILED, SEAL_FAILED})
# Beyond this many archives with a failure outstanding, the oldest are forgotten: one of them
# failing again is then logged again, which is better than a worker's memory growing for ever.
REMEMBERED = 4096
_PREFIX = "archives/"


def archive_of(name: str) -> str:
    """The archive id of an object name (`archives/{id}/...`), or "" for any other name."""
    if not name.startswith(_PREFIX):
        return ""
    archive_id, slash, _ = name[len(_PREFIX) :].partition("/")
    return archive_id if slash else ""


class StorageIncidents:
    """This worker's outstanding storage failures, by archive and kind (see the module)."""

    def __init__(self, audit: AuditLog, remembered: int = REMEMBERED) -> None:
        self._audit = audit
        self._remembered = remembered
        # (action, archive id) -> failures since its entry that were not logged
        self._open: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def failed(self, action: str, archive_id: str, detail: dict[str, Any]) -> None:
        """Log `action` (one of FAILURES) for `archive_id`, unless already logged and not
        recovered since."""
        if action not in FAILURES:
            raise ValueError(f"not a storage failure: {action}")
        if self._first(action, archive_id):
            await self._write(action, archive_id, detail)

    def _first(self, action: str, key: str) -> bool:
        """Whether this failure of `key` is the first since it was last recovered (or ever)."""
        if (action, key) in self._open:
            self._open[(action, key)] += 1
            return False
        self._open[(action, key)] = 0
        while len(self._open) > self._remembered:
            self._open.popitem(last=False)
        return True

    async def recovered(self, action: str, archive_id: str, detail: dict[str, Any]) -> None:
        """`action` no longer holds for `archive_id`: log `archive.recovered` if its failure was
        logged (nothing otherwise, so that every success can be reported cheaply)."""
        suppressed = self._open.pop((action, archive_id), None)
        if suppressed is None:
            return
        await self._write(
            RECOVERED, archive_id, {"failure": action, "suppressed": suppressed} | detail
        )

    def outstanding(self, action: str, archive_id: str) -> bool:
        return (action, archive_id) in self._open

    # -- the uploader's observer (recorder.store.spool.UploadObserver) -----------------------

    async def retention_unverified(self, name: str, error: str) -> None:
        await self.failed(RETENTION_UNVERIFIED, archive_of(name), {"object": name, "error": error})

    async def stored(self, name: str) -> None:
        await self.recovered(RETENTION_UNVERIFIED, archive_of(name), {"object": name})

    async def set_aside(self, name: str | None, reason: str, error: str, spool_file: str) -> None:
        # A spool file whose header cannot be read names no archive: counted under its own
        # file name, so that two such files are two entries.
        archive_id = archive_of(name) if name is not None else ""
        detail = {"object": name, "reason": reason, "error": error, "spool_file": spool_file}
        if self._first(UPLOAD_FAILED, archive_id or f"(spool file {spool_file})"):
            await self._write(UPLOAD_FAILED, archive_id, detail)

    async def _write(self, action: str, archive_id: str, detail: dict[str, Any]) -> None:
        log.warning("archive_incident", action=action, archive_id=archive_id, **detail)
        try:
            await self._audit.append_fact(
                action, actor=SYSTEM, actor_role=SYSTEM, target=archive_id, detail=detail
            )
        except Exception:
            # append_fact logs what it could not write; anything else (a programming error in
            # the detail) must not stop an uploader's retries or a seal's retry pass either.
            log.exception("archive_incident_not_audited", action=action, archive_id=archive_id)
