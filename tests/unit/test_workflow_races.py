"""Races between a decision and what it judged: approvals against a new signature, overlapping
signatures, two tellers claiming one callback, a take (failed or not) against a ticket given
away."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageDraw
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from structlog.testing import capture_logs

from recorder.seal.signing import Signer
from server.auth.principal import Principal, Role
from server.db.engine import DbSession
from server.db.models import (
    Archive,
    CallSession,
    ComplianceReport,
    Invitation,
    Participant,
    QueueCallback,
    QueueTicket,
    SessionEvent,
    StaffLogin,
    TellerProfile,
    Transaction,
    TransactionDecision,
    User,
    utcnow,
)
from server.errors import ApiError
from server.sessions.store import SessionStore
from server.workflow.queue.config import QueueConfig
from server.workflow.queue.service import QueueService
from server.workflow.transactions.config import WorkflowConfig
from server.workflow.transactions.request import Purchase
from server.workflow.transactions.service import Transactions
from tests.support.database import TELLER_ID, migrated_database

Hook = Callable[[], Awaitable[None]]

TELLER = Principal(role=Role.TELLER, display_name="t", csrf_token="x", user_id=TELLER_ID)
SUPERVISOR = Principal(role=Role.SUPERVISOR, display_name="s", csrf_token="x", user_id="u_s")
CUSTOMER = Principal(
    role=Role.CUSTOMER, display_name="c", csrf_token="x", participant_id="p_c", session_id="s_1"
)


class Audit:
    """Takes every entry; runs `hooks[action]` once, as that entry is appended."""

    def __init__(self) -> None:
        self.hooks: dict[str, Hook] = {}
        self.facts: list[tuple[str, str, dict[str, Any]]] = []

    async def append(self, action: str, **_: Any) -> None:
        hook = self.hooks.pop(action, None)
        if hook is not None:
            await hook()

    async def append_fact(
        self, action: str, *, target: str = "", detail: dict[str, Any] | None = None, **_: Any
    ) -> None:
        self.facts.append((action, target, detail or {}))


def _png(offset: int = 0) -> bytes:
    image = Image.new("RGBA", (900, 360), (0, 0, 0, 0))
    line = [(60, 250), (200, 80 + offset), (330, 260), (520, 90), (800, 240)]
    ImageDraw.Draw(image).line(line, fill="black", width=8)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[async_sessionmaker[DbSession]]:
    async with migrated_database(tmp_path / "races.db") as factory:
        async with factory() as db, db.begin():
            db.add(
                User(id="u_s", username="s", display_name="s", role="supervisor", password_hash="x")
            )
            db.add(User(id="u_b", username="b", display_name="b", role="teller", password_hash="x"))
            db.add(CallSession(id="s_1", business="wealth", teller_id=TELLER_ID, state="live"))
        async with factory() as db, db.begin():
            db.add(Participant(id="p_c", session_id="s_1", role="customer", display_name="c"))
            db.add(Archive(id="a_1", session_id="s_1", business="wealth", status="recording"))
            db.add(
                SessionEvent(
                    session_id="s_1",
                    type="identity_result",
                    detail={"decision": "pass", "method": "automatic"},
                )
            )
        yield factory


class Recording:
    """The session's recording as `Transactions` binds into it: the manifest's bindings."""

    def __init__(self) -> None:
        self.archive_id: str | None = "a_1"
        self.bindings: dict[str, str] = {}
        self.delays: list[float] = []

    async def bind(self, session_id: str, tid: str, sha: str, sig: str, png: bytes) -> str | None:
        if self.archive_id is None:
            return None
        # As recorder/session.py: the binding is replaced first, then the journal awaited.
        self.bindings[tid] = sig
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0)
        return self.archive_id

    async def bound(self, archive_id: str, manifest_sha256: str, tid: str) -> str | None:
        """What the sealed manifest binds (bindings.RecordedSignatures reads the stored one)."""
        return self.bindings.get(tid)


async def _nobody(*_: Any) -> None:
    pass


def _transactions(
    db: async_sessionmaker[DbSession], tmp_path: Path, audit: Audit, recording: Recording
) -> Transactions:
    signer = Signer(Ed25519PrivateKey.generate())
    keyring = tmp_path / "keyring.json"
    return Transactions(
        db,
        WorkflowConfig(),
        signer,
        audit,  # type: ignore[arg-type]
        keyring,
        recording.bind,
        _nobody,
        recording.bound,
    )


async def _created(tx: Transactions, db: async_sessionmaker[DbSession]) -> Transaction:
    async with db() as s:
        session = await s.get(CallSession, "s_1")
    assert session is not None
    request = Purchase.model_validate(
        {
            "kind": "purchase",
            "product_type": "wealth",
            "product_code": "W1",
            "amount": {"minor": 100_000, "currency": "CNY"},
            "account": "6222020200112233445",
        }
    )
    return await tx.create(session, TELLER, request)


async def _seal(db: async_sessionmaker[DbSession], compliance: str | None = "pass") -> None:
    async with db() as s, s.begin():
        archive = await s.get(Archive, "a_1")
        assert archive is not None
        archive.status, archive.manifest_sha256 = "sealed", "ab" * 32
        if compliance is not None:
            s.add(
                ComplianceReport(
                    archive_id="a_1",
                    session_id="s_1",
                    state="done",
                    stage="done",
                    decision=compliance,
                    report_object="r",
                    report_sha256="cd" * 32,
                )
            )


async def _decisions(db: async_sessionmaker[DbSession]) -> int:
    async with db() as s:
        return await s.scalar(select(func.count()).select_from(TransactionDecision)) or 0


async def test_an_approval_is_refused_when_the_customer_signs_again_during_it(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    audit, recording = Audit(), Recording()
    tx = _transactions(database, tmp_path, audit, recording)
    row = await tx.sign(await _created(tx, database), CUSTOMER, _png())
    await _seal(database)
    recording.archive_id = None  # the second signature is bound to no recording

    async def sign_again() -> None:
        await tx.sign(row, CUSTOMER, _png(40))

    audit.hooks["transaction.approved"] = sign_again
    with pytest.raises(ApiError) as refused:
        await tx.approve(row, TELLER)
    assert (refused.value.status, refused.value.code) == (409, "signature_changed")
    fresh = await tx.get(row.id)
    assert fresh.state == "signed" and fresh.approval_record is None
    assert fresh.signed_in_archive_id is None and await _decisions(database) == 0


async def test_an_override_is_refused_when_the_customer_signs_again_during_it(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    audit, recording = Audit(), Recording()
    tx = _transactions(database, tmp_path, audit, recording)
    row = await tx.sign(await _created(tx, database), CUSTOMER, _png())
    await _seal(database, compliance="fail")
    with pytest.raises(ApiError):
        await tx.approve(row, TELLER)  # compliance fails: on to a supervisor's override
    row = await tx.get(row.id)
    assert row.state == "awaiting_override"

    async def sign_again() -> None:
        await tx.sign(row, CUSTOMER, _png(40))

    audit.hooks["transaction.approved"] = sign_again
    with pytest.raises(ApiError) as refused:
        await tx.override(row, SUPERVISOR, "The customer confirmed every answer by phone.")
    assert (refused.value.status, refused.value.code) == (409, "signature_changed")
    assert (await tx.get(row.id)).state == "signed"
    assert await _decisions(database) == 1  # the maker's only


@pytest.mark.parametrize("recorded", ["ee" * 32, None])
async def test_no_decision_is_taken_when_the_sealed_manifest_binds_another_signature(
    database: async_sessionmaker[DbSession], tmp_path: Path, recorded: str | None
) -> None:
    recording = Recording()
    tx = _transactions(database, tmp_path, Audit(), recording)
    row = await tx.sign(await _created(tx, database), CUSTOMER, _png())
    await _seal(database)
    [bound] = [c for c in await tx.checks(row) if c.check == "recording_signature"]
    assert (bound.passed, bound.reason) == (True, "bound")
    # The manifest kept another signing's binding, or none: the row alone must not be trusted.
    recording.bindings.pop(row.id)
    if recorded is not None:
        recording.bindings[row.id] = recorded
    # The page's preview of the checks says so too, rather than every check passing.
    [preview] = [c for c in await tx.checks(row) if c.check == "recording_signature"]
    assert (preview.passed, preview.reason) == (False, "signature_not_in_recording")
    with pytest.raises(ApiError) as refused:
        await tx.approve(row, TELLER)
    assert (refused.value.status, refused.value.code) == (409, "signature_not_in_recording")
    assert "sign again during a new dual recording" in refused.value.message
    # Nor a supervisor's decision on it.
    async with database() as s, s.begin():
        await s.execute(
            update(Transaction)
            .where(Transaction.id == row.id)
            .values(state="awaiting_second_approval")
        )
    row = await tx.get(row.id)
    with pytest.raises(ApiError) as refused:
        await tx.approve(row, SUPERVISOR)
    assert refused.value.code == "signature_not_in_recording"
    with pytest.raises(ApiError) as refused:
        await tx.override(row, SUPERVISOR, "The customer confirmed every answer by phone.")
    assert refused.value.code == "signature_not_in_recording"
    fresh = await tx.get(row.id)
    assert fresh.state == "awaiting_second_approval" and fresh.approval_record is None
    assert await _decisions(database) == 0


@pytest.mark.parametrize("delays", [[0.3, 0.0], [0.0, 0.3]])
async def test_overlapping_signatures_leave_one_in_both_manifest_and_row(
    database: async_sessionmaker[DbSession], tmp_path: Path, delays: list[float]
) -> None:
    recording = Recording()
    tx = _transactions(database, tmp_path, Audit(), recording)
    row = await _created(tx, database)
    recording.delays = delays
    results = await asyncio.gather(
        tx.sign(row, CUSTOMER, _png()), tx.sign(row, CUSTOMER, _png(40)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, ApiError)]
    assert len(refused) == 1 and refused[0].code == "signature_changed"
    fresh = await tx.get(row.id)
    assert recording.bindings[row.id] == fresh.signature_sha256
    assert fresh.signed_in_archive_id == "a_1"


async def _queue(
    db: async_sessionmaker[DbSession], tmp_path: Path, audit: Audit, store: Any = None
) -> QueueService:
    async with db() as s, s.begin():
        for user in (TELLER_ID, "u_b"):
            s.add(TellerProfile(user_id=user, skills=["general"], status="available"))
            expires = utcnow() + timedelta(hours=1)
            s.add(
                StaffLogin(token_hash=user * 32, user_id=user, csrf_token="x", expires_at=expires)
            )
    return QueueService(
        db,
        store,
        audit,  # type: ignore[arg-type]
        QueueConfig(),
        timedelta(minutes=30),
        tmp_path / "q.json",
    )


async def test_two_tellers_cannot_both_claim_a_callback(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    queue = await _queue(database, tmp_path, Audit())
    ticket = (await queue.join("other", False)).ticket
    callback = await queue.request_callback(ticket, "13800138000", _nobody)
    # Both read it open before either writes.
    read, both_read = queue._callback, asyncio.Barrier(2)

    async def slow(db: DbSession, callback_id: str) -> QueueCallback:
        found = await read(db, callback_id)
        await both_read.wait()
        return found

    queue._callback = slow  # type: ignore[method-assign]
    other = Principal(role=Role.TELLER, display_name="b", csrf_token="x", user_id="u_b")
    results = await asyncio.gather(
        queue.claim_callback(TELLER, callback.id, _nobody),
        queue.claim_callback(other, callback.id, _nobody),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, tuple)]
    lost = [r for r in results if isinstance(r, ApiError)]
    assert len(won) == 1 and [e.code for e in lost] == ["callback_claimed"]
    async with database() as s:
        stored = await s.get(QueueCallback, callback.id)
    assert stored is not None and stored.claimed_by == won[0][0].claimed_by


async def test_a_refused_claim_does_not_release_another_tellers_claim(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    queue = await _queue(database, tmp_path, Audit())
    ticket = (await queue.join("other", False)).ticket
    callback = await queue.request_callback(ticket, "13800138000", _nobody)

    async def refuse_after_handover(_: QueueCallback) -> None:
        async with database() as s, s.begin():  # as if released and claimed by u_b meanwhile
            await s.execute(
                update(QueueCallback)
                .where(QueueCallback.id == callback.id)
                .values(claimed_by="u_b")
            )
        raise RuntimeError("the audit log refused")

    with pytest.raises(RuntimeError):
        await queue.claim_callback(TELLER, callback.id, refuse_after_handover)
    async with database() as s:
        stored = await s.get(QueueCallback, callback.id)
    assert stored is not None and (stored.state, stored.claimed_by) == ("claimed", "u_b")


async def test_a_failed_take_does_not_give_back_a_ticket_another_teller_took(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    audit = Audit()
    queue = await _queue(database, tmp_path, audit)
    ticket = (await queue.join("other", False)).ticket

    async def taken_by_another() -> None:
        # The sweep gave the slow take's ticket back and another teller took it.
        async with database() as s, s.begin():
            await s.execute(
                update(QueueTicket).where(QueueTicket.id == ticket.id).values(taken_by="u_b")
            )
        raise RuntimeError("the audit log refused")

    audit.hooks["queue.taken"] = taken_by_another
    with pytest.raises(RuntimeError):
        await queue.take_next(TELLER, None, None)
    async with database() as s:
        stored = await s.get(QueueTicket, ticket.id)
    assert stored is not None and (stored.state, stored.taken_by) == ("taken", "u_b")


def _opened_late(
    store: SessionStore,
    database: async_sessionmaker[DbSession],
    ticket_id: str,
    meanwhile: dict[str, Any],
) -> Callable[..., Coroutine[Any, Any, CallSession]]:
    """Make `store` open sessions so slowly that the ticket changes by `meanwhile` first; returns
    the store's own `open_session`."""
    open_session = store.open_session

    async def opened_late(*args: Any, **kwargs: Any) -> CallSession:
        session = await open_session(*args, **kwargs)
        async with database() as s, s.begin():
            await s.execute(
                update(QueueTicket).where(QueueTicket.id == ticket_id).values(**meanwhile)
            )
        return session

    store.open_session = opened_late  # type: ignore[method-assign]
    return open_session


@pytest.mark.parametrize(
    "meanwhile",
    [
        # The sweep gave the slow take's ticket back; it waits again...
        {"state": "waiting", "taken_by": None, "closed_at": None},
        # ...and the customer left, or another teller took them.
        {"state": "cancelled", "taken_by": None},
        {"state": "taken", "taken_by": "u_b"},
    ],
)
async def test_a_take_whose_ticket_went_elsewhere_meanwhile_undoes_its_session(
    database: async_sessionmaker[DbSession], tmp_path: Path, meanwhile: dict[str, Any]
) -> None:
    store = SessionStore(database)
    audit = Audit()
    queue = await _queue(database, tmp_path, audit, store)
    ticket = (await queue.join("other", False)).ticket
    open_session = _opened_late(store, database, ticket.id, meanwhile)
    with pytest.raises(ApiError) as refused:
        await queue.take_next(TELLER, None, None)
    assert (refused.value.status, refused.value.code) == (409, "ticket_lost")
    async with database() as s:
        stored = await s.get(QueueTicket, ticket.id)
        profile = await s.get(TellerProfile, TELLER_ID)
        [session] = await s.scalars(select(CallSession).where(CallSession.id != "s_1"))
        links = await s.scalar(select(func.count()).select_from(Invitation))
    assert stored is not None and stored.session_id is None
    assert (stored.state, stored.taken_by) == (meanwhile["state"], meanwhile["taken_by"])
    assert profile is not None and profile.current_session_id is None
    assert (session.state, session.end_reason) == ("ended", "queue_take_lost")
    assert links == 0
    # The log's queue.taken is followed by what became of the take.
    assert audit.facts == [
        ("queue.take_lost", ticket.id, {"session_id": session.id, "undone": True})
    ]
    if meanwhile["state"] == "waiting":
        # The ticket's link is free again: the next take gets the customer.
        store.open_session = open_session  # type: ignore[method-assign]
        other = Principal(role=Role.TELLER, display_name="b", csrf_token="x", user_id="u_b")
        taken = await queue.take_next(other, None, None)
        assert (taken.ticket.id, taken.ticket.session_id) == (ticket.id, taken.session.id)


async def test_a_lost_take_whose_undo_fails_still_answers_ticket_lost(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    store = SessionStore(database)
    audit = Audit()
    queue = await _queue(database, tmp_path, audit, store)
    ticket = (await queue.join("other", False)).ticket
    given_back = {"state": "waiting", "taken_by": None, "closed_at": None}
    open_session = _opened_late(store, database, ticket.id, given_back)
    end = store.end

    async def database_hiccup(*args: Any, **kwargs: Any) -> CallSession:
        raise ConnectionError("connection to the database lost")

    store.end = database_hiccup  # type: ignore[method-assign]
    with capture_logs() as logs, pytest.raises(ApiError) as refused:
        await queue.take_next(TELLER, None, None)
    assert (refused.value.status, refused.value.code) == (409, "ticket_lost")
    assert [e["event"] for e in logs] == ["queue_take_undo_failed"]
    async with database() as s:
        [session] = await s.scalars(select(CallSession).where(CallSession.id != "s_1"))
    assert audit.facts == [
        ("queue.take_lost", ticket.id, {"session_id": session.id, "undone": False})
    ]
    # The database is back. The link left on the ticket's digest is freed by the sweep once it
    # is older than any take, and the customer can be taken again.
    store.end, store.open_session = end, open_session  # type: ignore[method-assign]
    await queue.sweep()
    async with database() as s:
        assert await s.scalar(select(func.count()).select_from(Invitation)) == 1
        await s.execute(update(Invitation).values(created_at=utcnow() - timedelta(seconds=61)))
        await s.commit()
    await queue.sweep()
    async with database() as s:
        ended = await s.get(CallSession, session.id, populate_existing=True)
        assert await s.scalar(select(func.count()).select_from(Invitation)) == 0
    assert ended is not None and (ended.state, ended.end_reason) == ("ended", "queue_take_lost")
    other = Principal(role=Role.TELLER, display_name="b", csrf_token="x", user_id="u_b")
    taken = await queue.take_next(other, None, None)
    assert (taken.ticket.id, taken.ticket.session_id) == (ticket.id, taken.session.id)


async def test_ending_a_lost_take_and_freeing_its_link_is_one_transaction(
    database: async_sessionmaker[DbSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(database)
    async with database() as s, s.begin():
        s.add(
            Invitation(
                session_id="s_1",
                token_hash="ab" * 32,
                created_by=TELLER_ID,
                expires_at=utcnow() + timedelta(hours=1),
            )
        )

    def failing(**_: Any) -> SessionEvent:
        raise ConnectionError("connection to the database lost")

    # The session's end fails after its link was deleted in the same transaction.
    monkeypatch.setattr("server.sessions.store.SessionEvent", failing)
    with pytest.raises(ConnectionError):
        await store.end("s_1", None, "queue_take_lost", unlink=True)
    async with database() as s:
        session = await s.get(CallSession, "s_1")
        links = await s.scalar(select(func.count()).select_from(Invitation))
    assert session is not None and session.state == "live" and links == 1
    monkeypatch.undo()
    await store.end("s_1", None, "queue_take_lost", unlink=True)
    async with database() as s:
        session = await s.get(CallSession, "s_1")
        links = await s.scalar(select(func.count()).select_from(Invitation))
    assert session is not None and session.state == "ended" and links == 0


async def test_a_failed_take_does_not_give_back_a_ticket_another_take_named(
    database: async_sessionmaker[DbSession], tmp_path: Path
) -> None:
    store = SessionStore(database)
    queue = await _queue(database, tmp_path, Audit(), store)
    ticket = (await queue.join("other", False)).ticket

    async def fails_after_another_take(*_: Any, **__: Any) -> CallSession:
        # The sweep gave the slow take's ticket back, and this teller's next take (another
        # request) took it again and named its session.
        async with database() as s, s.begin():
            await s.execute(
                update(QueueTicket).where(QueueTicket.id == ticket.id).values(session_id="s_1")
            )
        raise ConnectionError("connection to the database lost")

    store.open_session = fails_after_another_take  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await queue.take_next(TELLER, None, None)
    async with database() as s:
        stored = await s.get(QueueTicket, ticket.id)
    assert stored is not None
    assert (stored.state, stored.taken_by, stored.session_id) == ("taken", TELLER_ID, "s_1")
