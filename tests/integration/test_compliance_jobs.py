"""The server analyses each sealed recording by itself: progress to the teller, a signed report
in the archive, review items for supervisors, every decision in the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from compliance.asr import ensure_model
from compliance.cli import model_cache_dir
from server.auth.principal import Role
from server.db.models import AuditEntry
from tests.integration.test_compliance_analysis import _call, _script
from tests.integration.test_recording import _vteller
from tests.support import server as support


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
