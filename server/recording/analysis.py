"""The after-call compliance analysis of each sealed recording, as a background job.

When a recording is sealed, a job is queued in the database. It waits until the whole archive is
in the archive store, then runs `vteller compliance analyze` on it in a child process (speech
recognition needs a core for minutes and ~1 GB: in a child, at lower priority, it can neither
stall the worker's media nor take it down). Progress lines from the child are kept in the job's
row and sent to the session's staff; the report the child prints is signed with the recorder's
key and added to the archive (report-NNN.json/.sig, docs/archive-format.md section 11).
Moments the analysis could not decide open review items for supervisors.

Jobs survive restarts: queued or running jobs are picked up again when a worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.manifest import MANIFEST_OBJECT, parse_manifest
from recorder.seal.report import next_report_number, report_object_names, sign_report
from recorder.seal.signing import Signer
from recorder.session import archive_prefix
from recorder.store.retention import Product, ProductKind, retain_until
from recorder.store.s3 import ArchiveBucket, ArchiveStoreError, ArchiveUnavailableError
from server.audit import SYSTEM, AuditLog
from server.auditor.holds import LegalHolds
from server.background import cancel_and_wait
from server.db.engine import DbSession
from server.db.models import ComplianceReport, ComplianceReview, utcnow
from server.settings import Settings

log = structlog.get_logger(__name__)

Notify = Callable[[str, dict[str, Any]], Awaitable[None]]
# How long a job waits for the archive to reach the store before it gives up for now (the
# uploader retries for as long as the store is down; the job is retried at the next start).
UPLOAD_WAIT_SECONDS = 600.0
POLL_SECONDS = 2.0
MAX_ATTEMPTS = 3
# The child runs at lower CPU priority than the worker forwarding media.
NICENESS = 10
# A review claimed but never decided (the worker died in between) is open to others again after
# this long; logging a decision takes well under it.
CLAIM_TIMEOUT = timedelta(minutes=1)


class AnalysisError(RuntimeError):
    pass


class AnalysisJobs:
    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[DbSession],
        signer: Signer,
        bucket: object,
        audit: AuditLog,
    ) -> None:
        self._settings = settings
        self._db = db
        self._signer = signer
        self._bucket = bucket if isinstance(bucket, ArchiveBucket) else None
        self._holds = LegalHolds(db, self._bucket) if self._bucket is not None else None
        self._audit = audit
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self.notify: Notify | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._settings.compliance_analysis:
            return
        async with self._db() as db:
            pending = await db.scalars(
                select(ComplianceReport.archive_id).where(
                    ComplianceReport.state.in_(("queued", "running"))
                )
            )
            for archive_id in pending:
                self._queue.put_nowait(archive_id)
        self._runner = asyncio.create_task(self._run_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._runner)
        self._runner = None

    async def submit(self, archive_id: str, session_id: str) -> None:
        """Queue the analysis of a sealed archive (called when the recording is sealed)."""
        if not self._settings.compliance_analysis:
            return
        async with self._db() as db, db.begin():
            if await db.get(ComplianceReport, archive_id) is None:
                db.add(ComplianceReport(archive_id=archive_id, session_id=session_id))
        self._queue.put_nowait(archive_id)

    # -- the job -------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        # One at a time: two analyses would only compete for the same cores.
        while True:
            archive_id = await self._queue.get()
            try:
                await self._run(archive_id)
            except asyncio.CancelledError:
                raise
            except ArchiveStoreError as exc:
                # The store failed (down, or between a report's two objects): worth another
                # attempt, at the next start like an interrupted job, up to MAX_ATTEMPTS.
                log.warning(
                    "compliance_analysis_store_failed", archive_id=archive_id, error=str(exc)
                )
                await self._update(archive_id, state="queued", error=str(exc)[:2000])
            except Exception as exc:
                log.exception("compliance_analysis_failed", archive_id=archive_id)
                await self._fail(archive_id, str(exc))

    async def _run(self, archive_id: str) -> None:
        async with self._db() as db:
            job = await db.get(ComplianceReport, archive_id)
        if job is None or job.state in ("done", "failed"):
            return
        if job.attempts >= MAX_ATTEMPTS:
            await self._fail(archive_id, "gave up after 3 attempts")
            return
        await self._update(
            archive_id, state="running", stage="waiting_for_upload", attempts=job.attempts + 1
        )
        await self._progress(job.session_id, archive_id, "waiting_for_upload", 0)
        bucket = self._require_bucket()
        manifest_bytes = await self._wait_for_archive(bucket, archive_id)
        document, code = await self._analyze(job.session_id, archive_id)
        report_name, signature_name, digest = await self._store(
            bucket, archive_id, manifest_bytes, document
        )
        legal_hold = await self._hold_with_archive(archive_id, [report_name, signature_name])
        decision = str(document.get("decision", "needs_review"))
        reviews = [m for m in document.get("moments", []) if m.get("decision") == "needs_review"]
        async with self._db() as db, db.begin():
            for moment in reviews:
                db.add(
                    ComplianceReview(
                        archive_id=archive_id,
                        session_id=job.session_id,
                        moment=str(moment.get("id", "?")),
                        reasons=[str(r) for r in moment.get("reasons", [])][:20],
                    )
                )
        await self._update(
            archive_id,
            state="done",
            stage="done",
            progress=1000,
            decision=decision,
            report_object=report_name,
            report_sha256=digest,
            error=None,
        )
        await self._audit.append_fact(
            "compliance.reported",
            actor=SYSTEM,
            actor_role=SYSTEM,
            target=archive_id,
            detail={
                "session_id": job.session_id,
                "decision": decision,
                "report": report_name,
                "report_sha256": digest,
                "reviews": len(reviews),
                "exit_code": code,
            }
            | ({"legal_hold": legal_hold} if legal_hold else {}),
        )
        await self._progress(job.session_id, archive_id, "done", 1000, decision=decision)

    def _require_bucket(self) -> ArchiveBucket:
        if self._bucket is None:
            raise AnalysisError(
                "the archive store is not configured (VTELLER_S3_*): the analysis reads the "
                "archive from it"
            )
        return self._bucket

    async def _wait_for_archive(self, bucket: ArchiveBucket, archive_id: str) -> bytes:
        """The manifest's bytes once the manifest, its signature and every segment and attachment
        are stored."""
        prefix = archive_prefix(archive_id)
        waited = 0.0
        while True:
            try:
                names = set(await bucket.list(prefix))
                if prefix + MANIFEST_OBJECT in names:
                    data = await bucket.get(prefix + MANIFEST_OBJECT)
                    manifest = parse_manifest(data)
                    wanted = {prefix + s.object for s in manifest.sealed_objects}
                    if wanted <= names and prefix + "manifest.sig" in names:
                        return data
            except ArchiveUnavailableError as exc:
                log.info("compliance_waiting_for_store", archive_id=archive_id, error=str(exc))
            if waited >= UPLOAD_WAIT_SECONDS:
                raise AnalysisError(
                    f"archive {archive_id} is not completely in the store after "
                    f"{UPLOAD_WAIT_SECONDS:.0f} s; it is retried when the worker restarts"
                )
            await asyncio.sleep(POLL_SECONDS)
            waited += POLL_SECONDS

    async def _analyze(self, session_id: str, archive_id: str) -> tuple[dict[str, Any], int]:
        keys = self._settings.data_dir / "keys"
        store = self._settings.store
        location = f"s3://{store.bucket}/{archive_prefix(archive_id).rstrip('/')}"
        args = [
            sys.executable, "-m", "server", "compliance", "analyze", location,
            "--keyring", str(keys / "keyring.json"), "--keys", str(keys / "public"),
            "--json", "--progress", "json",
        ]  # fmt: skip
        if self._settings.compliance_scripts_dir is not None:
            args += ["--scripts-dir", str(self._settings.compliance_scripts_dir)]
        env = dict(os.environ)
        # The child reads the store like `vteller verify s3://...` does.
        env.update(
            {
                "VTELLER_S3_ENDPOINT": store.endpoint,
                "VTELLER_S3_ACCESS_KEY": store.access_key,
                "VTELLER_S3_SECRET_KEY": store.secret_key.get_secret_value(),
                "VTELLER_DATA_DIR": str(self._settings.data_dir),
            }
        )
        child = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=lambda: os.nice(NICENESS),
        )
        try:
            out, code, errors = await self._follow(child, session_id, archive_id)
        except BaseException:
            # The worker is stopping (or following the child failed): the job stays `running`
            # and is started again with the worker, so this child must not run on unattended,
            # taking CPU from calls and racing its successor to store a report.
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
            raise
        if code not in (0, 1):
            raise AnalysisError(
                f"vteller compliance analyze exited with {code}: " + " | ".join(errors[-5:])
            )
        try:
            document: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise AnalysisError(f"the analysis printed no report: {exc}") from exc
        return document, code

    async def _follow(
        self, child: asyncio.subprocess.Process, session_id: str, archive_id: str
    ) -> tuple[bytes, int, list[str]]:
        """The child's report (stdout), exit code and non-progress stderr lines; its progress
        lines update the job and the teller's page as they come."""
        assert child.stdout is not None and child.stderr is not None
        out_task = asyncio.ensure_future(child.stdout.read())
        errors: list[str] = []
        try:
            async for raw in child.stderr:
                line = raw.decode("utf-8", "replace").strip()
                try:
                    update_ = json.loads(line)
                    stage = str(update_["stage"])
                    permille = int(float(update_["fraction"]) * 1000)
                except (ValueError, KeyError, TypeError):
                    errors.append(line)
                    continue
                await self._update(archive_id, stage=stage[:32], progress=permille)
                await self._progress(session_id, archive_id, stage, permille)
            return await out_task, await child.wait(), errors
        finally:
            out_task.cancel()

    async def _store(
        self,
        bucket: ArchiveBucket,
        archive_id: str,
        manifest_bytes: bytes,
        document: dict[str, Any],
    ) -> tuple[str, str, str]:
        manifest = parse_manifest(manifest_bytes)
        created = datetime.fromisoformat(manifest.created_at.replace("Z", "+00:00"))
        retain = retain_until(
            Product(ProductKind(manifest.business)), created, self._settings.store.retention
        )
        prefix = archive_prefix(archive_id)
        names = [n.removeprefix(prefix) for n in await bucket.list(prefix)]
        json_name, sig_name = report_object_names(next_report_number(names))
        data, signature = sign_report(document, self._signer)
        # The signature first: if the store fails in between, a lone signature is ignored by
        # verification and only uses up its number, where a lone report would be an unsigned
        # report under retention, failing verification for good.
        await bucket.put(prefix + sig_name, signature, retain)
        await bucket.put(prefix + json_name, data, retain)
        return json_name, sig_name, hashlib.sha256(data).hexdigest()

    async def _hold_with_archive(self, archive_id: str, names: list[str]) -> str | None:
        """A report of an archive under legal hold is held too: "held", "failed" or None."""
        if self._holds is None:
            return None
        prefix = archive_prefix(archive_id)
        try:
            held = await self._holds.extend(archive_id, [prefix + n for n in names])
        except ArchiveStoreError as exc:
            # Retention still protects the report; an auditor setting the hold again holds it.
            log.error("report_legal_hold_failed", archive_id=archive_id, error=str(exc))
            return "failed"
        return "held" if held else None

    # -- what the API reads --------------------------------------------------------------------

    async def for_session(self, session_id: str) -> list[ComplianceReport]:
        async with self._db() as db:
            query = select(ComplianceReport).where(ComplianceReport.session_id == session_id)
            return list(await db.scalars(query.order_by(ComplianceReport.updated_at)))

    async def job(self, archive_id: str) -> ComplianceReport | None:
        async with self._db() as db:
            return await db.get(ComplianceReport, archive_id)

    async def read_report(self, job: ComplianceReport) -> dict[str, Any]:
        """The signed report as stored in the archive (the store is the record, not the DB)."""
        if job.report_object is None:
            raise AnalysisError("the analysis has not produced a report yet")
        data = await self._require_bucket().get(archive_prefix(job.archive_id) + job.report_object)
        if hashlib.sha256(data).hexdigest() != job.report_sha256:
            raise AnalysisError(f"{job.report_object} in the store differs from what was written")
        document: dict[str, Any] = json.loads(data)
        return document

    async def reviews(self, state: str | None) -> list[ComplianceReview]:
        async with self._db() as db:
            query = select(ComplianceReview)
            if state is not None:
                query = query.where(ComplianceReview.state == state)
            return list(await db.scalars(query.order_by(ComplianceReview.id)))

    async def decide(
        self, review_id: int, user_id: str, decision: str, note: str
    ) -> ComplianceReview:
        """Decide an open review; AnalysisError when it is decided (or being decided) already.

        The order keeps both rules of docs/audit-log.md's kind: nothing takes effect before the log
        shows it, and the log shows no decision that did not take effect. The review is first
        claimed (decided_by/decided_at set while it stays open: not yet a decision, undone if the
        log cannot be written), in one conditional update, so of two supervisors deciding at once
        only one gets past it; only that one logs its decision, then applies it.
        """
        claimed_at = utcnow()
        async with self._db() as db, db.begin():
            review = await db.get(ComplianceReview, review_id)
            if review is None:
                raise KeyError(review_id)
            claimed = await db.execute(
                update(ComplianceReview)
                .where(
                    ComplianceReview.id == review_id,
                    ComplianceReview.state == "open",
                    or_(
                        ComplianceReview.decided_by.is_(None),
                        ComplianceReview.decided_at < claimed_at - CLAIM_TIMEOUT,
                    ),
                )
                .values(decided_by=user_id, decided_at=claimed_at)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise AnalysisError(
                    f"review {review_id} was already decided ({review.state})"
                    if review.state != "open"
                    else f"review {review_id} is being decided by {review.decided_by}"
                )
        mine = (
            ComplianceReview.id == review_id,
            ComplianceReview.state == "open",
            ComplianceReview.decided_by == user_id,
            ComplianceReview.decided_at == claimed_at,
        )
        try:
            await self._audit.append(
                "compliance.reviewed",
                actor=user_id,
                actor_role="supervisor",
                target=review.archive_id,
                detail={
                    "review_id": review_id,
                    "moment": review.moment,
                    "decision": decision,
                    "note": note,
                },
            )
        except BaseException:
            async with self._db() as db, db.begin():
                await db.execute(
                    update(ComplianceReview).where(*mine).values(decided_by=None, decided_at=None)
                )
            raise
        async with self._db() as db, db.begin():
            decided = await db.execute(
                update(ComplianceReview)
                .where(*mine)
                .values(state=decision, note=note, decided_at=utcnow())
            )
            if decided.rowcount != 1:  # type: ignore[attr-defined]
                # Only after a stall longer than CLAIM_TIMEOUT, with another claim since.
                raise AnalysisError(f"review {review_id} was claimed by someone else meanwhile")
            fresh = await db.get(ComplianceReview, review_id)
        assert fresh is not None
        return fresh

    # -- bookkeeping ---------------------------------------------------------------------------

    async def _update(self, archive_id: str, **values: Any) -> None:
        async with self._db() as db, db.begin():
            await db.execute(
                update(ComplianceReport)
                .where(ComplianceReport.archive_id == archive_id)
                .values(updated_at=utcnow(), **values)
            )

    async def _fail(self, archive_id: str, error: str) -> None:
        """The job ends without a report: recorded, and the teller's page told, so that it does
        not show the analysis as running for ever (the recording itself is sealed regardless)."""
        await self._update(archive_id, state="failed", error=error[:2000])
        job = await self.job(archive_id)
        if job is not None:
            await self._progress(job.session_id, archive_id, "failed", job.progress or 0)

    async def _progress(
        self, session_id: str, archive_id: str, stage: str, permille: int, **extra: Any
    ) -> None:
        if self.notify is not None:
            with contextlib.suppress(Exception):
                await self.notify(
                    session_id,
                    {"archive_id": archive_id, "stage": stage, "progress": permille, **extra},
                )
