"""The auditors' list of sessions never recorded (docs/auditor.md section 6), on SQLite and
PostgreSQL: the sessions whose evidence `vteller archive purge` has not erased yet and no sealed
archive holds, filtered by the day they ended and by how their identity checks ended (each
step's last attempt), newest first, with their hold and the day the purge erases them; nothing
of the customer; auditors only, every listing in the audit log, and bad criteria refused with
the field and its rule."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.keyring import LocalKeyring
from server.audit import AuditLog
from server.auditor import purge as purging
from server.auditor.config import AuditorConfig
from server.auditor.purge import UnrecordedQuery
from server.auditor.service import AuditorPortal
from server.auth.principal import Role
from server.db.engine import DbSession
from server.db.models import Archive, AuditEntry, CallSession, IdentityCheck, utcnow
from tests.integration.test_archive_purge import AUDITOR, add_unrecorded, database_url
from tests.integration.test_auditor_portal import _staff
from tests.support.customer import CUSTOMER_NAME
from tests.support.database import TELLER_ID, migrated_database
from tests.support.server import RunningServer

__all__ = ["database_url"]  # fixture

REASON = "人脸与证件不符，疑似冒用身份，反欺诈调查"
LISTED = "auditor.sessions_listed"


def auditor_portal(
    tmp_path: Path, db: async_sessionmaker[DbSession], retention_days: int = 30
) -> AuditorPortal:
    keyring = LocalKeyring.open(tmp_path / "keyring.json", create=True)
    return AuditorPortal(
        AuditorConfig(),
        db,
        tmp_path / "data",
        None,
        keyring,
        AuditLog(db),
        unrecorded_retention_days=retention_days,
    )


async def attempts(
    db: async_sessionmaker[DbSession], session_id: str, *steps: tuple[str, str, str]
) -> None:
    """Identity attempts (step, outcome, reason) of the session, a minute apart, in this order."""
    async with db() as session:
        row = await session.get(CallSession, session_id)
        assert row is not None
        start = row.created_at
    async with db() as session, session.begin():
        for n, (step, outcome, reason) in enumerate(steps):
            session.add(
                IdentityCheck(
                    id=str(uuid.uuid4()),
                    session_id=session_id,
                    step=step,
                    outcome=outcome,
                    reason=reason,
                    key_id="k",
                    wrapped_key=b"w",
                    sealed=b"sealed evidence",
                    at=start + timedelta(minutes=n),
                )
            )


async def ended(db: async_sessionmaker[DbSession], session_id: str) -> datetime:
    """When the session's retention runs from: its end, or its creation if it never ended."""
    async with db() as session:
        row = await session.get(CallSession, session_id)
    assert row is not None
    return row.ended_at or row.created_at


async def listed_entries(db: async_sessionmaker[DbSession]) -> list[AuditEntry]:
    async with db() as session:
        query = select(AuditEntry).where(AuditEntry.action == LISTED).order_by(AuditEntry.seq)
        return list(await session.scalars(query))


FACE_FAILED = ("face", "fail", "face_mismatch")


async def test_the_list_shows_the_sessions_the_purge_would_erase_by_identity_outcome(
    tmp_path: Path, database_url: str
) -> None:
    async with migrated_database(tmp_path / "unused.db", database_url) as db:
        # Ended 1 to 45 days ago, each with its customer's data.
        await add_unrecorded(db, "s_unchecked", days=1, identity=False)
        await add_unrecorded(db, "s_impostor", days=2, identity=False)
        await attempts(db, "s_impostor", ("card_front", "pass", "passed"), FACE_FAILED)
        await add_unrecorded(db, "s_retried", days=3, identity=False)
        await attempts(db, "s_retried", FACE_FAILED, ("face", "pass", "passed"))
        # The teller verified manually after the face did not match: still a failed face.
        await add_unrecorded(db, "s_overridden", days=4, identity=False)
        await attempts(db, "s_overridden", FACE_FAILED, ("manual", "pass", "manual"))
        await add_unrecorded(db, "s_held", days=45, identity=False)
        await attempts(db, "s_held", FACE_FAILED)
        # Left waiting (never ended): its retention runs from its creation, as the purge's.
        await add_unrecorded(db, "s_waiting", days=6, identity=False)
        async with db() as session, session.begin():
            waiting = await session.get(CallSession, "s_waiting")
            assert waiting is not None
            waiting.state, waiting.ended_at = "waiting", None
        # Not listed: recorded (held through its archive), erased, or never holding anything.
        await add_unrecorded(db, "s_recorded", days=1, identity=False)
        await attempts(db, "s_recorded", FACE_FAILED)
        await add_unrecorded(db, "s_erased", days=5, identity=False)
        await attempts(db, "s_erased", FACE_FAILED)
        async with db() as session, session.begin():
            session.add(
                Archive(
                    id=str(uuid.uuid4()),
                    session_id="s_recorded",
                    business="wealth",
                    status="sealed",
                    chain_index=10**6,
                )
            )
            await purging._erase_session(session, "s_erased", approved=True)
            session.add(
                CallSession(id="s_nobody", business="wealth", teller_id=TELLER_ID, state="ended")
            )

        portal = auditor_portal(tmp_path, db)
        await portal.set_session_hold(AUDITOR, "s_held", True, REASON)

        async def ids(query: UnrecordedQuery) -> tuple[list[str], bool]:
            found, more = await portal.unrecorded(AUDITOR, query)
            return [s["id"] for s in found], more

        every = ["s_unchecked", "s_impostor", "s_retried", "s_overridden", "s_waiting", "s_held"]
        assert await ids(UnrecordedQuery()) == (every, False)
        failed = ["s_impostor", "s_overridden", "s_held"]
        assert await ids(UnrecordedQuery(identity="failed")) == (failed, False)
        assert await ids(UnrecordedQuery(identity="passed")) == (["s_retried"], False)
        assert await ids(UnrecordedQuery(identity="none")) == (["s_unchecked", "s_waiting"], False)
        assert await ids(UnrecordedQuery(limit=2)) == (["s_unchecked", "s_impostor"], True)
        assert await ids(UnrecordedQuery(limit=6)) == (every, False)
        # UTC days of the end, both included.
        now = utcnow()
        first, last = (now - timedelta(days=4)).date(), (now - timedelta(days=2)).date()
        middle = ["s_impostor", "s_retried", "s_overridden"]
        assert await ids(UnrecordedQuery(first, last)) == (middle, False)
        failed_then = await ids(UnrecordedQuery(first, last, identity="failed"))
        assert failed_then == (["s_impostor", "s_overridden"], False)
        yesterday = (now - timedelta(days=1)).date()
        assert await ids(UnrecordedQuery(date_from=yesterday)) == (["s_unchecked"], False)

        found, _ = await portal.unrecorded(AUDITOR, UnrecordedQuery(identity="failed"))
        impostor, overridden, held = found
        card_at, face_at = (step["at"] for step in impostor["steps"])
        assert datetime.fromisoformat(face_at) - datetime.fromisoformat(card_at) == timedelta(
            minutes=1
        )
        assert impostor == {
            "id": "s_impostor",
            "business": "wealth",
            "state": "ended",
            "teller": {"id": TELLER_ID, "username": "t", "name": "t"},
            "created_at": impostor["created_at"],
            "ended_at": (await ended(db, "s_impostor")).isoformat(),
            "identity": "failed",
            "steps": [
                {"step": "card_front", "outcome": "pass", "reason": "passed", "at": card_at},
                {"step": "face", "outcome": "fail", "reason": "face_mismatch", "at": face_at},
            ],
            "held": False,
            "purge_after": (await ended(db, "s_impostor") + timedelta(days=30)).isoformat(),
        }
        assert [(s["step"], s["outcome"]) for s in overridden["steps"]] == [
            ("face", "fail"),
            ("manual", "pass"),
        ]
        # Held: listed however long ago it ended, its purge date past (the hold keeps it).
        assert held["held"] is True
        assert datetime.fromisoformat(held["purge_after"]) < now
        all_of_them, _ = await portal.unrecorded(AUDITOR, UnrecordedQuery())
        (left_waiting,) = [s for s in all_of_them if s["id"] == "s_waiting"]
        assert (left_waiting["state"], left_waiting["ended_at"]) == ("waiting", None)
        waiting_due = await ended(db, "s_waiting") + timedelta(days=30)
        assert left_waiting["purge_after"] == waiting_due.isoformat()
        # Nothing of the customer: not the name typed in the invitation (nor the card's).
        assert CUSTOMER_NAME not in json.dumps(all_of_them, ensure_ascii=False)
        # The purge's deadline is the deployment's retention.
        weekly = auditor_portal(tmp_path, db, retention_days=7)
        (shown,), _ = await weekly.unrecorded(AUDITOR, UnrecordedQuery(limit=1))
        due = await ended(db, "s_unchecked") + timedelta(days=7)
        assert shown["purge_after"] == due.isoformat()

        entries = await listed_entries(db)
        assert len(entries) == 12
        who = {(e.actor, e.actor_role, e.target) for e in entries}
        assert who == {("u_auditor", "auditor", "")}
        assert entries[7].detail == {
            "date_from": first.isoformat(),
            "date_to": last.isoformat(),
            "identity": "failed",
            "limit": 50,
            "results": 2,
            "more": False,
        }
        assert entries[4].detail["more"] is True and entries[4].detail["results"] == 2


async def test_only_auditors_list_the_sessions_and_bad_criteria_are_refused(
    server: RunningServer,
) -> None:
    teller = await _staff(server, "wang", Role.TELLER)
    invitation = {"business": "wealth", "customer_name": "李女士"}
    created = await teller.call("POST", "/api/v1/invitations", invitation, expect=201)
    session_id = created["session"]["id"]
    path = "/api/v1/auditor/sessions"
    supervisor = await _staff(server, "boss", Role.SUPERVISOR)
    admin = await _staff(server, "root", Role.ADMIN)
    expert = await _staff(server, "expert", Role.EXPERT)
    auditor = await _staff(server, "audit", Role.AUDITOR)
    for client in (teller, supervisor, admin, expert):
        refusal = await client.call("GET", path, expect=403)
        assert refusal["error"]["code"] == "forbidden"
    await server.client().call("GET", path, expect=401)
    db = server.services.sessions._db
    async with db() as session:
        query = select(AuditEntry).where(
            AuditEntry.action == "access.denied", AuditEntry.target == path
        )
        denied = list(await session.scalars(query))
    assert len(denied) == 4
    assert await listed_entries(db) == []

    listed = await auditor.call("GET", path)
    assert (listed["more"], listed["limit"]) == (False, 50)
    (shown,) = listed["sessions"]
    assert (shown["id"], shown["identity"], shown["held"]) == (session_id, "none", False)
    assert shown["steps"] == []
    assert (await auditor.call("GET", f"{path}?identity=failed"))["sessions"] == []
    today = utcnow().date().isoformat()
    today_only = f"{path}?identity=none&date_from={today}&date_to={today}&limit=200"
    assert [s["id"] for s in (await auditor.call("GET", today_only))["sessions"]] == [session_id]

    # Held from the page's form: the list says so.
    hold = {"held": True, "reason": REASON}
    await auditor.call("POST", f"/api/v1/auditor/sessions/{session_id}/hold", hold)
    assert (await auditor.call("GET", path))["sessions"][0]["held"] is True

    for criteria, field, rule in (
        ("identity=maybe", "identity", "choice"),
        ("limit=0", "limit", "range"),
        ("limit=201", "limit", "range"),
        ("limit=ten", "limit", "format"),
        ("date_from=2026-02-30", "date_from", "format"),
        ("date_to=yesterday", "date_to", "format"),
        ("date_from=2026-11-02&date_to=2026-11-01", "date_to", "invalid"),
        ("page=2", "page", "unknown_field"),
    ):
        refused = await auditor.call("GET", f"{path}?{criteria}", expect=400)
        error = refused["error"]
        said = (error["code"], error["field"], error["rule"])
        assert said == ("invalid_request", field, rule), criteria
    # Refusals list nothing, and are not logged as listings.
    entries = await listed_entries(db)
    assert [e.detail["identity"] for e in entries] == ["all", "failed", "none", "all"]
    assert entries[2].detail == {
        "date_from": today,
        "date_to": today,
        "identity": "none",
        "limit": 200,
        "results": 1,
        "more": False,
    }
