"""The auditor portal's service: every action an auditor takes, each one in the audit log.

The audit entry is written before the result is handed out (a search's results, a recording's
media, an export, a hold change), so nothing is seen or changed that the log does not show.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.export import ExportError
from recorder.seal.keyring import KeyWrapper
from recorder.store.s3 import (
    ArchiveBucket,
    ArchiveStoreError,
    ArchiveUnavailableError,
    RetentionNotVerifiedError,
)
from recorder.verify import ImageUnavailable
from server.audit.incidents import LEGAL_HOLD_UNVERIFIED, StorageIncidents
from server.audit.log import AuditLog
from server.auditor.config import AuditorConfig
from server.auditor.exporting import (
    DOWNLOAD_SECONDS,
    DownloadNotYours,
    ExportSpool,
    PackageDownload,
    PackageDownloads,
    PackageZip,
    write_package_zip,
)
from server.auditor.holds import HoldError, HoldState, LegalHolds, SessionHolds
from server.auditor.idhash import IdNumberHasher
from server.auditor.index import ArchiveIndex, SearchPage, SearchQuery
from server.auditor.names import CardNames
from server.auditor.playback import (
    MB,
    PlaintextCollector,
    PlaybackCache,
    PlaybackError,
    Prepared,
    remux_views,
)
from server.auditor.purge import (
    PURGED,
    IdentityAttempt,
    SessionEvidence,
    UnrecordedQuery,
    UnrecordedSession,
    session_evidence,
    tombstone,
    unrecorded_sessions,
)
from server.auditor.verification import ArchiveVerifier, Verified
from server.auth.principal import Principal
from server.db.engine import DbSession
from server.identity.config import IdentityConfig

log = structlog.get_logger(__name__)


class PortalError(Exception):
    """Something the auditor asked for cannot be done; `code` and the message say why."""

    def __init__(self, status: int, code: str, message: str, *, refusal: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        # A 404 that hides something existing but not the asker's: the truth, for the audit
        # log only (server.errors.HiddenRefusal).
        self.refusal = refusal


@dataclass(frozen=True)
class Actor:
    principal: Principal
    address: str | None

    @property
    def user_id(self) -> str:
        assert self.principal.user_id is not None  # only staff reach the portal
        return self.principal.user_id


class AuditorPortal:
    def __init__(
        self,
        config: AuditorConfig,
        db: async_sessionmaker[DbSession],
        data_dir: Path,
        bucket: ArchiveBucket | None,
        keyring: KeyWrapper,
        audit: AuditLog,
        *,
        unrecorded_retention_days: int = IdentityConfig().unrecorded_retention_days,
    ) -> None:
        keys = data_dir / "keys"
        self.config = config
        hasher = IdNumberHasher.open(keys)
        self.index = ArchiveIndex(
            db,
            hasher,
            CardNames(keys, hasher),
            bucket,
            page_size=config.page_size,
            wait_seconds=config.index_wait_seconds,
        )
        self._db = db
        self._bucket = bucket
        self._audit = audit
        self._public_keys = keys / "public"
        self._exports = ExportSpool(data_dir / "exports")
        self._downloads = PackageDownloads()
        self._verifier = ArchiveVerifier(db, bucket, keyring, self._public_keys) if bucket else None
        self._holds = LegalHolds(db, bucket) if bucket else None
        self._session_holds = SessionHolds(db)
        # The purge's (`identity.unrecorded_retention_days`): when it erases what the list shows.
        self._unrecorded_days = unrecorded_retention_days
        self._playback = PlaybackCache(
            config.playback_cache_mb * MB, config.playback_ttl_minutes * 60.0
        )
        self._preparing: dict[str, asyncio.Task[Prepared]] = {}
        # Where a hold the store does not keep is audited (set by the app: archive.*).
        self.incidents: StorageIncidents | None = None

    async def start(self) -> None:
        await self.index.catch_up()
        try:
            swept = await asyncio.to_thread(self._exports.sweep)
        except OSError as exc:
            # Only disk space is at stake: the portal works, and the next start sweeps again.
            log.warning(
                "auditor_exports_sweep_failed", directory=str(self._exports.root), error=str(exc)
            )
        else:
            if swept:
                log.info("auditor_exports_swept", directory=str(self._exports.root), entries=swept)

    async def stop(self) -> None:
        await self.index.stop()
        await self._downloads.close()

    def _store(self) -> tuple[ArchiveVerifier, LegalHolds, ArchiveBucket]:
        if self._verifier is None or self._holds is None or self._bucket is None:
            raise PortalError(
                503,
                "store_not_configured",
                "The archive store is not configured (VTELLER_S3_*); archives cannot be opened.",
            )
        return self._verifier, self._holds, self._bucket

    async def _log(self, action: str, actor: Actor, target: str, detail: dict[str, Any]) -> None:
        await self._audit.append(
            action,
            actor=actor.user_id,
            actor_role=actor.principal.role.value,
            target=target,
            detail=detail,
            address=actor.address,
        )

    async def _entry(self, archive_id: str) -> dict[str, Any]:
        entry = await self.index.entry(archive_id)
        if entry is None:
            raise PortalError(404, "unknown_archive", "There is no sealed archive with this id.")
        await self._refuse_purged(archive_id, entry["status"])
        return entry

    async def _refuse_purged(self, archive_id: str, status: str | None = None) -> None:
        """410 archive_purged once the archive's purge has begun (its tombstone) or ended (its
        status), with this worker's prepared playback of it dropped. Said as such: verifying what
        is no longer in the store would report it as lost. Checked again before anything kept in
        memory or on disk is handed out (media, a package written before), since `vteller archive
        purge` runs in another process and tells no worker."""
        tomb = await tombstone(self._db, archive_id)
        if tomb is None and status != PURGED:
            return
        self._playback.drop(archive_id)
        when = f" on {tomb.deleted_at:%Y-%m-%d}" if tomb and tomb.deleted_at else ""
        raise PortalError(
            410,
            "archive_purged",
            f"This archive was deleted at the end of its retention{when}; only its "
            "tombstone (manifest hash, retention date, who deleted it) and the audit log "
            "entry archive.purged remain.",
        )

    async def _verify(
        self,
        verifier: ArchiveVerifier,
        archive_id: str,
        collector: PlaintextCollector | None = None,
    ) -> Verified:
        try:
            return await verifier.verify(archive_id, collector)
        except ArchiveUnavailableError as exc:
            raise PortalError(
                503, "store_unavailable", f"The archive store cannot be read right now: {exc}"
            ) from exc

    # -- search and view -----------------------------------------------------------------------

    async def search(self, actor: Actor, query: SearchQuery) -> SearchPage:
        found = await self.index.search(query)
        await self._log(
            "auditor.search",
            actor,
            "",
            {"criteria": query.criteria(), "page": query.page, "results": found.total},
        )
        return found

    async def open(self, actor: Actor, archive_id: str) -> tuple[dict[str, Any], Verified]:
        """The archive's index entry, hold state and a fresh verification of the stored archive."""
        entry = await self._entry(archive_id)
        verifier, holds, _ = self._store()
        verified = await self._verify(verifier, archive_id)
        hold = await holds.state(archive_id)
        entry["hold"] = _hold_view(hold)
        await self._log(
            "auditor.viewed",
            actor,
            archive_id,
            {"verified": verified.ok, "problems": len(verified.report.problems)},
        )
        return entry, verified

    # -- playback ------------------------------------------------------------------------------

    async def play(self, actor: Actor, archive_id: str) -> Prepared:
        """Verify, decrypt and remux the recording (once per cache lifetime) for this viewer."""
        await self._entry(archive_id)
        verifier, _, _ = self._store()
        prepared = self._playback.get(archive_id)
        if prepared is None:
            # Viewers starting the same recording at once wait for one preparation: each one's
            # own would hold another plaintext in memory, for nothing.
            preparing = self._preparing.get(archive_id)
            if preparing is None:
                preparing = asyncio.create_task(self._prepare(verifier, archive_id))
                self._preparing[archive_id] = preparing
                preparing.add_done_callback(functools.partial(self._prepared, archive_id))
            # Shielded: a viewer who leaves does not cancel the preparation the others wait for.
            prepared = await asyncio.shield(preparing)
        await self._log("auditor.played", actor, archive_id, {"views": sorted(prepared.views)})
        return self._playback.admit(prepared, actor.user_id)

    def _prepared(self, archive_id: str, preparing: asyncio.Task[Prepared]) -> None:
        del self._preparing[archive_id]
        # Read here too: when every viewer waiting for it has left, nobody else reads a failure,
        # and asyncio would report it as never retrieved.
        if not preparing.cancelled():
            preparing.exception()

    async def _prepare(self, verifier: ArchiveVerifier, archive_id: str) -> Prepared:
        # A recording that cannot fit in the playback memory is not decrypted any further.
        collector = PlaintextCollector(self.config.playback_cache_mb * MB)
        verified = await self._verify(verifier, archive_id, collector)
        if collector.too_large:
            raise PortalError(
                413,
                "recording_too_large",
                "This recording is larger than the playback memory of the server "
                "(auditor.playback_cache_mb); export it instead.",
            )
        if not verified.ok or verified.report.manifest is None:
            raise PortalError(
                409,
                "verification_failed",
                "This archive does not verify, so its media are not shown as evidence. "
                "Open it to see the problems found.",
            )
        try:
            # The buffer itself: copying hundreds of MB here would stall the event loop.
            views = await asyncio.to_thread(remux_views, collector.data)
            return self._playback.put(archive_id, views)
        except PlaybackError as exc:
            raise PortalError(413, "recording_too_large", str(exc)) from exc

    async def media(self, actor: Actor, archive_id: str, view: str) -> bytes:
        """One view's bytes, for a viewer who started this playback (and so was logged) within
        the playback TTL, while the archive is not being purged; the route has checked the
        caller's login and role."""
        await self._refuse_purged(archive_id)
        prepared = self._playback.admitted(archive_id, actor.user_id)
        if prepared is None:
            raise PortalError(
                409,
                "playback_not_started",
                "Start the playback from the archive's page first (it may have expired).",
            )
        found = prepared.views.get(view)
        if found is None:
            raise PortalError(404, "unknown_view", "This recording has no such view.")
        return found.webm

    async def signature(self, actor: Actor, archive_id: str, transaction_id: str) -> bytes:
        """A transaction's signature image as sealed in the archive, checked against the signed
        manifest on the way; logged before it is handed out."""
        await self._entry(archive_id)
        verifier, _, _ = self._store()
        try:
            png = await verifier.signature_image(archive_id, transaction_id)
        except ImageUnavailable as exc:
            status = 409 if exc.code == "not_verified" else 404
            raise PortalError(
                status, exc.code, f"The signature image cannot be shown: {exc}."
            ) from exc
        except ArchiveUnavailableError as exc:
            raise PortalError(
                503, "store_unavailable", f"The archive store cannot be read right now: {exc}"
            ) from exc
        except ArchiveStoreError as exc:
            raise PortalError(
                409, "not_verified", f"The signature image cannot be shown: {exc}."
            ) from exc
        await self._log(
            "auditor.signature_viewed",
            actor,
            transaction_id,
            {"archive_id": archive_id, "source": "archive"},
        )
        return png

    # -- export and legal hold -----------------------------------------------------------------

    async def export(self, actor: Actor, archive_id: str) -> tuple[str, PackageZip]:
        """Write a ZIP of the verifiable package, in a spool directory of its own, for one
        download by this login (`download`); returns the link's token and the package.

        Written before it is downloaded, not while: the browser saves the download to disk
        itself, however large, and the page learns of a failure before anything is saved."""
        await self._entry(archive_id)
        _, _, bucket = self._store()
        claim = await asyncio.to_thread(self._exports.claim)
        try:
            try:
                package = await asyncio.to_thread(
                    write_package_zip,
                    bucket,
                    archive_id,
                    self._public_keys,
                    claim.path / "package.zip",
                )
            except (ExportError, ArchiveStoreError) as exc:
                raise PortalError(
                    409, "export_failed", f"The archive cannot be exported: {exc}"
                ) from exc
        except BaseException:
            await asyncio.to_thread(claim.release)
            raise
        offered = PackageDownload(
            archive_id, actor.user_id, actor.principal.csrf_token, claim, package
        )
        return self._downloads.offer(offered), package

    @asynccontextmanager
    async def download(self, actor: Actor, token: str) -> AsyncIterator[PackageDownload]:
        """The package behind a link `export` gave this login, logged as exported before it is
        handed out, unless its archive has been purged since it was written; deleted once the
        caller has streamed it (or refused)."""
        unknown = (
            "This download link was used already, has expired (a link works once, within "
            f"{DOWNLOAD_SECONDS} s, in the login that exported), or is not yours: "
            "export the package again."
        )
        try:
            found = self._downloads.take(token, actor.user_id, actor.principal.csrf_token)
        except DownloadNotYours as exc:
            # Answered as a link that does not exist; audited as what it is (access.denied).
            raise PortalError(404, "unknown_download", unknown, refusal=str(exc)) from None
        if found is None:
            raise PortalError(404, "unknown_download", unknown)
        try:
            # The purge's sweep leaves a package an export holds: it is refused here instead.
            await self._refuse_purged(found.archive_id)
            await self._log(
                "auditor.exported",
                actor,
                found.archive_id,
                {"bytes": found.package.size, "sha256": found.package.sha256},
            )
            yield found
        finally:
            await asyncio.to_thread(found.claim.release)

    async def set_hold(
        self, actor: Actor, archive_id: str, held: bool, reason: str
    ) -> dict[str, Any]:
        await self._entry(archive_id)
        _, holds, _ = self._store()
        # One change at a time: a report written meanwhile is held by its writer's extend, which
        # waits here too, after the state it reads has been recorded.
        async with holds.changing(archive_id):
            await self._entry(archive_id)  # again: a purge may have held the lock until now
            current = await holds.state(archive_id)
            try:
                names = await holds.objects(archive_id)
            except HoldError as exc:
                raise PortalError(409, "archive_not_stored", str(exc)) from exc
            # Setting a hold again is allowed when objects were added since (a later compliance
            # report): the new ones are held too.
            if current.held == held and not (held and len(names) > current.objects):
                raise PortalError(
                    409,
                    "hold_unchanged",
                    "The archive is already under legal hold."
                    if held
                    else "The archive is not under legal hold.",
                )
            # Logged first: a hold the log cannot show is not changed.
            await self._log(
                "auditor.hold_set" if held else "auditor.hold_cleared",
                actor,
                archive_id,
                {"reason": reason, "objects": len(names)},
            )
            try:
                await holds.apply(archive_id, names, held, reason)
            except ArchiveStoreError as exc:
                if isinstance(exc, RetentionNotVerifiedError) and self.incidents is not None:
                    # Its auditor.hold_set entry is already written: this says it did not hold.
                    detail = {"error": str(exc), "by": actor.user_id}
                    await self.incidents.failed(LEGAL_HOLD_UNVERIFIED, archive_id, detail)
                raise PortalError(
                    503, "store_unavailable", f"The archive store refused the hold: {exc}"
                ) from exc
            if held and self.incidents is not None:
                await self.incidents.recovered(
                    LEGAL_HOLD_UNVERIFIED, archive_id, {"objects": len(names)}
                )
            state = await holds.record(archive_id, held, reason, actor.user_id, len(names))
        return _hold_view(state) | {"objects": state.objects}

    # -- sessions never recorded ---------------------------------------------------------------

    async def _evidence(self, session_id: str) -> SessionEvidence:
        found = await session_evidence(self._db, session_id)
        if found is None:
            raise PortalError(404, "unknown_session", "There is no session with this id.")
        return found

    async def unrecorded(
        self, actor: Actor, query: UnrecordedQuery
    ) -> tuple[list[dict[str, Any]], bool]:
        """The sessions never recorded whose evidence the purge has not erased yet, newest first
        (docs/auditor.md section 6), and whether more matched than `query.limit`: for an auditor
        to see which to hold before their retention ends."""
        found, more = await unrecorded_sessions(self._db, query, self._unrecorded_days)
        # The criteria are days and an outcome, nothing of a person: logged as asked.
        await self._log(
            "auditor.sessions_listed",
            actor,
            "",
            {
                "date_from": query.date_from.isoformat() if query.date_from else None,
                "date_to": query.date_to.isoformat() if query.date_to else None,
                "identity": query.identity,
                "limit": query.limit,
                "results": len(found),
                "more": more,
            },
        )
        return [_unrecorded_view(session) for session in found], more

    async def session(self, actor: Actor, session_id: str) -> dict[str, Any]:
        """What an auditor sees of a session before holding it (docs/auditor.md section 6):
        whether it was recorded, its identity attempts' outcomes (never their evidence), whether
        its customer's data is still there, and its hold."""
        evidence = await self._evidence(session_id)
        hold = await self._session_holds.state(session_id)
        await self._log(
            "auditor.session_viewed",
            actor,
            session_id,
            {"identity_records": len(evidence.attempts), "held": hold.held},
        )
        return {
            "id": evidence.session_id,
            "business": evidence.business,
            "state": evidence.state,
            "created_at": evidence.created_at.isoformat(),
            "ended_at": evidence.ended_at.isoformat() if evidence.ended_at else None,
            "sealed_archives": evidence.sealed_archives,
            "erased": evidence.erased,
            "identity": [_attempt_view(attempt) for attempt in evidence.attempts],
            "hold": _hold_view(hold),
        }

    async def set_session_hold(
        self, actor: Actor, session_id: str, held: bool, reason: str
    ) -> dict[str, Any]:
        """Set or clear the legal hold of a session never recorded, which `vteller archive
        purge` obeys. Under the lock its purge takes: a hold set while the session is being
        erased waits for it, and then is refused (410 session_purged)."""
        holds = self._session_holds
        async with holds.changing(session_id):
            evidence = await self._evidence(session_id)
            current = await holds.state(session_id)
            if current.held == held:
                raise PortalError(
                    409,
                    "hold_unchanged",
                    "The session is already under legal hold."
                    if held
                    else "The session is not under legal hold.",
                )
            if held and evidence.sealed_archives:
                raise PortalError(
                    409,
                    "session_recorded",
                    "The session was recorded: put its archive under legal hold instead "
                    f"({', '.join(evidence.sealed_archives)}).",
                )
            if held and evidence.erased:
                raise PortalError(
                    410,
                    "session_purged",
                    "The customer data of this session has been erased at the end of its "
                    "retention (audit log: identity.purged); there is nothing left to hold.",
                )
            # Logged first: a hold the log cannot show is not changed.
            await self._log(
                "auditor.session_hold_set" if held else "auditor.session_hold_cleared",
                actor,
                session_id,
                {"reason": reason, "identity_records": len(evidence.attempts)},
            )
            state = await holds.record(session_id, held, reason, actor.user_id)
        return _hold_view(state)


def _unrecorded_view(session: UnrecordedSession) -> dict[str, Any]:
    teller_id, username, name = session.teller
    return {
        "id": session.session_id,
        "business": session.business,
        "state": session.state,
        "teller": {"id": teller_id, "username": username, "name": name},
        "created_at": session.created_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "identity": session.identity,
        "steps": [_attempt_view(step) for step in session.steps],
        "held": session.held,
        "purge_after": session.purge_after.isoformat(),
    }


def _attempt_view(attempt: IdentityAttempt) -> dict[str, Any]:
    """An identity attempt's step, outcome, reason code and time: nothing of its evidence."""
    return asdict(attempt) | {"at": attempt.at.isoformat()}


def _hold_view(state: HoldState) -> dict[str, Any]:
    return {
        "held": state.held,
        "reason": state.reason,
        "changed_by": state.changed_by,
        "changed_at": state.changed_at.isoformat() if state.changed_at else None,
    }
