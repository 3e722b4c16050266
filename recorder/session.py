"""One dual recording, from the consent moment to the signed manifest in the archive store.

Data flow: SFU EncodedSource -> SlotFeed -> RecordingWriter (mux + encrypt, own thread) ->
sealed segment -> journal -> spool (durable) -> Uploader -> archive store. At the end the signed
manifest is chained to the previous archive's and spooled beside the segments.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from recorder import __version__
from recorder.capture import RecordingWriter, SealedSegment, SlotFeed
from recorder.clock import ParticipantClock
from recorder.container import EXPERT_SLOTS, standard_slots
from recorder.journal import Journal, JournalState
from recorder.seal.keyring import KeyWrapper
from recorder.seal.manifest import (
    FORMAT_VERSION,
    MANIFEST_OBJECT,
    SIGNATURE_OBJECT,
    Manifest,
    WrappedKeyEntry,
    format_timestamp,
    manifest_sha256,
    parse_manifest,
    sign_manifest,
)
from recorder.seal.sealer import ArchiveSealer
from recorder.seal.signing import Signer
from recorder.store.config import RetentionRules
from recorder.store.retention import Product, ProductKind, retain_until
from recorder.store.spool import Spool, SpoolEntry
from server.sfu.encoded import EncodedSource

log = structlog.get_logger(__name__)

RECORDER_VERSION = f"vteller-recorder {__version__}"
# A full or unwritable spool/journal disk is retried this often (doubling up to the maximum) until
# an operator frees space; the recording's manifest is sealed only once everything is written.
STORE_RETRY_FIRST_SECONDS = 0.5
STORE_RETRY_MAX_SECONDS = 10.0
# How long sealing waits for the database or the disk before it leaves the rest to the manager,
# which seals the journal (with the status journaled at the stop) every minute until it can.
# Sealing holds the room: a database down for an hour must not freeze its members for an hour.
SEAL_PATIENCE_SECONDS = 30.0
# Errors that waiting cannot mend (a conflicting chain, a bad record): raised at once.
_PERMANENT = (ValueError, TypeError, KeyError, RuntimeError)
# A chain that refuses this many fresh signatures in a row is not being raced: it is broken.
_MAX_SIGNATURES = 20
_DISK_FIX = "free space there or fix its permissions"
# Sealed segments wait in memory while the spool cannot take them. Beyond this many bytes (about
# 8 minutes of a two-person call) the recording pauses: memory stays bounded however long the
# disk is full, and the pause is a gap in the manifest. It resumes once half has been spooled.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
_PAUSED_REASON = "recording paused: the recorder's spool or journal disk could not be written"

T = TypeVar("T")


def archive_prefix(archive_id: str) -> str:
    return f"archives/{archive_id}/"


@dataclass(frozen=True)
class ArchiveRecord:
    archive_id: str
    session_id: str
    business: str
    status: str
    manifest_sha256: str
    previous_sha256: str | None
    created_at: datetime
    finalized_at: datetime


class ChainHead(Protocol):
    """The newest sealed manifest, shared by every worker (the database in vteller)."""

    async def head(self) -> str | None: ...

    async def append(self, record: ArchiveRecord) -> bool:
        """False when another archive was chained to `record.previous_sha256` first."""
        ...


class ArchiveListing(Protocol):
    """The names the archive store holds (ArchiveBucket); raises while the store is down."""

    async def list(self, prefix: str = "") -> list[str]: ...


class Attempt(Protocol):
    """How a spool, journal or chain write is run: until it succeeds (a live recording, whose
    teller sees what it waits for) or once (`once`, for recovery, which the manager repeats)."""

    def __call__(self, what: str, fix: str, step: Callable[[], Awaitable[T]]) -> Awaitable[T]: ...


async def once(what: str, fix: str, step: Callable[[], Awaitable[T]]) -> T:
    return await step()


@dataclass
class RecorderContext:
    """What every recording of one worker shares."""

    keyring: KeyWrapper
    signer: Signer
    spool: Spool
    archive: ArchiveListing
    chain: ChainHead
    journal_dir: Path
    retention: RetentionRules
    segment_seconds: float = 2.0
    # Every camera and screen is asked for a keyframe this often and when a moment starts, so a
    # player or the face analysis reaches any moment by decoding a few seconds, not the call.
    keyframe_seconds: float = 10.0


@dataclass
class _Presence:
    role: str
    display_name: str
    spans: list[dict[str, str | None]] = field(default_factory=list)
    gap_start_ms: int | None = None


class RecordingSession:
    """Built by `create`; the constructor itself touches no disk."""

    def __init__(
        self,
        context: RecorderContext,
        session_id: str,
        business: str,
        on_change: Callable[[], None],
        *,
        sealer: ArchiveSealer,
        journal: Journal,
        started_at: datetime,
        started_monotonic: float,
        retain: datetime,
    ) -> None:
        self._context = context
        self.session_id = session_id
        self.business = business
        self._on_change = on_change
        self.archive_id = str(sealer.archive_id)
        self.state = "recording"
        self.started_at = started_at
        self._t0 = started_monotonic
        self._slots = standard_slots()
        self._retain_until = retain
        self._sealer = sealer
        self.journal = journal
        self._writer = RecordingWriter(self._sealer, self._slots, self._sealed)
        self._feeds = [
            SlotFeed(self._writer, index, slot.kind, self.media_ms)
            for index, slot in enumerate(self._slots)
        ]
        self._slot_owner: dict[int, str] = {}
        self._clocks: dict[str, ParticipantClock] = {}
        self._presence: dict[str, _Presence] = {}
        self._marks: list[dict[str, Any]] = []
        self._gaps: list[dict[str, Any]] = []
        self._identity: dict[str, Any] | None = None
        self._compliance: dict[str, Any] | None = None
        self._transactions: dict[str, dict[str, Any]] = {}
        self._tasks: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        # Why the last spool, journal or chain write failed, while it is being retried (None: all
        # well).
        self._store_error: str | None = None
        # Set while one of the recording's own writes (not the seal's, which has its patience)
        # is being retried: a stop then waits for an operator, and its caller need not.
        self._held_back = asyncio.Event()
        # Bytes of sealed segments not yet spooled, and since when (media ms) the media has been
        # dropped because they grew beyond MAX_BACKLOG_BYTES (None: recording).
        self._backlog_bytes = 0
        self._paused_since_ms: int | None = None
        # Set once stop() or abandon() has ended, however: the journal is then no longer this
        # object's to write, and the manager seals it if it is not sealed yet.
        self.stopped = False
        self._worker = asyncio.create_task(self._run_tasks())
        self._cutter = asyncio.create_task(self._cut_regularly())

    @classmethod
    async def create(
        cls,
        context: RecorderContext,
        session_id: str,
        business: str,
        on_change: Callable[[], None],
    ) -> RecordingSession:
        """A new recording, its data key wrapped and its journal created in a thread: the
        keyring is read from disk and the journal fsync'ed, which on a busy disk would stall the
        media this event loop forwards."""
        archive_id = uuid.uuid4()
        # Media time 0 is this wall time, however long the disk takes below.
        started_at, started_monotonic = datetime.now(UTC), time.monotonic()
        retain = retain_until(Product(ProductKind(business)), started_at, context.retention)

        def prepare() -> tuple[ArchiveSealer, Journal]:
            sealer = ArchiveSealer(archive_id, context.keyring)
            journal = Journal.create(
                context.journal_dir,
                str(archive_id),
                {
                    "archive_id": str(archive_id),
                    "session_id": session_id,
                    "business": business,
                    "created_at": format_timestamp(started_at),
                    "chunk_size": sealer.chunk_size,
                    "wrapped_key": WrappedKeyEntry.from_wrapped(sealer.wrapped_key).model_dump(),
                    "retain_until": retain.isoformat(),
                },
            )
            return sealer, journal

        sealer, journal = await asyncio.to_thread(prepare)
        return cls(
            context,
            session_id,
            business,
            on_change,
            sealer=sealer,
            journal=journal,
            started_at=started_at,
            started_monotonic=started_monotonic,
            retain=retain,
        )

    def media_ms(self) -> int:
        return int(self.media_ms_at(time.monotonic()))

    def wall_now(self) -> datetime:
        """The wall time on the recording's own clock: its start plus the monotonic time since.
        An NTP step during the call (backwards too) moves no moment of the manifest out of order
        or away from its media time."""
        return self.started_at + timedelta(seconds=time.monotonic() - self._t0)

    def media_ms_at(self, monotonic: float) -> float:
        return (monotonic - self._t0) * 1000

    # -- what happens in the call ------------------------------------------------------------

    def follow(
        self, participant_id: str, role: str, source: str, encoded: EncodedSource | None
    ) -> None:
        """Record (participant, source) from `encoded` (None: it stopped publishing for now)."""
        slot = self._slot_for(participant_id, role, source)
        if slot is None:
            return
        clock = self._clocks.setdefault(participant_id, ParticipantClock(self.media_ms_at))
        self._feeds[slot].follow(encoded, clock)

    def presence(self, participant_id: str, role: str, display_name: str, event: str) -> None:
        """`event`: "joined", "rejoined", "disconnected" or "left"."""
        now = format_timestamp(self.wall_now())
        who = self._presence.setdefault(participant_id, _Presence(role, display_name))
        if event in ("joined", "rejoined"):
            if who.gap_start_ms is not None:
                self._add_gap(who.gap_start_ms, self.media_ms(), f"{role} disconnected")
                who.gap_start_ms = None
            who.spans.append({"joined_at": now, "left_at": None})
        else:
            if who.spans and who.spans[-1]["left_at"] is None:
                who.spans[-1]["left_at"] = now
            if event == "disconnected":
                who.gap_start_ms = self.media_ms()
        self._journal_later(
            "presence",
            {
                "participant_id": participant_id,
                "role": role,
                "display_name": display_name,
                "event": event,
                "at": now,
                "media_ms": self.media_ms(),
            },
        )

    def mark(self, moment: str, phase: str, media_ms: int | None = None) -> int:
        """Mark `moment.phase` at `media_ms` (default: now) on the recording's timeline."""
        if media_ms is None:
            media_ms = self.media_ms()
        record = {
            "name": f"{moment}.{phase}",
            "media_ms": media_ms,
            "wall_time": format_timestamp(self.wall_now()),
        }
        self._marks.append(record)
        self._journal_later("mark", record)
        if phase == "start":
            self._request_keyframes()
        return media_ms

    def set_identity(self, identity: dict[str, Any]) -> None:
        """The identity verification result for the manifest (free-form, no floats; the
        latest call wins: a retried verification replaces the earlier outcome)."""
        self._identity = identity
        self._journal_later("identity", {"identity": identity})

    def set_compliance(self, context: dict[str, Any]) -> None:
        """The sales script this recording follows and its values (the manifest's
        `compliance` object; free-form, no floats)."""
        self._compliance = context
        self._journal_later("compliance", {"compliance": context})

    async def bind_transaction(
        self, transaction_id: str, sha256: str, signature_sha256: str, signature_png: bytes
    ) -> None:
        """A transaction the customer signed now: its hash and the signature image's hash go
        into the manifest, at this media time (a signature given again replaces the earlier),
        and the image itself into the archive, encrypted, as an attachment.

        Returns once the binding is journaled: the caller then records in the database that this
        archive holds it, and an archive recovered after a crash must hold it too."""
        binding = {
            "id": transaction_id,
            "sha256": sha256,
            "signature_sha256": signature_sha256,
            "signed_at": format_timestamp(self.wall_now()),
            "media_ms": self.media_ms(),
        }
        self._transactions[transaction_id] = binding

        async def attach() -> None:
            try:
                entry, ciphertext = await asyncio.to_thread(
                    self._sealer.seal_attachment, signature_png, "image/png"
                )
            except Exception:
                # The binding still holds the image's hash (and the database the image); a
                # failure here must not stop the tasks that store the media.
                log.exception("signature_attachment_failed", archive_id=self.archive_id)
                return
            await self._store_object("attachment", {"entry": entry.model_dump()}, ciphertext)

        # Queued before the await below, so that a stop() begun meanwhile still seals the image.
        self._tasks.put_nowait(attach)
        # Journaled here rather than queued: the queue may be held for minutes behind a spool
        # write being retried, and a binding the database names must not wait there.
        await self._append_journal("transaction", {"transaction": binding})

    @property
    def pending_segments(self) -> int:
        return self._context.spool.pending_count

    @property
    def last_store_error(self) -> str | None:
        """Why a spool, journal or chain write is being retried, for the teller (None: all well)."""
        error = self._store_error
        if error is None:
            return None
        if self.state == "sealing":
            # Stopped: the teller needs to know that it is safe, and what it waits for.
            return (
                f"{error}; the recording has stopped and is kept on this server meanwhile: it "
                "is sealed and archived as soon as this succeeds"
            )
        if self._paused_since_ms is not None:
            return (
                f"{error}; the recording is paused meanwhile (nothing is recorded until then, "
                "and the manifest says so)"
            )
        return error

    async def held_back(self) -> None:
        """Return once a spool or journal write of the recording is being retried (at once if
        one is): a `stop()` begun meanwhile finishes only when it succeeds, however long the
        disk stays full, and the caller may leave it to finish on its own."""
        await self._held_back.wait()

    async def stop(
        self, status: str = "complete", *, patience: float = SEAL_PATIENCE_SECONDS
    ) -> ArchiveRecord:
        """Seal: the last segment, the manifest, its signature, the chain link. The media is
        stored whatever it takes; the seal's writes are retried for `patience` seconds, the
        teller's page saying what they wait for, and then this raises: the recording ended
        is journaled, and the manager seals it as soon as it can."""
        try:
            await self._halt()
            fields = self._manifest_fields(status)
            # Journaled before the chain is asked for its head: a worker restarted while the
            # database is down then seals what the recording ended with (its status too), not
            # an interrupted reconstruction.
            await self._append_journal("ended", {"manifest": fields})
            record = await seal_manifest(
                self._context,
                fields,
                self.journal,
                self._retain_until,
                functools.partial(self._until_done, within=patience),
                finalized_at=self.wall_now(),
            )
        finally:
            self.stopped = True
        self.state = "sealed" if status == "complete" else "interrupted"
        self._on_change()
        return record

    async def abandon(self, reason: str) -> None:
        """Stop without sealing, since the archive cannot be sealed now (`reason`, e.g. the
        database is down): what was recorded stays journaled and spooled, with a gap over it
        saying why, and the manager seals it as interrupted once it can."""
        try:
            end_ms = await self._halt(reason)
            log.warning(
                "recording_abandoned", archive_id=self.archive_id, reason=reason, end_ms=end_ms
            )
        finally:
            self.stopped = True

    # -- internals ---------------------------------------------------------------------------

    async def _halt(self, gap_reason: str | None = None) -> int:
        """End the media (a gap from 0 over all of it with `gap_reason`) and wait until every
        segment, attachment and journal line it has made is stored; returns its end."""
        self.state = "sealing"
        self._on_change()
        self._cutter.cancel()
        for feed in self._feeds:
            feed.follow(None)
        end_ms = self.media_ms()
        try:
            await self._writer.close(end_ms)
        finally:
            # Even when the muxer failed: what is queued is stored, and nothing is still being
            # written once `stopped` lets the manager seal the journal.
            for who in self._presence.values():
                if who.gap_start_ms is not None:
                    self._add_gap(who.gap_start_ms, end_ms, f"{who.role} disconnected")
                    who.gap_start_ms = None
            if self._paused_since_ms is not None:
                self._add_gap(self._paused_since_ms, end_ms, _PAUSED_REASON)
                self._paused_since_ms = None
            if gap_reason is not None:
                self._add_gap(0, end_ms, gap_reason)
            await self._tasks.put(None)
            await self._worker
        return end_ms

    def _slot_for(self, participant_id: str, role: str, source: str) -> int | None:
        # A participant keeps its slot group for the whole recording: a rejoin continues it.
        mine = {
            self._slots[i].role for i, owner in self._slot_owner.items() if owner == participant_id
        }
        others = {
            self._slots[i].role for i, owner in self._slot_owner.items() if owner != participant_id
        }
        candidates = (
            [role] if role != "expert" else [f"expert{n}" for n in range(1, EXPERT_SLOTS + 1)]
        )
        group = next(iter(mine), None) or next((g for g in candidates if g not in others), None)
        index = next(
            (
                i
                for i, slot in enumerate(self._slots)
                if slot.role == group and slot.source == source
            ),
            None,
        )
        if index is None:
            log.warning(
                "no_recording_slot", participant_id=participant_id, role=role, source=source
            )
            return None
        if index not in self._slot_owner:
            self._slot_owner[index] = participant_id
            track = {
                "id": str(index),
                "kind": self._slots[index].kind,
                "participant_id": participant_id,
                "source": source,
            }
            self._journal_later("track", {"track": track})
        return index

    def _add_gap(self, start_ms: int, end_ms: int, reason: str) -> None:
        gap = {"start_ms": start_ms, "end_ms": max(start_ms, end_ms), "reason": reason}
        self._gaps.append(gap)
        self._journal_later("gap", gap)

    def _manifest_fields(self, status: str) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "business": self.business,
            "created_at": format_timestamp(self.started_at),
            "status": status,
            "chunk_size": self._sealer.chunk_size,
            "wrapped_key": WrappedKeyEntry.from_wrapped(self._sealer.wrapped_key).model_dump(),
            "segments": [s.model_dump() for s in self._sealer.segments],
            "attachments": [a.model_dump() for a in self._sealer.attachments] or None,
            "participants": [
                {"id": pid, "role": p.role, "display_name": p.display_name, "presence": p.spans}
                for pid, p in self._presence.items()
            ],
            "marks": list(self._marks),
            "tracks": [
                {
                    "id": str(i),
                    "kind": self._slots[i].kind,
                    "participant_id": owner,
                    "source": self._slots[i].source,
                }
                for i, owner in sorted(self._slot_owner.items())
            ],
            "gaps": list(self._gaps),
            "identity": self._identity,
            "compliance": self._compliance,
            "transactions": list(self._transactions.values()) or None,
        }

    def _sealed(self, segment: SealedSegment) -> None:
        record = {
            "entry": segment.entry.model_dump(),
            "media_ms": segment.media_ms,
            "wall": format_timestamp(self.wall_now()),
        }
        size = len(segment.ciphertext)
        self._backlog_bytes += size
        if self._backlog_bytes > MAX_BACKLOG_BYTES and self._paused_since_ms is None:
            self._paused_since_ms = self.media_ms()
            self._writer.pause()
            log.error(
                "recording_paused_store_backlog",
                archive_id=self.archive_id,
                backlog_bytes=self._backlog_bytes,
                error=self.last_store_error,
            )
            self._on_change()

        async def store() -> None:
            await self._store_object("segment", record, segment.ciphertext)
            self._backlog_bytes -= size
            if (
                self._paused_since_ms is not None
                and self._backlog_bytes <= MAX_BACKLOG_BYTES // 2
                and self.state == "recording"
            ):
                self._add_gap(self._paused_since_ms, self.media_ms(), _PAUSED_REASON)
                self._paused_since_ms = None
                self._writer.resume()
                self._request_keyframes()
                log.warning("recording_resumed", archive_id=self.archive_id)
                self._on_change()

        self._tasks.put_nowait(store)

    async def _store_object(self, kind: str, record: dict[str, Any], ciphertext: bytes) -> None:
        # The sealer has already listed this object for the manifest: it must reach the journal
        # and then the spool, however long that takes, or the manifest would name an object that
        # never exists. Journal first: an object under retention can never be removed, so one
        # the journal does not name would be unlisted forever after a crash, where a journaled
        # object that never reached the spool is dropped by `recover` (docs/architecture.md).
        await self._append_journal(kind, record)
        name = archive_prefix(self.archive_id) + record["entry"]["object"]
        await _spooled(self._until_done, self._context.spool, name, ciphertext, self._retain_until)
        self._on_change()

    def _journal_later(self, kind: str, record: dict[str, Any]) -> None:
        self._tasks.put_nowait(lambda: self._append_journal(kind, record))

    async def _append_journal(self, kind: str, record: dict[str, Any]) -> None:
        await _journaled(self._until_done, self.journal, kind, record)

    async def _until_done(
        self, what: str, fix: str, step: Callable[[], Awaitable[T]], within: float | None = None
    ) -> T:
        """Run `step` until it succeeds, backing off; meanwhile the teller's page says why.
        With `within`, give up after that many seconds, or at once on an error that waiting
        cannot mend, by raising it."""
        delay = STORE_RETRY_FIRST_SECONDS
        deadline = None if within is None else time.monotonic() + within
        while True:
            try:
                result = await step()
            except Exception as exc:
                if deadline is not None and (
                    isinstance(exc, _PERMANENT) or time.monotonic() + delay > deadline
                ):
                    raise
                self._store_error = (
                    f"cannot {what}: {exc}; {fix} (retrying every "
                    f"{STORE_RETRY_MAX_SECONDS:.0f} s at most)"
                )
                if within is None:
                    self._held_back.set()
                self._on_change()
                log.warning(
                    "recording_store_failed_will_retry",
                    archive_id=self.archive_id,
                    error=self.last_store_error,
                    retry_in_seconds=delay,
                    exc_info=not isinstance(exc, OSError),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_SECONDS)
                continue
            if within is None:
                self._held_back.clear()
            if self._store_error is not None:
                self._store_error = None
                self._on_change()
            return result

    async def _run_tasks(self) -> None:
        # One at a time, in order: segments reach the spool and the journal in index order, and a
        # step being retried holds back everything after it.
        while (task := await self._tasks.get()) is not None:
            await task()

    async def _cut_regularly(self) -> None:
        since_keyframes = 0.0
        while True:
            await asyncio.sleep(self._context.segment_seconds)
            self._writer.cut(self.media_ms())
            since_keyframes += self._context.segment_seconds
            if since_keyframes >= self._context.keyframe_seconds:
                since_keyframes = 0.0
                self._request_keyframes()

    def _request_keyframes(self) -> None:
        for feed in self._feeds:
            feed.request_keyframe()


def _journaled(
    attempt: Attempt, journal: Journal, kind: str, record: dict[str, Any]
) -> Awaitable[None]:
    return attempt(
        f"write to the journal ({journal.path.parent})",
        _DISK_FIX,
        lambda: asyncio.to_thread(journal.append, kind, record),
    )


def _spooled(
    attempt: Attempt, spool: Spool, name: str, data: bytes, retain: datetime
) -> Awaitable[SpoolEntry]:
    return attempt(
        f"write to the spool ({spool.directory})",
        _DISK_FIX,
        lambda: spool.add(name, data, retain),
    )


def _chained(attempt: Attempt, step: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    return attempt(
        "reach the manifest chain in the database",
        "check that the database is running and reachable",
        step,
    )


async def seal_manifest(
    context: RecorderContext,
    fields: dict[str, Any],
    journal: Journal,
    retain: datetime,
    attempt: Attempt,
    signed: tuple[bytes, bytes] | None = None,
    finalized_at: datetime | None = None,
) -> ArchiveRecord:
    """Sign the manifest, chain it to the newest one, spool it, mark the journal sealed; every
    one of these writes through `attempt`.

    Each signed manifest is journaled before the chain may take it. A process that dies after
    the chain took it, but before it was stored, is finished at recovery with that same manifest
    (`signed`, from the journal): a second manifest for one archive would take a second place
    in the chain and leave the first one's place pointing at a manifest that was never stored.
    The chain takes it before it is spooled: a manifest spooled first and then refused by the
    chain (another archive sealed meanwhile) would reach the store under retention, where the
    one signed again after the new head could never take its name.
    """
    archive_id = journal.path.stem
    record: ArchiveRecord | None = None
    if signed is not None:
        data, signature = signed
        offered = _record_of(parse_manifest(data), data)
        if await _chained(attempt, functools.partial(context.chain.append, offered)):
            record = offered
        else:
            # Never chained, and another archive has been sealed since: the same content is
            # signed again after the new head.
            fields = json.loads(data)
    if finalized_at is None:
        finalized_at = datetime.now(UTC)
    if record is None:
        # Never before the recording began, whatever the wall clock did since.
        finalized_at = max(finalized_at, _moment(fields["created_at"]))
    signatures = 0
    while record is None:
        signatures += 1
        if signatures > _MAX_SIGNATURES:
            raise RuntimeError(
                f"the manifest chain refused {_MAX_SIGNATURES} signatures of archive "
                f"{archive_id} in a row; check the archives table for a row it conflicts with"
            )
        manifest = Manifest.model_validate(
            fields
            | {
                "format_version": FORMAT_VERSION,
                "archive_id": archive_id,
                "product": None,
                "recorder_version": RECORDER_VERSION,
                "finalized_at": format_timestamp(finalized_at),
                "previous_manifest_sha256": await _chained(attempt, context.chain.head),
                "signing_key_id": context.signer.key_id,
            }
        )
        data, signature = sign_manifest(manifest, context.signer)
        await _journaled(
            attempt,
            journal,
            "signed",
            {
                "manifest": base64.b64encode(data).decode("ascii"),
                "signature": base64.b64encode(signature).decode("ascii"),
            },
        )
        candidate = _record_of(manifest, data)
        if await _chained(attempt, functools.partial(context.chain.append, candidate)):
            record = candidate
    prefix = archive_prefix(archive_id)
    await _spooled(attempt, context.spool, prefix + MANIFEST_OBJECT, data, retain)
    await _spooled(attempt, context.spool, prefix + SIGNATURE_OBJECT, signature, retain)
    await _journaled(attempt, journal, "sealed", {"manifest_sha256": record.manifest_sha256})
    log.info("archive_sealed", archive_id=archive_id, status=record.status)
    return record


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _record_of(manifest: Manifest, data: bytes) -> ArchiveRecord:
    return ArchiveRecord(
        archive_id=manifest.archive_id,
        session_id=manifest.session_id,
        business=manifest.business,
        status=manifest.status,
        manifest_sha256=manifest_sha256(data),
        previous_sha256=manifest.previous_manifest_sha256,
        created_at=_moment(manifest.created_at),
        finalized_at=_moment(manifest.finalized_at),
    )


async def recover(context: RecorderContext, journal: Journal) -> ArchiveRecord:
    """Finalize, as interrupted, a recording whose process died (or that was abandoned): what
    was stored holds. One that died while sealing is finished with the manifest it had signed,
    or had ended. Each write is tried once: on failure the journal waits for the manager's next
    pass."""
    state: JournalState = await asyncio.to_thread(journal.read)
    header = state.header
    retain = datetime.fromisoformat(header["retain_until"])
    if state.signed is not None:
        # It died while sealing: the manifest it signed is the archive's (its status included).
        return await seal_manifest(context, {}, journal, retain, once, state.signed)
    if state.ended is not None:
        # It died before signing, once every object the manifest lists had been stored.
        return await seal_manifest(context, state.ended, journal, retain, once)
    archive_id = journal.path.stem
    stored = await _stored_count(context, archive_id, state.segments)
    attached = await _stored_count(context, archive_id, state.attachments)
    presence: dict[str, dict[str, Any]] = {}
    away_since_ms: dict[str, int] = {}  # who was disconnected (not back yet), since when
    for event in state.presence:
        who = presence.setdefault(
            event["participant_id"],
            {
                "id": event["participant_id"],
                "role": event["role"],
                "display_name": event["display_name"],
                "presence": [],
            },
        )
        if event["event"] in ("joined", "rejoined"):
            # The recording journaled the gap itself when they came back.
            away_since_ms.pop(event["participant_id"], None)
            who["presence"].append({"joined_at": event["at"], "left_at": None})
        elif who["presence"] and who["presence"][-1]["left_at"] is None:
            who["presence"][-1]["left_at"] = event["at"]
        if event["event"] == "disconnected":
            away_since_ms[event["participant_id"]] = event["media_ms"]
    last_wall = _moment(state.last_wall or header["created_at"])
    for who in presence.values():
        span = who["presence"][-1] if who["presence"] else None
        if span is not None and span["left_at"] is None:
            # Still there when the last segment was stored, or joined after it: never a stay
            # that ends before it began.
            span["left_at"] = format_timestamp(max(last_wall, _moment(span["joined_at"])))
    stopped = datetime.now(UTC)
    lost_ms = max(0, int((stopped - last_wall).total_seconds() * 1000))
    lost = {
        "start_ms": state.last_media_ms,
        "end_ms": state.last_media_ms + lost_ms,
        "reason": "recorder stopped; media after the last sealed segment is lost",
    }
    gaps = list(state.gaps)
    stored_until_ms = state.segment_cut_ms[stored - 1] if stored else 0
    # Still away when the recorder stopped: their gap runs to the end of the stored media (the
    # gaps below cover what follows).
    gaps.extend(
        {
            "start_ms": since_ms,
            "end_ms": stored_until_ms,
            "reason": f"{presence[participant_id]['role']} disconnected",
        }
        for participant_id, since_ms in away_since_ms.items()
        if since_ms < stored_until_ms
    )
    if stored < len(state.segments):
        gaps.append(
            {
                "start_ms": stored_until_ms,
                "end_ms": state.segment_cut_ms[-1],
                "reason": f"recorder stopped; segments {state.segments[stored]['index']}-"
                f"{state.segments[-1]['index']} were sealed but never stored: their media is lost",
            }
        )
    gaps.append(lost)
    fields = {
        "session_id": header["session_id"],
        "business": header["business"],
        "created_at": header["created_at"],
        "status": "interrupted",
        "chunk_size": header["chunk_size"],
        "wrapped_key": header["wrapped_key"],
        "segments": state.segments[:stored],
        "participants": list(presence.values()),
        "marks": [{k: m[k] for k in ("name", "media_ms", "wall_time")} for m in state.marks],
        "tracks": [
            {k: t[k] for k in ("id", "kind", "participant_id", "source")} for t in state.tracks
        ],
        "gaps": gaps,
        "identity": state.identity,
        "compliance": state.compliance,
        "transactions": list(state.transactions.values()) or None,
        "attachments": state.attachments[:attached] or None,
    }
    return await seal_manifest(
        context, fields, journal, retain, once, finalized_at=max(stopped, last_wall)
    )


async def _stored_count(
    context: RecorderContext, archive_id: str, entries: list[dict[str, Any]]
) -> int:
    """How many of the journaled segments or attachments (`entries`) to list: all but the last
    ones whose object is neither in the spool nor in the archive store (the process died between
    journaling and spooling them). The list must stay 0..n-1, so an object missing before one
    that exists stays listed, and verification names it missing: it was lost after being
    stored.

    Raises while the store cannot be listed: the journal then waits for the next start, since
    guessing would either list an object that does not exist or leave one unlisted for good.
    """
    prefix = archive_prefix(archive_id)
    if not entries:
        return 0
    present = await context.spool.names()
    if prefix + entries[-1]["object"] in present:
        return len(entries)
    # After the spool: the uploader removes an object from the spool only once the store has
    # it, so whatever left the spool before it was listed is in this listing.
    present |= set(await context.archive.list(prefix))
    stored = len(entries)
    while stored and prefix + entries[stored - 1]["object"] not in present:
        stored -= 1
    return stored
