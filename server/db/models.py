"""The metadata database: staff, sessions and what happened in them.

Credentials (login cookies, invitation tokens, customer cookies) are stored only as SHA-256
digests, so a copy of the database does not let anyone log in or join a call.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# What a column of personal text that must stay filled holds once its retention has ended and
# `vteller archive purge` erased it (server/auditor/purge.py; docs/deployment.md). Never a valid
# value of any of them (an account number is letters and digits only), so readers can tell.
ERASED = "(purged)"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored; use server.db.models.utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("u"))
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Why and when an operator disabled the account (`vteller admin disable-user`), while it is;
    # the audit log keeps every disable and enable.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)


class StaffLogin(Base):
    """A logged-in browser of a staff member (the vteller_staff cookie)."""

    __tablename__ = "staff_logins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    user: Mapped[User] = relationship(lazy="joined")


class StaffDevice(Base):
    """A browser a staff member has logged in with (the vteller_device cookie). Its login
    attempts are throttled on their own, not with everyone else's on the account: guesses from
    elsewhere cannot keep the member out of their own browser (server/auth/ratelimit.py)."""

    __tablename__ = "staff_devices"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Worker(Base):
    """A server process that hosts live sessions; it heartbeats while it is alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("w"))
    url: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    peers: Mapped[int] = mapped_column(Integer, default=0)
    # The open sessions it may be given (worker_max_sessions of its own settings; 0: no limit):
    # in its row, since the worker that places a session may run on another machine.
    max_sessions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DeploymentKey(Base):
    """One key every machine of the deployment must hold, by its check value (never the key).

    `key_id` is the key's id inside a keyring file, empty for a file of one key.
    """

    __tablename__ = "deployment_keys"

    file: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    check_value: Mapped[str] = mapped_column(String(64))
    hostname: Mapped[str] = mapped_column(String(255))  # the machine that recorded it first
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CallSession(Base):
    """One video session between a teller and a customer (and possibly experts, observers)."""

    __tablename__ = "sessions"
    # Placement and every worker's heartbeat count the open sessions per worker; ended ones
    # accumulate for years.
    __table_args__ = (Index("ix_sessions_state_worker", "state", "worker_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("s"))
    business: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    teller_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    customer_name: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id"), nullable=True)

    teller: Mapped[User] = relationship(lazy="joined")
    worker: Mapped[Worker | None] = relationship(lazy="joined")
    participants: Mapped[list[Participant]] = relationship(
        back_populates="session", lazy="selectin", order_by="Participant.created_at"
    )


class Invitation(Base):
    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    used_by_participant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)

    session: Mapped[CallSession] = relationship(lazy="joined")


class Participant(Base):
    """A person's place in a session; customers hold a credential bound to exactly this row."""

    __tablename__ = "participants"
    __table_args__ = (Index("ix_participants_user_session", "user_id", "session_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("p"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    display_name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="invited")
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    csrf_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    session: Mapped[CallSession] = relationship(back_populates="participants")


class Archive(Base):
    """A dual recording: live while recording, then sealed and linked into the manifest chain."""

    __tablename__ = "archives"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    business: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="recording")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Position in the chain of sealed manifests; unique, so two archives can never both claim
    # the same predecessor (the chain cannot fork, whichever worker seals first).
    chain_index: Mapped[int | None] = mapped_column(Integer, unique=True, nullable=True)
    # The latest retain-until of its objects when `vteller archive purge` last asked the store.
    # COMPLIANCE retention can be extended, never shortened, so the archive is not due before
    # it: later runs ask the store again only once it has passed.
    retained_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SessionEvent(Base):
    __tablename__ = "session_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    participant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    type: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IdentityCheck(Base):
    """One identity verification step's outcome in a session.

    `outcome`/`reason` are what anyone with access to the session may see. Everything that
    identifies the customer or is biometric (card fields, scores, evidence images) is only in
    `sealed`: AES-256-GCM under a per-row data key wrapped by the identity keyring
    (server/identity/records.py), so a copy of the database does not disclose it.
    """

    __tablename__ = "identity_checks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    participant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    step: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    evidence_sha256: Mapped[list[str]] = mapped_column(JSON, default=list)
    key_id: Mapped[str] = mapped_column(String(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ComplianceReport(Base):
    """The after-call compliance analysis of one sealed archive: a job, then its result.

    The report itself is stored signed in the archive (report-NNN.json); this row tracks the
    job's progress and keeps the decision for searching.
    """

    __tablename__ = "compliance_reports"

    archive_id: Mapped[str] = mapped_column(ForeignKey("archives.id"), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed
    stage: Mapped[str] = mapped_column(String(32), default="")
    progress: Mapped[int] = mapped_column(Integer, default=0)  # per mille
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    report_object: Mapped[str | None] = mapped_column(String(32), nullable=True)
    report_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ComplianceReview(Base):
    """A moment the analysis could not decide: a supervisor looks at the evidence and decides."""

    __tablename__ = "compliance_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    archive_id: Mapped[str] = mapped_column(ForeignKey("archives.id"), index=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"))
    moment: Mapped[str] = mapped_column(String(64))
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open|approved|rejected
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ChatMessage(Base):
    __tablename__ = "chat_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"))
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    participant: Mapped[Participant] = relationship(lazy="joined")


class AuditEntry(Base):
    """One entry of the hash-chained audit log (docs/audit-log.md); rows are never updated.

    `seq` is the primary key and is assigned by the writer as head + 1: two workers that race for
    the same position collide on it and the loser retries, so the chain can never fork.
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(48), index=True)
    target: Mapped[str] = mapped_column(String(128), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class LoginFailure(Base):
    """One failed staff login, counted against its user (`kind` "user") or address ("address").

    In the database rather than in a worker's memory, so that N workers (or a restarted one) do
    not allow N times the attempts. `failed_at` is Unix time: every worker compares with its own
    clock, which NTP keeps within far less than the window.
    """

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_kind_key_at", "kind", "key", "failed_at"),
        Index("ix_login_failures_at", "failed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(255))
    failed_at: Mapped[float] = mapped_column(Float)


class AuditCheckpoint(Base):
    """A signed statement "at `at`, the audit log's entry `seq` had hash `entry_hash`"."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Unique: two workers checkpointing the same head write it once.
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    entry_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))


class ArchiveIndexEntry(Base):
    """What the auditor portal searches an archive by, beyond the archives/sessions tables.

    The customer's ID number and name as read from the ID card are only here as keyed hashes
    (HMAC-SHA256 under a key in {data_dir}/keys/, server/auditor/idhash.py): a copy of the
    database cannot be searched for, or reverse-searched into, numbers or names without that key.
    The name is also sealed (`name_*`, per-row key wrapped by the identity keyring,
    server/auditor/names.py) for the portal to show; the invitation's customer_name is what the
    teller typed, in clear, to greet the customer.
    """

    __tablename__ = "archive_index"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    name_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    name_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    name_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    name_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    id_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ArchiveProduct(Base):
    """The product (compliance script) of one sealed archive, from its signed manifest."""

    __tablename__ = "archive_products"

    archive_id: Mapped[str] = mapped_column(ForeignKey("archives.id"), primary_key=True)
    product: Mapped[str] = mapped_column(String(64), index=True)


class HoldColumns:
    """A legal hold's state as an auditor last set it: held or not, why, by whom, when."""

    held: Mapped[bool] = mapped_column(default=False, index=True)
    reason: Mapped[str] = mapped_column(Text)
    changed_by: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LegalHoldRecord(HoldColumns, Base):
    """The legal hold of an archive as the portal last set it (the objects carry the hold itself);
    every change is also in the audit log, with who and why."""

    __tablename__ = "legal_holds"

    archive_id: Mapped[str] = mapped_column(ForeignKey("archives.id"), primary_key=True)
    objects: Mapped[int] = mapped_column(Integer, default=0)


class SessionHoldRecord(HoldColumns, Base):
    """A legal hold on a session that was never recorded (no sealed archive to hold): while it
    is held, `vteller archive purge` keeps its identity records and its customer's data, which
    it would otherwise erase `identity.unrecorded_retention_days` after the session ended. Every
    change is also in the audit log (auditor.session_hold_set / _cleared), with who and why."""

    __tablename__ = "session_holds"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)


class ArchiveTombstone(Base):
    """An archive deleted at the end of its retention (`vteller archive purge`): what remains so
    that the audit log and anyone following the chain of manifests can see that it existed and
    was deleted on schedule. Nothing personal: ids, hashes and dates.

    A row with `deleted_at` None is a purge under way (the store's objects may be partly gone):
    the next run finishes it. `audit_seq` is the `archive.purged` entry, None until written.
    """

    __tablename__ = "archive_tombstones"

    # No foreign key: a tombstone must outlive whatever else is ever cleaned up.
    archive_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(32), index=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    previous_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    chain_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_by: Mapped[str] = mapped_column(String(64))
    objects: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    audit_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Transaction(Base):
    """A purchase or service the teller set up in a session, signed by the customer, approved.

    `content` is the transaction's canonical JSON (docs/workflow.md) and `sha256` its hash: what
    the customer signed and the approval record binds. The signature image is in
    `signature_sealed` (per-row key, server/crypto/rows.py; its hash is in the clear) and, when
    signed during a recording, in that archive as an encrypted attachment (docs/workflow.md 6).
    """

    __tablename__ = "transactions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("t"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # purchase | service
    product_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    amount_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    content: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    # awaiting_signature | signed | awaiting_override | awaiting_second_approval | approved
    # | rejected
    state: Mapped[str] = mapped_column(String(24), default="awaiting_signature", index=True)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    signature_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    signature_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signature_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    signature_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signature_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The recording running when the customer signed: the signature is bound into its manifest.
    signed_in_archive_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    approval_record: Mapped[str | None] = mapped_column(Text, nullable=True)
    approval_signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TransactionDecision(Base):
    """One person's step on a transaction: maker approval, checker approval, override, reject."""

    __tablename__ = "transaction_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), index=True)
    step: Mapped[str] = mapped_column(String(16))  # maker | checker | override | reject
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The checks as evaluated at this step ({name: passed}); overrides name the ones overridden.
    checks: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class QueueTicket(Base):
    """A customer waiting in the public queue (server/workflow/queue, docs/workflow-queue.md).

    The ticket's credential is only here as a digest, and so is the invitation link the ticket
    turns into when a teller takes it: the link is derived from the credential, so only the
    ticket's holder can compute it and the database never holds either.
    """

    __tablename__ = "queue_tickets"
    __table_args__ = (Index("ix_queue_tickets_state_business", "state", "business"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("q"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invitation_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(16))
    business: Mapped[str] = mapped_column(String(16))
    elderly: Mapped[bool] = mapped_column(default=False)
    # waiting | taken | cancelled | abandoned | expired | callback
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    assigned_to: Mapped[str | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    taken_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), nullable=True)


class QueueCallback(Base):
    """A customer's request to be called back; the phone number is sealed (server/crypto/rows.py)
    and erased when the callback is done. `phone_hint` (last four digits) is what lists show."""

    __tablename__ = "queue_callbacks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("queue_tickets.id"), unique=True)
    business: Mapped[str] = mapped_column(String(16))
    elderly: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | claimed | done
    phone_hint: Mapped[str] = mapped_column(String(4))
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TellerProfile(Base):
    """A teller's skills (the businesses they may serve) and chosen status for the queue."""

    __tablename__ = "teller_profiles"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="away")  # available | away
    status_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The session of the customer last taken from the queue: "in call" while it is open.
    current_session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), nullable=True)
    updated_by: Mapped[str | None] = mapped_column(String(32), nullable=True)


class WebhookDelivery(Base):
    """One approved transaction on its way to the core bank's webhook (docs/webhooks.md).

    `body` is the request body, fixed at enqueue time so that every attempt sends the same bytes.
    A worker owns an attempt while `lease_until` is in the future; claims are a guarded UPDATE, so
    two workers never send the same delivery at once. `transaction_id` is unique: enqueueing a
    transaction twice delivers it once.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("wh"))
    transaction_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    event_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # `attempts` when an operator last retried: max_attempts counts from here.
    attempts_at_retry: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
