"""Legal holds on sessions never recorded: `vteller archive purge` keeps a held session's
identity records and customer data until the hold is released, a hold and the session's purge
never interleave (SQLite and PostgreSQL, real MinIO for the purge's store), and only auditors
look sessions up and hold them, every time in the audit log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.keyring import LocalKeyring
from recorder.store.config import StoreSettings
from recorder.store.s3 import ArchiveBucket
from server.audit import AuditLog
from server.auditor import purge as purging
from server.auditor.config import AuditorConfig
from server.auditor.service import AuditorPortal, PortalError
from server.auth.principal import Role
from server.db.engine import DbSession
from server.db.models import Archive, AuditEntry, IdentityCheck
from tests.integration.test_archive_purge import (
    AUDITOR,
    add_unrecorded,
    assert_erased,
    count,
    database_url,
    opened,
    purge,
    purger,
)
from tests.integration.test_archive_store import bucket, store_settings
from tests.integration.test_auditor_portal import _staff
from tests.support.customer import customer_data
from tests.support.database import migrated_database
from tests.support.server import RunningServer

__all__ = ["bucket", "database_url", "store_settings"]  # fixtures

REASON = "人脸与证件不符，疑似冒用身份，反欺诈调查"
RELEASED = "调查结束，不再需要保全"


def auditor_portal(tmp_path: Path, db: async_sessionmaker[DbSession]) -> AuditorPortal:
    """A worker's portal: session holds need neither the store nor the archives' keys."""
    keyring = LocalKeyring.open(tmp_path / "keyring.json", create=True)
    return AuditorPortal(AuditorConfig(), db, tmp_path / "data", None, keyring, AuditLog(db))


async def identity_records(db: async_sessionmaker[DbSession], session_id: str) -> int:
    return await count(db, select(func.count()).where(IdentityCheck.session_id == session_id))


async def audited(db: async_sessionmaker[DbSession], prefix: str) -> list[AuditEntry]:
    query = select(AuditEntry).where(AuditEntry.action.like(f"{prefix}%"))
    async with db() as session:
        return list(await session.scalars(query.order_by(AuditEntry.seq)))


async def refused(code: str, change: Awaitable[object]) -> PortalError:
    with pytest.raises(PortalError) as caught:
        await change
    assert caught.value.code == code, caught.value
    return caught.value


@pytest.fixture
def purging_url(
    tmp_path: Path,
    bucket: ArchiveBucket,
    store_settings: StoreSettings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The database `vteller archive purge` (`purge`) runs on, with its data directory and
    bucket."""
    (tmp_path / "var").mkdir()
    for name, value in (
        ("VTELLER_DATA_DIR", str(tmp_path / "var")),
        ("VTELLER_DATABASE_URL", database_url),
        ("VTELLER_STORE__BUCKET", bucket.name),
    ):
        monkeypatch.setenv(name, value)
    return database_url


async def test_a_held_unrecorded_session_is_kept_by_the_purge_until_released(
    tmp_path: Path, purging_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = purging_url
    async with migrated_database(tmp_path / "unused.db", database_url) as db:
        await add_unrecorded(db, "s_impostor", days=31)
        await add_unrecorded(db, "s_other", days=31)
        portal = auditor_portal(tmp_path, db)
        seen = await portal.session(AUDITOR, "s_impostor")
        assert (seen["sealed_archives"], seen["erased"], seen["hold"]["held"]) == ([], False, False)
        assert [(a["step"], a["outcome"]) for a in seen["identity"]] == [("card_front", "pass")]
        hold = await portal.set_session_hold(AUDITOR, "s_impostor", True, REASON)
        assert (hold["held"], hold["reason"], hold["changed_by"]) == (True, REASON, "u_auditor")
        await refused(
            "hold_unchanged", portal.set_session_hold(AUDITOR, "s_impostor", True, REASON)
        )
        await refused("hold_unchanged", portal.set_session_hold(AUDITOR, "s_other", False, REASON))
        held = await customer_data(db, "s_impostor")
        other = await customer_data(db, "s_other")

    # Listed as kept, with why; the other session past its retention is due.
    assert await purge() == 0
    out = capsys.readouterr().out
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    assert "kept  customer data of unrecorded session s_impostor (1 identity record(s))" in out, out
    assert f": legal hold since {today} ({REASON})" in out
    assert "due   customer data of unrecorded session s_other (1 identity record(s))" in out
    assert "1 unrecorded session(s) due" in out

    assert await purge("--apply") == 0
    out = capsys.readouterr().out
    assert "erased the customer data of unrecorded session s_other" in out
    assert (
        "s_impostor" in out
        and "erased the customer data of unrecorded session s_impostor" not in out
    )
    async with opened(database_url) as db:
        assert await customer_data(db, "s_impostor") == held
        assert await identity_records(db, "s_impostor") == 1
        assert await identity_records(db, "s_other") == 0
        assert_erased(await customer_data(db, "s_other"), other, approved=False)
        released = await auditor_portal(tmp_path, db).set_session_hold(
            AUDITOR, "s_impostor", False, RELEASED
        )
        assert released["held"] is False

    # Released: due again, and erased at the next run.
    assert await purge("--apply") == 0
    out = capsys.readouterr().out
    assert "erased the customer data of unrecorded session s_impostor, 1 identity record(s)" in out
    async with opened(database_url) as db:
        assert await identity_records(db, "s_impostor") == 0
        assert_erased(await customer_data(db, "s_impostor"), held, approved=False)
        # Nothing is left to hold now: said as such, and not logged as a hold.
        portal = auditor_portal(tmp_path, db)
        await refused(
            "session_purged", portal.set_session_hold(AUDITOR, "s_impostor", True, REASON)
        )
        assert (await portal.session(AUDITOR, "s_impostor"))["erased"] is True
        entries = [
            (e.action, e.target, e.actor, e.actor_role, e.detail.get("reason"))
            for e in await audited(db, "auditor.session_hold")
        ]
        assert entries == [
            ("auditor.session_hold_set", "s_impostor", "u_auditor", "auditor", REASON),
            ("auditor.session_hold_cleared", "s_impostor", "u_auditor", "auditor", RELEASED),
        ]
        viewed = await audited(db, "auditor.session_viewed")
        assert [(e.target, e.detail) for e in viewed] == [
            ("s_impostor", {"identity_records": 1, "held": False}),
            ("s_impostor", {"identity_records": 0, "held": False}),
        ]
        purged = await audited(db, "identity.purged")
        assert [e.target for e in purged] == ["s_other", "s_impostor"]


async def test_a_hold_and_the_sessions_purge_never_interleave(
    tmp_path: Path,
    bucket: ArchiveBucket,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with migrated_database(tmp_path / "db.sqlite", database_url) as db:
        for session_id in ("s_erasing", "s_listed"):
            await add_unrecorded(db, session_id, days=31)
        portal = auditor_portal(tmp_path, db)
        run = purger(tmp_path, db, bucket)
        listed = {c.session_id: c for c in await run.unrecorded()}
        assert all(c.kept is None for c in listed.values())

        # The purge began erasing first: a hold set meanwhile waits for it, then finds nothing
        # left to hold (without the lock it would be recorded over data being erased).
        erasing = asyncio.Event()
        erase = purging._erase_session

        async def slowly(session: DbSession, session_id: str, *, approved: bool) -> int:
            erasing.set()
            await asyncio.sleep(0.5)
            return await erase(session, session_id, approved=approved)

        monkeypatch.setattr(purging, "_erase_session", slowly)
        purged = asyncio.create_task(run.purge_session(listed["s_erasing"]))
        await erasing.wait()
        hold = portal.set_session_hold(AUDITOR, "s_erasing", True, REASON)
        await refused("session_purged", hold)
        assert await purged == 1
        assert await audited(db, "auditor.session_hold") == []

        # The hold was set after the purge listed the session: the purge keeps it all the same.
        before = await customer_data(db, "s_listed")
        await portal.set_session_hold(AUDITOR, "s_listed", True, REASON)
        kept = await run.purge_session(listed["s_listed"])
        assert isinstance(kept, str) and kept.startswith("legal hold since ") and REASON in kept
        assert await customer_data(db, "s_listed") == before
        assert await identity_records(db, "s_listed") == 1
        assert [e.target for e in await audited(db, "identity.purged")] == ["s_erasing"]


async def test_only_auditors_look_up_and_hold_sessions(server: RunningServer) -> None:
    teller = await _staff(server, "wang", Role.TELLER)
    sessions = []
    for _ in range(2):
        invitation = {"business": "wealth", "customer_name": "李女士"}
        created = await teller.call("POST", "/api/v1/invitations", invitation, expect=201)
        sessions.append(created["session"]["id"])
    session_id, recorded = sessions
    base = f"/api/v1/auditor/sessions/{session_id}"
    hold = {"held": True, "reason": REASON}
    supervisor = await _staff(server, "boss", Role.SUPERVISOR)
    admin = await _staff(server, "root", Role.ADMIN)
    expert = await _staff(server, "expert", Role.EXPERT)
    auditor = await _staff(server, "audit", Role.AUDITOR)
    for client in (teller, supervisor, admin, expert):
        await client.call("GET", base, expect=403)
        await client.call("POST", f"{base}/hold", hold, expect=403)
    anonymous = server.client()
    await anonymous.call("GET", base, expect=401)
    await anonymous.call("POST", f"{base}/hold", hold, expect=401)

    seen = (await auditor.call("GET", base))["session"]
    assert (seen["id"], seen["state"], seen["sealed_archives"]) == (session_id, "waiting", [])
    assert seen["erased"] is False and seen["hold"]["held"] is False
    unknown = await auditor.call("GET", "/api/v1/auditor/sessions/s_nope", expect=404)
    assert unknown["error"]["code"] == "unknown_session"
    await auditor.call("POST", f"{base}/hold", {"held": True, "reason": "x"}, expect=400)
    token, auditor.csrf = auditor.csrf, ""
    await auditor.call("POST", f"{base}/hold", hold, expect=403)
    auditor.csrf = token

    set_ = (await auditor.call("POST", f"{base}/hold", hold))["hold"]
    assert (set_["held"], set_["reason"]) == (True, REASON)
    again = await auditor.call("POST", f"{base}/hold", hold, expect=409)
    assert again["error"]["code"] == "hold_unchanged"
    assert (await auditor.call("GET", base))["session"]["hold"]["reason"] == REASON

    # A recorded session is held through its archive.
    archive_id = str(uuid.uuid4())
    async with server.services.sessions._db() as db, db.begin():
        db.add(
            Archive(
                id=archive_id,
                session_id=recorded,
                business="wealth",
                status="sealed",
                chain_index=10**6,
            )
        )
    path = f"/api/v1/auditor/sessions/{recorded}/hold"
    refusal = await auditor.call("POST", path, hold, expect=409)
    assert refusal["error"]["code"] == "session_recorded"
    assert archive_id in refusal["error"]["message"]

    released = await auditor.call("POST", f"{base}/hold", {"held": False, "reason": RELEASED})
    assert released["hold"]["held"] is False
    entries = await audited(server.services.sessions._db, "auditor.session_hold")
    assert [(e.action, e.target, e.actor_role, e.detail["reason"]) for e in entries] == [
        ("auditor.session_hold_set", session_id, "auditor", REASON),
        ("auditor.session_hold_cleared", session_id, "auditor", RELEASED),
    ]
    viewed = await audited(server.services.sessions._db, "auditor.session_viewed")
    assert [e.target for e in viewed] == [session_id, session_id]
