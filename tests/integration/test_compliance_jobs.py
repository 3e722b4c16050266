"""The server analyses each sealed recording by itself: progress to the teller, a signed report
in the archive, review items for supervisors, every decision in the audit log."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from compliance.asr import ensure_model
from compliance.cli import model_cache_dir
from recorder.seal.keyring import LocalKeyring
from recorder.seal.manifest import manifest_sha256
from recorder.seal.signing import Signer
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket, ArchiveUnavailableError, PutResult
from server.audit import AuditLog
from server.auth.principal import Role
from server.db.engine import DbSession
from server.db.models import (
    AuditEntry,
    ComplianceReport,
    ComplianceReview,
)
from server.recording.analysis import MAX_ATTEMPTS, AnalysisError, AnalysisJobs
from tests.integration.test_archive_store import bucket, store_settings
from tests.integration.test_compliance_analysis import _call, _script
from tests.integration.test_recording import _vteller
from tests.support import server as support
from tests.support.archive import seal_empty
from tests.support.database import add_session, migrated_database

__all__ = ["bucket", "store_settings"]  # fixtures


@pytest.fixture
async def analysing(tmp_path: Path) -> AsyncIterator[support.RunningServer]:
    # The bank's own script replaces the shipped one by id (here: a short test script).
    script = yaml.safe_load(_script()) | {"id": "bank_wealth_product"}
    async with analysing_server(tmp_path, script) as running:
        yield running


@asynccontextmanager
async def analysing_server(
    tmp_path: Path, script: dict[str, Any]
) -> AsyncIterator[support.RunningServer]:
    """A server that analyses each sealed recording against `script` (its `id` says which
    shipped script it replaces), with the Whisper model in place."""
    data_dir = tmp_path / "server"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / f"{script['id']}.yaml").write_text(
        yaml.safe_dump(script, allow_unicode=True), encoding="utf-8"
    )
    model = await asyncio.to_thread(ensure_model, tmp_path / "models")
    cache = model_cache_dir(data_dir)
    cache.mkdir(parents=True)
    (cache / model.name).symlink_to(model, target_is_directory=True)
    settings = support.test_settings(
        data_dir, compliance_analysis=True, compliance_scripts_dir=scripts
    )
    async with support.running_server(settings) as running:
        yield running


async def _analysed(server: support.RunningServer, archive_id: str) -> dict[str, Any]:
    analysis = server.services.analysis
    async with asyncio.timeout(300):
        while True:
            job = await analysis.job(archive_id)
            if job is not None and job.state in ("done", "failed"):
                break
            await asyncio.sleep(1)
    assert job.state == "done", job.error
    return {"decision": job.decision, "report": job.report_object}


async def test_a_sealed_recording_is_analysed_signed_and_reviewed(
    analysing: support.RunningServer,
) -> None:
    server = analysing
    archive_id = await _call(server, "teller_risk_disclosure.wav")
    job = await _analysed(server, archive_id)
    teller = server.clients[0]  # the call's teller, still logged in
    session_id = (await teller.call("GET", "/api/v1/sessions"))["sessions"][0]["id"]
    listed = await teller.call("GET", f"/api/v1/sessions/{session_id}/compliance")
    assert [r["state"] for r in listed["reports"]] == ["done"]
    report = (await teller.call("GET", f"/api/v1/archives/{archive_id}/report"))["report"]
    # What is judged, and how well, is test_compliance_analysis.py's subject; here: that the
    # server ran the analysis on this archive, with its script, and kept its result.
    moments = {m["id"]: m for m in report["moments"]}
    assert moments["consent"]["span_ms"] and moments["risk_disclosure"]["lines"]
    assert moments["closing"]["decision"] == "needs_review"  # never marked
    assert report["archive_id"] == archive_id
    assert job["report"] == "report-001.json" and job["decision"] == report["decision"]
    assert report["decision"] in ("needs_review", "fail")
    assert report["script"]["id"] == "bank_wealth_product"
    assert report["signing_key_id"]
    html = await teller.http.get(f"{server.url}/api/v1/archives/{archive_id}/report.html")
    assert html.status == 200 and "录音录像告知与同意" in await html.text()
    # The report's own inline styles are allowed on it alone, and nothing else is: no script.
    assert html.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src")
    customer = server.clients[1]
    refused = await customer.http.get(f"{server.url}/api/v1/archives/{archive_id}/report")
    assert refused.status in (401, 403)

    # The report is in the archive, signed and bound to it: `vteller verify` says so.
    bucket = server.settings.store.bucket
    verified = await _vteller(
        server.settings.data_dir, "verify", f"s3://{bucket}/archives/{archive_id}"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "report: report-001.json (signed, bound to this manifest)" in verified.stdout

    # Unmarked moments wait for a supervisor; the decision is logged before it takes effect.
    await server.user("boss", Role.SUPERVISOR)
    supervisor = server.client()
    await supervisor.login("boss")
    reviews = (await supervisor.call("GET", "/api/v1/reviews"))["reviews"]
    assert {r["moment"] for r in reviews} >= {"closing"}
    assert all(r["archive_id"] == archive_id for r in reviews)
    first = reviews[0]["id"]
    await teller.call(
        "POST", f"/api/v1/reviews/{first}", {"decision": "approved", "note": "看过"}, expect=403
    )
    decided = await supervisor.call(
        "POST", f"/api/v1/reviews/{first}", {"decision": "approved", "note": "已回看录像，环节完整"}
    )
    assert decided["review"]["state"] == "approved"
    again = {"decision": "rejected", "note": "再次决定"}
    await supervisor.call("POST", f"/api/v1/reviews/{first}", again, expect=409)
    async with server.services.sessions._db() as db:
        actions = list(await db.scalars(select(AuditEntry.action)))
    assert "compliance.reported" in actions and "compliance.reviewed" in actions


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        await add_session(factory, archives=(ARCHIVE,))
        yield factory


ARCHIVE = str(uuid.uuid4())


def _jobs(tmp_path: Path, db: async_sessionmaker[DbSession], bucket: object) -> AnalysisJobs:
    settings = support.test_settings(tmp_path / "server", compliance_analysis=True)
    signer = Signer.open(tmp_path / "signing.pem", create=True)
    return AnalysisJobs(settings, db, signer, bucket, AuditLog(db))


class _FailsBetweenReportObjects(ArchiveBucket):
    """The store goes away after a report's first object, once."""

    failed = False

    async def put(self, name: str, data: bytes, retain_until: datetime) -> PutResult:
        if name.endswith(".json") and "report-" in name and not self.failed:
            self.failed = True
            raise ArchiveUnavailableError("archive store unreachable: connection reset")
        return await super().put(name, data, retain_until)


async def test_a_store_failure_mid_report_leaves_no_unsigned_report_and_is_retried(
    tmp_path: Path,
    db: async_sessionmaker[DbSession],
    store_settings: StoreSettings,
    bucket: ArchiveBucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flaky = _FailsBetweenReportObjects.from_settings(store_settings)
    manifest = seal_empty(
        ARCHIVE,
        LocalKeyring.open(tmp_path / "k.json", create=True),
        Signer.open(tmp_path / "signing.pem", create=True),
        "s1",
    )
    document = {
        "format": "vteller-compliance-report/1",
        "archive_id": ARCHIVE,
        "manifest_sha256": manifest_sha256(manifest.data),
        "decision": "pass",
        "moments": [],
    }
    async with db() as session, session.begin():
        session.add(ComplianceReport(archive_id=ARCHIVE, session_id="s1"))

    async def stored(self: AnalysisJobs, bucket: ArchiveBucket, archive_id: str) -> bytes:
        return manifest.data

    async def analysed(
        self: AnalysisJobs, session_id: str, archive_id: str
    ) -> tuple[dict[str, Any], int]:
        return document, 0

    monkeypatch.setattr(AnalysisJobs, "_wait_for_archive", stored)
    monkeypatch.setattr(AnalysisJobs, "_analyze", analysed)

    async def run_until(
        jobs: AnalysisJobs, settled: Callable[[ComplianceReport], bool]
    ) -> ComplianceReport:
        await jobs.start()
        try:
            async with asyncio.timeout(30):
                while True:
                    job = await jobs.job(ARCHIVE)
                    assert job is not None
                    if settled(job):
                        return job
                    await asyncio.sleep(0.05)
        finally:
            await jobs.stop()

    first = await run_until(
        _jobs(tmp_path, db, flaky), lambda job: job.attempts == 1 and job.state != "running"
    )
    prefix = f"archives/{ARCHIVE}/"
    assert first.state == "queued" and "unreachable" in (first.error or "")
    assert await bucket.list(prefix) == [prefix + "report-001.sig"]
    # The next start retries it: the next number, both objects.
    second = await run_until(
        _jobs(tmp_path, db, flaky), lambda job: job.attempts == 2 and job.state != "running"
    )
    assert second.state == "done" and second.report_object == "report-002.json"
    assert sorted(await bucket.list(prefix)) == [
        prefix + name for name in ("report-001.sig", "report-002.json", "report-002.sig")
    ]


async def test_a_review_decided_twice_at_once_takes_and_logs_one_decision(
    tmp_path: Path, db: async_sessionmaker[DbSession]
) -> None:
    async with db() as session, session.begin():
        review = ComplianceReview(archive_id=ARCHIVE, session_id="s1", moment="closing")
        session.add(review)
    jobs = _jobs(tmp_path, db, None)
    results = await asyncio.gather(
        jobs.decide(review.id, "boss1", "approved", "看过"),
        jobs.decide(review.id, "boss2", "rejected", "不完整"),
        return_exceptions=True,
    )
    [decided] = [r for r in results if isinstance(r, ComplianceReview)]
    [refused] = [r for r in results if isinstance(r, AnalysisError)]
    assert "review" in str(refused)
    async with db() as session:
        entries = list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action == "compliance.reviewed")
            )
        )
        stored = await session.get(ComplianceReview, review.id)
    assert stored is not None and stored.state == decided.state
    assert [e.detail["decision"] for e in entries] == [decided.state]
    assert [e.actor for e in entries] == [decided.decided_by]


async def test_a_stopping_worker_leaves_no_analysis_running(
    tmp_path: Path, db: async_sessionmaker[DbSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def long_analysis(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        # Stands for `vteller compliance analyze` on a long call: minutes of work.
        child = await spawn(sys.executable, "-c", "import time; time.sleep(120)", **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(asyncio, "create_subprocess_exec", long_analysis)
    jobs = _jobs(tmp_path, db, object())
    running = asyncio.ensure_future(jobs._analyze("s1", ARCHIVE))
    async with asyncio.timeout(30):
        while not started:  # noqa: ASYNC110 - the job starts its child
            await asyncio.sleep(0.05)
    running.cancel()  # the worker stops
    with pytest.raises(asyncio.CancelledError):
        await running
    # The child went with it: the job is started again with the worker, never twice at once.
    assert started[0].returncode is not None


async def test_a_job_that_gives_up_tells_the_teller_it_failed(
    tmp_path: Path, db: async_sessionmaker[DbSession]
) -> None:
    """Without a last message the teller's page would show the analysis running for ever."""
    jobs = _jobs(tmp_path, db, object())
    told: list[tuple[str, dict[str, Any]]] = []

    async def notify(session_id: str, fields: dict[str, Any]) -> None:
        told.append((session_id, fields))

    jobs.notify = notify
    await jobs.submit(ARCHIVE, "s1")
    await jobs._update(ARCHIVE, attempts=MAX_ATTEMPTS, progress=400)
    await jobs._run(ARCHIVE)
    job = await jobs.job(ARCHIVE)
    assert job is not None and job.state == "failed" and job.error == "gave up after 3 attempts"
    assert told == [("s1", {"archive_id": ARCHIVE, "stage": "failed", "progress": 400})]
