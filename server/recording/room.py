"""The dual recording of one room: consent, start and stop, marks, and what it records.

The room tells it who joins and leaves and which tracks are published; it keeps the recording
following them (a participant who rejoins continues in the same tracks, with the gap recorded).
While it records, the room's live checks (server/recording/live_checks.py) run and see every
mark; they stop before the recording is sealed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from compliance.sales_script import Script
from recorder.session import RecordingSession
from server.audit.actions import SYSTEM
from server.audit.log import AuditLog
from server.auth.principal import Role
from server.recording.live_checks import LiveChecks
from server.recording.manager import RecordingManager, StorageUnavailable
from server.sfu.encoded import EncodedSource
from server.signaling.protocol import ProtocolError, error_message, server_message

log = structlog.get_logger(__name__)

Audience = Literal["everyone", "staff", "customer"]
Broadcast = Callable[[dict[str, Any], Audience], Awaitable[None]]


@dataclass(frozen=True)
class Member:
    participant_id: str
    role: Role
    display_name: str


class RoomRecording:
    def __init__(
        self,
        manager: RecordingManager,
        session_id: str,
        business: str,
        broadcast: Broadcast,
        audit: AuditLog | None = None,
        live: LiveChecks | None = None,
    ) -> None:
        self._manager = manager
        self._live = live
        self._audit = audit
        self._session_id = session_id
        self._business = business
        self._broadcast = broadcast
        self.state = "idle"
        self._recording: RecordingSession | None = None
        self._published: dict[tuple[str, str], tuple[Role, EncodedSource]] = {}
        self._present: dict[str, Member] = {}
        self._identity: dict[str, Any] | None = None
        self._script: dict[str, Any] | None = None
        self._rules: Script | None = None  # the script itself, for the live checks
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        return self._recording is not None and self.state == "recording"

    def message(self) -> dict[str, Any]:
        recording = self._recording
        status = self._manager.store_status()
        return server_message(
            "recording",
            state=self.state,
            archive_id=recording.archive_id if recording else None,
            started_at=recording.started_at.isoformat() if recording else None,
            store={
                "pending_segments": status.pending_count,
                # A local spool or journal write being retried blocks the recording itself,
                # so it is shown before an upload the archive store has not taken yet.
                "last_error": (recording.last_store_error if recording else None)
                or (status.last_error if status.consecutive_failures else None),
            },
        )

    # -- the teller and the customer ---------------------------------------------------------

    async def request_consent(
        self,
        customer_connected: bool,
        script: dict[str, Any] | None = None,
        rules: Script | None = None,
    ) -> None:
        """`script`: the manifest's compliance context; `rules`: the script it names."""
        # Refused before the customer is asked: a consent to a recording that cannot be written
        # would be asked for nothing. Before the state is checked and set, with no await between.
        problem = await self._manager.storage_problem()
        if problem is not None:
            raise ProtocolError("storage_unavailable", problem, "recording_start")
        if self.state in ("awaiting_consent", "recording", "sealing"):
            raise ProtocolError(
                "out_of_order", "A recording is already running.", "recording_start"
            )
        if not customer_connected:
            raise ProtocolError(
                "out_of_order", "The customer must be in the call to consent.", "recording_start"
            )
        self.state = "awaiting_consent"
        self._script = script
        self._rules = rules
        await self._broadcast(server_message("consent_request"), "customer")
        await self._announce()

    def require_consent_asked(self) -> None:
        if self.state != "awaiting_consent":
            raise ProtocolError("out_of_order", "No consent was asked for.", "consent")

    async def consent(self, granted: bool) -> None:
        self.require_consent_asked()
        if not granted:
            self.state = "declined"
            await self._announce()
            return
        try:
            recording = await self._manager.new_recording(
                self._session_id, self._business, self._changed
            )
        except StorageUnavailable as exc:
            # The disk filled (or was made unwritable) since the customer was asked: nothing is
            # recorded; the teller is told why and may ask again once the operator freed it.
            if self.state == "awaiting_consent":
                self.state = "idle"
            await self._broadcast(
                error_message("storage_unavailable", str(exc), "recording_start"), "staff"
            )
            await self._announce()
            # The customer is not given the server's directories.
            raise ProtocolError(
                "storage_unavailable",
                "The recording cannot start just now; nothing was recorded. Please wait for "
                "your relationship manager.",
                "consent",
            ) from exc
        if self.state != "awaiting_consent":
            # Withdrawn (the call ended, the teller stopped) or answered twice while the
            # archive was being registered: nothing may keep recording unattended. Sealed as
            # interrupted, so the chain still shows the archive that was started.
            await recording.stop("interrupted")
            raise ProtocolError("out_of_order", "No consent is asked for any more.", "consent")
        self._recording = recording
        self.state = "recording"
        # The consent moment is the first thing on the recording's timeline.
        consent_ms = recording.mark("consent", "start")
        if self._live is not None:
            values = (self._script or {}).get("values", {})
            self._live.start(self._rules, recording.media_ms_at, recording.archive_id, values)
            self._live.marked("consent", "start", consent_ms)
        for member in self._present.values():
            recording.presence(
                member.participant_id, member.role.value, member.display_name, "joined"
            )
        for (participant_id, source), (role, encoded) in self._published.items():
            recording.follow(participant_id, role.value, source, encoded)
        if self._identity is not None:
            # Verified before the recording started: the archive still carries the result.
            recording.set_identity(self._identity)
        if self._script is not None:
            recording.set_compliance(self._script)
        await self._announce()

    def media_ms(self) -> int:
        """Where a mark made now would fall on the recording's timeline (its media time)."""
        if self._recording is None or self.state != "recording":
            raise ProtocolError("out_of_order", "Start the recording first.", "mark")
        return self._recording.media_ms()

    def mark(self, moment: str, phase: str, media_ms: int) -> None:
        """The teller's mark, at the `media_ms` taken (and logged) just before."""
        if self._recording is None or self.state != "recording":
            raise ProtocolError("out_of_order", "The recording has stopped.", "mark")
        self._recording.mark(moment, phase, media_ms)
        if self._live is not None:
            self._live.marked(moment, phase, media_ms)

    def note(self, moment: str, phase: str) -> int | None:
        """A mark made by the server (not the teller) when a recording runs; None otherwise."""
        if self._recording is None or self.state != "recording":
            return None
        media_ms = self._recording.mark(moment, phase)
        if self._live is not None:
            self._live.marked(moment, phase, media_ms)
        return media_ms

    def identity(self, summary: dict[str, Any]) -> None:
        """The session's identity verification result, for this and any later recording."""
        self._identity = summary
        if self._recording is not None and self.state == "recording":
            self._recording.set_identity(summary)

    async def bind_transaction(
        self, transaction_id: str, sha256: str, signature_sha256: str, signature_png: bytes
    ) -> str | None:
        """Bind a just-signed transaction into the running recording; its archive id once the
        binding is journaled, or None when nothing is being recorded (the approval rules then
        refuse the transaction)."""
        recording = self._recording
        if recording is None or self.state != "recording":
            return None
        await recording.bind_transaction(transaction_id, sha256, signature_sha256, signature_png)
        return recording.archive_id

    async def stop(self, status: str = "complete", *, patience: float | None = None) -> None:
        """Seal the recording; `patience`: how long the seal may wait for the database or the
        disk (the recorder's default; 0 when the worker is stopping) before the manager is left
        to finish it.

        Returns as soon as the recording is held back by its disk (full, or not writable): the
        seal then goes on by itself once the disk takes the writes, while the teller, the call's
        end and the room go on meanwhile, the state saying what it waits for."""
        recording = self._recording
        if recording is None or self.state != "recording":
            if self.state == "awaiting_consent":
                self.state = "idle"
                await self._announce()
            return
        self.state = "sealing"  # first, before any await: a second stop must not seal again
        if self._live is not None:
            try:
                # Before sealing: the warnings end on the recording's own clock.
                await self._live.stop()
            except Exception:
                log.exception("live_checks_stop_failed", archive_id=recording.archive_id)
        await self._announce()
        sealing = asyncio.create_task(self._seal(recording, status, patience))
        self._tasks.add(sealing)
        sealing.add_done_callback(self._tasks.discard)
        held_back = asyncio.ensure_future(recording.held_back())
        try:
            await asyncio.wait((sealing, held_back), return_when=asyncio.FIRST_COMPLETED)
        finally:
            held_back.cancel()
        if sealing.done():
            await sealing
        else:
            log.warning(
                "recording_stop_waits_for_storage",
                archive_id=recording.archive_id,
                error=recording.last_store_error,
            )
            # Nobody awaits it now: a failure after the seal (the sealed hook, the audit entry)
            # would otherwise only surface as asyncio's "exception was never retrieved".
            sealing.add_done_callback(_log_background_failure)
            await self._announce()

    async def _seal(self, recording: RecordingSession, status: str, patience: float | None) -> None:
        try:
            record = await (
                recording.stop(status)
                if patience is None
                else recording.stop(status, patience=patience)
            )
            self.state = "sealed" if status == "complete" else "interrupted"
        except Exception as exc:
            # The seal could not be finished within its patience (or cannot be at all): the
            # recorder manager seals the journal later, with the status journaled at the stop.
            log.exception("recording_seal_failed", archive_id=recording.archive_id)
            self.state = "interrupted"
            await self._manager.seal_failed(recording.archive_id, recording.session_id, exc, "stop")
        else:
            await self._manager.sealed(record.archive_id, record.session_id)
            if self._audit is not None:
                # A seal is a fact (and in the signed manifest chain): logged, never refused.
                await self._audit.append_fact(
                    "recording.sealed",
                    actor=SYSTEM,
                    actor_role=SYSTEM,
                    target=record.archive_id,
                    detail={
                        "session_id": record.session_id,
                        "status": record.status,
                        "manifest_sha256": record.manifest_sha256,
                    },
                )
        await self._announce()

    # -- what the room reports ---------------------------------------------------------------

    def published(self, member: Member, source: str, encoded: EncodedSource) -> None:
        self._published[(member.participant_id, source)] = (member.role, encoded)
        if self._recording is not None and self.state == "recording":
            self._recording.follow(member.participant_id, member.role.value, source, encoded)

    def unpublished(self, member: Member, source: str) -> None:
        self._published.pop((member.participant_id, source), None)
        if self._recording is not None and self.state == "recording":
            self._recording.follow(member.participant_id, member.role.value, source, None)

    def presence(self, member: Member, event: str) -> None:
        """`event`: joined, rejoined, disconnected, left."""
        if event in ("joined", "rejoined"):
            self._present[member.participant_id] = member
        else:
            self._present.pop(member.participant_id, None)
        if self._recording is not None and self.state == "recording":
            self._recording.presence(
                member.participant_id, member.role.value, member.display_name, event
            )

    # -- internals ---------------------------------------------------------------------------

    def _changed(self) -> None:
        task = asyncio.ensure_future(self._announce())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self) -> None:
        # Everyone, the customer too: they see that they are being recorded.
        await self._broadcast(self.message(), "everyone")


def _log_background_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("recording_background_seal_failed", exc_info=error)
