"""The audit log through the real server: what is logged, verification, and tampering caught."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from recorder.seal.manifest import parse_manifest
from recorder.seal.signing import Signer
from server.audit import AuditLog
from server.audit.cli import verify_command
from server.audit.log import SIGNED_HERE_FILE, CheckpointRefused
from server.auth.principal import Role
from server.commands import operator
from server.db.engine import create_engine, migrate, session_factory
from server.db.models import AuditCheckpoint, AuditEntry
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_recording import _record, _sealed, _stored
from tests.support.audit import (
    audit_log_away,
    documented_audit_check,
    documented_export_commands,
    launder,
)
from tests.support.postgres import database_url, libpq_dsn
from tests.support.server import PASSWORD, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")


def _keys(server: RunningServer) -> Path:
    return server.settings.data_dir / "keys" / "public"


def _engine(server: RunningServer) -> AsyncEngine:
    return create_async_engine(server.settings.effective_database_url)


async def _verify(server: RunningServer) -> tuple[int, str]:
    out = io.StringIO()
    code = await verify_command(server.services.audit, _keys(server), out=out)
    return code, out.getvalue()


# `vteller ARGS` run by another user than the one it really is (the data directory's owner):
# giving the directory away instead would need root.
AS_ANOTHER_USER = (
    "import os, sys; me = os.geteuid(); os.geteuid = lambda: me + 1; "
    "from server.cli import main; sys.exit(main())"
)


async def _cli(
    server: RunningServer, *args: str, as_another_user: bool = False
) -> subprocess.CompletedProcess[str]:
    """`vteller ARGS`, as an operator runs it on the server's machine."""
    env = os.environ | {
        "VTELLER_DATA_DIR": str(server.settings.data_dir),
        "VTELLER_DATABASE_URL": server.settings.database_url,
    }
    command = ["-c", AS_ANOTHER_USER] if as_another_user else ["-m", "server"]
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, *command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _actions(server: RunningServer) -> list[str]:
    rows = await server.services.audit.tail(1000)
    return [row.action for row in rows]


async def test_a_call_is_logged_and_the_log_verifies(server: RunningServer) -> None:
    await server.user("admin1", Role.ADMIN)
    admin = server.client()
    await admin.login("admin1")
    await admin.call(
        "POST",
        "/api/v1/admin/users",
        {"username": "auditor1", "password": PASSWORD, "role": "auditor"},
        expect=201,
    )
    guesser = server.client()
    await guesser.call(
        "POST", "/api/v1/auth/login", {"username": "admin1", "password": "wrong"}, expect=401
    )

    teller, customer, session_id = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        started = await _record(server, teller, customer)
        await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
        await teller.expect("marked")
        await teller.send({"type": "recording_stop"})
        sealed = await _sealed(teller)
        assert sealed["state"] == "sealed"
        await customer.close(leave=True)
        await teller.expect("participant_left")
        await teller.client.call("POST", f"/api/v1/sessions/{session_id}/end")
    finally:
        await customer.close()
        await teller.close()
    await teller.client.call("POST", "/api/v1/auth/logout")

    entries = await server.services.audit.tail(1000)
    actions = [e.action for e in entries]
    for expected in (
        "auth.login",
        "admin.user_created",
        "auth.login_failed",
        "invitation.created",
        "invitation.redeemed",
        "session.joined",
        "recording.requested",
        "recording.consent",
        "recording.started",
        "recording.marked",
        "recording.stopped",
        "recording.sealed",
        "session.left",
        "session.ended",
        "auth.logout",
    ):
        assert expected in actions, (expected, actions)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    by_action = {e.action: e for e in entries}
    failed = by_action["auth.login_failed"]
    assert (failed.actor, failed.target, failed.detail) == (
        "anonymous",
        "admin1",
        {"reason": "invalid_credentials"},
    )
    assert failed.address == "127.0.0.1"
    archive_id = str(started["archive_id"])
    assert by_action["recording.started"].detail == {"archive_id": archive_id}
    seal = by_action["recording.sealed"]
    assert seal.target == archive_id and len(seal.detail["manifest_sha256"]) == 64
    assert by_action["session.ended"].target == session_id
    assert by_action["session.ended"].actor_role == "teller"
    # No credential ever reaches the log.
    dump = json.dumps([e.as_json() for e in entries], ensure_ascii=False)
    assert PASSWORD not in dump and "wrong" not in dump
    assert teller.client.csrf not in dump

    checkpoint = await server.services.audit.checkpoint()
    assert checkpoint is not None and checkpoint.seq == entries[-1].seq
    code, output = await _verify(server)
    assert code == 0, output
    assert output.startswith(f"audit log OK: {len(entries)} entries")

    # The command line, as an operator runs it, on the same database and keys.
    result = await _cli(server, "audit", "verify", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    tail = await _cli(server, "audit", "tail", "-n", "2")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 2, tail.stderr


async def _some_entries(server: RunningServer) -> None:
    """Eight or so entries and a checkpoint, through HTTP only."""
    await server.user("teller1", Role.TELLER)
    teller = server.client()
    await teller.call(
        "POST", "/api/v1/auth/login", {"username": "teller1", "password": "no"}, expect=401
    )
    await teller.login("teller1")
    for name in ("甲", "乙"):
        created = await teller.call(
            "POST",
            "/api/v1/invitations",
            {"business": "wealth", "customer_name": name},
            expect=201,
        )
        await server.client().join_link(created["invitation_url"])
    assert await server.services.audit.checkpoint() is not None
    await teller.call("POST", "/api/v1/auth/logout")
    assert len(await _actions(server)) >= 6


async def _edit(engine: AsyncEngine) -> str:
    async with engine.begin() as db:
        await db.execute(
            update(AuditEntry).where(AuditEntry.seq == 3).values(detail={"reason": "harmless"})
        )
    return "audit log BROKEN: entry 3: hash does not match its content (edited?)"


async def _delete(engine: AsyncEngine) -> str:
    async with engine.begin() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.seq == 4))
    return "audit log BROKEN: entry 4 missing (sequence jumps from 3 to 5)"


async def _swap(engine: AsyncEngine) -> str:
    async with engine.begin() as db:
        await db.execute(update(AuditEntry).where(AuditEntry.seq == 4).values(seq=-4))
        await db.execute(update(AuditEntry).where(AuditEntry.seq == 5).values(seq=4))
        await db.execute(update(AuditEntry).where(AuditEntry.seq == -4).values(seq=5))
    return "audit log BROKEN: entry 4: previous hash does not match entry 3 (reordered or deleted?)"


async def _forge_checkpoint(engine: AsyncEngine) -> str:
    async with engine.begin() as db:
        row = (await db.execute(select(AuditCheckpoint.seq, AuditCheckpoint.signature))).one()
        flipped = ("1" if row.signature[0] == "0" else "0") + row.signature[1:]
        await db.execute(update(AuditCheckpoint).values(signature=flipped))
    return f"audit log BROKEN: checkpoint at {row.seq}: signature invalid"


@pytest.mark.parametrize("tamper", [_edit, _delete, _swap, _forge_checkpoint])
async def test_tampering_is_found_and_named(
    server: RunningServer, tamper: Callable[[AsyncEngine], Awaitable[str]]
) -> None:
    await _some_entries(server)
    assert (await _verify(server))[0] == 0
    engine = _engine(server)
    try:
        expected = await tamper(engine)
    finally:
        await engine.dispose()
    code, output = await _verify(server)
    assert code == 1
    assert output.splitlines()[0] == expected, output


async def test_a_laundered_log_is_reported_and_not_signed(server: RunningServer) -> None:
    """Edited, re-hashed and stripped of its checkpoints by someone with the database alone."""
    audit = server.services.audit
    for n in range(250):
        await audit.append("session.left", actor=f"p_{n}", actor_role="customer", target="s_x")
    [head] = await audit.tail(1)
    assert [c.seq for c in await audit.checkpoints()][:2] == [100, 200]
    engine = _engine(server)
    try:
        await launder(session_factory(engine), 5)
    finally:
        await engine.dispose()

    code, output = await _verify(server)
    assert code == 1
    assert output.splitlines()[0] == (
        f"audit log BROKEN: entries 1..{head.seq} are not signed, though the writer signs each "
        "time the log passes a multiple of 100 (checkpoints deleted?)"
    )
    with pytest.raises(CheckpointRefused):
        await audit.checkpoint()
    # Still logging, never signing.
    await audit.append("session.left", actor="p_x", actor_role="customer", target="s_x")
    assert await audit.checkpoints() == []


async def test_the_command_line_checks_what_this_machine_signed(server: RunningServer) -> None:
    await _some_entries(server)
    signed = await _cli(server, "audit", "checkpoint")
    assert signed.returncode == 0, signed.stderr
    assert (server.settings.data_dir / SIGNED_HERE_FILE).exists()
    engine = _engine(server)
    try:
        # A handful of entries: within the unsigned stretch the spacing allows.
        await launder(session_factory(engine), 3)
    finally:
        await engine.dispose()

    verified = await _cli(server, "audit", "verify")
    assert verified.returncode == 1
    assert "is not the one this machine signed (log rewritten?)" in verified.stdout
    refused = await _cli(server, "audit", "checkpoint")
    assert refused.returncode == 1
    assert refused.stderr.startswith("refused: entry ")
    assert "vteller audit verify" in refused.stderr
    assert await server.services.audit.checkpoints() == []

    # The operator who accepts the gap is named in the log, as for `vteller admin`.
    accepted = await _cli(server, "audit", "checkpoint", "--accept-unsigned", "INC-7 looked into")
    assert accepted.returncode == 0, accepted.stderr
    [forced] = [e for e in await server.services.audit.tail(5) if e.action.endswith("_forced")]
    assert (forced.actor, forced.actor_role) == (operator(), "system")
    assert forced.detail["reason"] == "INC-7 looked into"


async def test_the_command_line_signs_only_as_the_owner_of_the_data_directory(
    server: RunningServer,
) -> None:
    # `sudo vteller audit checkpoint` left audit-signed.json root's (0600): a server running as
    # the directory's owner could not read it, and refused every checkpoint from then on.
    await _some_entries(server)
    data_dir = server.settings.data_dir
    signed_here = (data_dir / SIGNED_HERE_FILE).read_text()
    checkpoints = await server.services.audit.checkpoints()
    owner = pwd.getpwuid(data_dir.stat().st_uid).pw_name
    refused = await _cli(server, "audit", "checkpoint", as_another_user=True)
    assert refused.returncode == 2
    assert f"error: {data_dir} belongs to {owner}" in refused.stderr
    assert f"`sudo -E -u {owner} vteller audit checkpoint ...`" in refused.stderr
    assert (data_dir / SIGNED_HERE_FILE).read_text() == signed_here
    assert await server.services.audit.checkpoints() == checkpoints


async def test_without_the_audit_log_actions_are_refused(server: RunningServer) -> None:
    await server.user("teller1", Role.TELLER)
    teller = server.client()
    await teller.login("teller1")
    async with audit_log_away(server):
        async with teller.http.post(
            teller.base + "/api/v1/invitations",
            json={"business": "wealth", "customer_name": "丙"},
            headers={"X-CSRF-Token": teller.csrf},
        ) as response:
            assert response.status == 503
            body = await response.json()
            assert body["error"]["code"] == "audit_unavailable"
            assert "invitation_url" not in body
        other = server.client()
        async with other.http.post(
            other.base + "/api/v1/auth/login", json={"username": "teller1", "password": PASSWORD}
        ) as response:
            assert response.status == 503
            assert "vteller_staff" not in response.cookies  # no login without its entry
    assert (await _verify(server))[0] == 0
    # The refused invitation left no session behind in the teller's list.
    assert (await teller.call("GET", "/api/v1/sessions"))["sessions"] == []


async def test_a_mark_the_log_refused_is_not_on_the_recordings_timeline(
    server: RunningServer,
) -> None:
    teller, customer, _ = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        started = await _record(server, teller, customer)
        async with asyncio.timeout(10):  # the start is logged just after it is announced
            while True:
                if "recording.started" in await _actions(server):
                    break
                await asyncio.sleep(0.05)
        async with audit_log_away(server):
            await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
            refused = await teller.expect("error")
        assert refused["code"] == "audit_unavailable"
        await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
        marked = await teller.expect("marked")
        await teller.send({"type": "recording_stop"})
        assert (await _sealed(teller))["state"] == "sealed"
    finally:
        await customer.close()
        await teller.close()
    archive = await _stored(server, str(started["archive_id"]))
    manifest = parse_manifest(await asyncio.to_thread(archive.read, "manifest.json"))
    # Once, where the log says: the refused attempt left nothing in the archive.
    assert [(m.name, m.media_ms) for m in manifest.marks[1:]] == [
        ("risk_disclosure.start", marked["media_ms"])
    ]
    [entry] = [e for e in await server.services.audit.tail(100) if e.action == "recording.marked"]
    assert entry.detail["media_ms"] == marked["media_ms"]


async def test_concurrent_writers_never_fork_the_chain(tmp_path: Path, database: str) -> None:
    """Three engines on one database stand for three worker processes appending at once."""
    async with database_url(database) as url:
        await _three_writers(url or f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")


async def _three_writers(url: str) -> None:
    engines = [create_engine(url) for _ in range(3)]
    try:
        await migrate(engines[0])
        logs = [AuditLog(session_factory(engine)) for engine in engines]

        async def burst(log: AuditLog, worker: int) -> None:
            for n in range(25):
                await log.append(
                    "session.left",
                    actor=f"p_{worker}",
                    actor_role="customer",
                    target="s_x",
                    detail={"n": n},
                )

        await asyncio.gather(*(burst(log, i) for i, log in enumerate(logs)))
        report = await logs[0].verify({})
        assert report.ok, report.render()
        assert (report.entries, report.head_seq) == (75, 75)
    finally:
        for engine in engines:
            await engine.dispose()


async def test_the_documented_independent_check_reads_a_real_export(
    tmp_path: Path, database: str
) -> None:
    """docs/audit-log.md 6.1 end to end: a log the server wrote, exported with the documented
    `sqlite3`/`psql` commands, checked by the documented Python, and a tampered row found."""
    async with database_url(database) as url:
        engine = create_engine(url or f"sqlite+aiosqlite:///{tmp_path / 'vteller.db'}")
        signer = Signer.from_seed(bytes(range(0xA0, 0xC0)))
        try:
            await migrate(engine)
            log = AuditLog(session_factory(engine), signer)
            await log.append(
                "recording.marked",
                actor="p_1",
                actor_role="teller",
                target="s_1",
                detail={"moment": "风险揭示", "phase": "start", "media_ms": 61250},
                address="192.0.2.10",
            )
            await log.append("session.left", actor="p_1", actor_role="teller", target="s_1")
            assert await log.checkpoint() is not None
            check = documented_audit_check()

            def export() -> tuple[Any, Any]:
                env = os.environ | {"DATABASE_URL": libpq_dsn(url)} if url else None
                for command in documented_export_commands(database):
                    subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, check=True)
                return (
                    json.loads((tmp_path / "entries.json").read_text("utf-8")),
                    json.loads((tmp_path / "checkpoints.json").read_text("utf-8")),
                )

            entries, checkpoints = await asyncio.to_thread(export)
            assert [e["action"] for e in entries] == ["recording.marked", "session.left"]
            assert check(entries, checkpoints, [signer.public_key_pem()]) == []

            async with engine.begin() as db:
                await db.execute(update(AuditEntry).where(AuditEntry.seq == 1).values(target="x"))
            entries, checkpoints = await asyncio.to_thread(export)
            assert check(entries, checkpoints, [signer.public_key_pem()]) == [
                "entry 1: hash does not match its content (edited?)"
            ]
        finally:
            await engine.dispose()
