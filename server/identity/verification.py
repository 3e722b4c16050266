"""Identity verification inside a call: consent, the card's two sides, face match, liveness.

The teller drives it one step at a time; every image is taken server-side from the customer's
own video track (or, for the card, uploaded by the customer's page), never a picture the client
claims is live. Each attempt is stored as an encrypted record (server/identity/records.py) and
logged; clients get pass/fail and a reason category, never a score (GB/T 38671). Face
recognition is never the only way: a customer who declines it, or a step that fails
`max_attempts` times, leaves the decision to the teller's manual verification, with a reason.

State (docs/protocol.md, "Identity verification"):

    idle -> awaiting_consent -> in_progress -> passed
                             \\-> manual_required (declined)
                 in_progress -> manual_review (a step used up its attempts)
    any of these -> verified_manually (the teller's decision: pass or fail, with a reason)
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

import cv2
import numpy as np
import structlog

from server.audit import SYSTEM, AuditLog
from server.auth.principal import Role
from server.identity.engines import FaceObservation, IdentityEngines
from server.identity.face.match import MESSAGES, Decision, MatchReason, MatchResult
from server.identity.idcard import (
    IdCardFields,
    Problem,
    card_today,
    check_back,
    check_front,
    check_sides,
    staff_card_fields,
)
from server.identity.images import decode_image
from server.identity.liveness import (
    CONTINUITY_THRESHOLDS,
    MIN_FRAMES,
    YAW_FRONTAL,
    Break,
    Challenge,
    LivenessInputError,
    box_change,
    continuity_break,
    judge,
    yaw_ratio,
)
from server.identity.ocr import Side
from server.identity.ocr.reader import CardReading, reading_problems
from server.identity.records import Evidence, IdentityRecords
from server.sessions.store import SessionStore
from server.sfu.decoded import DecodedView, PictureUnavailable
from server.sfu.encoded import EncodedSource
from server.signaling.protocol import ProtocolError, server_message

log = structlog.get_logger(__name__)

Send = Callable[[dict[str, Any], frozenset[Role]], Awaitable[None]]
# The card's fields and the reasons in detail are for the teller (and a silent supervisor);
# the customer sees what to do next and the outcome; an expert sees nothing of it.
STAFF = frozenset({Role.TELLER, Role.SUPERVISOR})
CUSTOMER = frozenset({Role.CUSTOMER})
# Mean absolute difference (grey levels, 80x60 thumbnails) under which two consecutive pictures
# count as a steady card: OCR is only worth running on a card that is held still.
STEADY_DIFF = 6.0
# Analysis rate of the live video: liveness needs several frames per second to see a turn.
ANALYSIS_FPS = 8


class Step(StrEnum):
    CARD_FRONT = "card_front"
    CARD_BACK = "card_back"
    FACE = "face"
    LIVENESS = "liveness"


class Unavailable(Exception):
    """No usable video: the customer's camera is off or the track ended."""


@dataclass(frozen=True)
class Message:
    """A reason the customer (or teller) can act on."""

    reason: str
    message_zh: str
    message_en: str

    @classmethod
    def of(cls, problem: Problem) -> Message:
        return cls(problem.reason.value, problem.message_zh, problem.message_en)

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message_zh": self.message_zh, "message_en": self.message_en}


NO_VIDEO = Message(
    "no_video",
    "未收到您的视频画面，请打开摄像头",
    "no video from the customer's camera; ask them to turn the camera on",
)
NO_CARD = Message(
    "card_not_found",
    "未检测到身份证，请将身份证完整放入画面并保持不动",
    "no card found; hold the whole card in view and keep it still",
)
CHALLENGE_MISSED = Message(
    "challenge_not_completed",
    "未能在规定时间内完成动作，请按提示重试",
    "the requested movement was not seen in time; try again following the prompt",
)
SEVERAL_FACES = Message(
    "several_faces_live",
    "检测到多张人脸，请确保画面中只有您本人",
    "several faces found; make sure only you are in the picture",
)
NO_PORTRAIT = Message(MatchReason.NO_FACE_ON_ID.value, *MESSAGES[MatchReason.NO_FACE_ON_ID])
NO_FACE = Message(MatchReason.NO_FACE_LIVE.value, *MESSAGES[MatchReason.NO_FACE_LIVE])
FACE_CHANGED = Message(
    "face_changed",
    "动作检测中的人脸与身份证照片不一致。请持证人本人正对摄像头完成动作，画面中不要有其他人或照片",
    "the face during the liveness check does not match the ID card; the card holder must do "
    "the movements, facing the camera, with no one else and no photo in view",
)

FACE_CONTINUITY = Message(
    "face_continuity",
    "动作过程中画面里的人脸发生了变化。请同一人全程正对摄像头完成动作，不要切换画面",
    "the face in the picture changed during the movements; please complete every step "
    "yourself, facing the camera the whole time, without switching the picture",
)
FACE_LOST = Message(
    "face_lost",
    "动作过程中您的脸离开了画面。请全程保持脸在画面中，转头幅度不要过大，然后重试",
    "the face left the picture during the movements; keep your face in the picture the whole "
    "time, turn your head only a little, and try again",
)
# What the customer is told when the liveness sequence stops following one face.
BREAK_MESSAGES = {
    Break.NO_FACE: FACE_LOST,
    Break.SEVERAL_FACES: SEVERAL_FACES,
    Break.OTHER_FACE: FACE_CONTINUITY,
    Break.JUMP: FACE_CONTINUITY,
}


@dataclass
class Outcome:
    passed: bool
    messages: list[Message]
    detail: dict[str, Any]  # sensitive: encrypted in the record, never sent to the customer
    evidence: list[Evidence]


@dataclass
class StepState:
    status: str = "pending"  # pending | working | passed | failed
    attempts: int = 0
    messages: list[Message] = field(default_factory=list)
    record_id: str | None = None
    evidence_sha256: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)  # no personal data, no floats

    def public(self) -> dict[str, Any]:
        return {"status": self.status, "messages": [m.to_dict() for m in self.messages]}


@dataclass(frozen=True)
class IdentityServices:
    """What a room's verification needs from the process; built once by the app factory."""

    engines: IdentityEngines
    records: IdentityRecords
    store: SessionStore
    audit: AuditLog
    today: Callable[[], date] = card_today
    # Told the card front's fields when that step passes: the auditor portal's search index.
    on_card_read: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("could not encode evidence image")
    return bytes(data)


async def _evidence(name: str, image: np.ndarray) -> Evidence:
    # Encoding is CPU work (an uploaded card photo may have 25 megapixels): off the event loop,
    # which forwards every room's media.
    return Evidence(name, await asyncio.to_thread(_jpeg, image))


def _decimal(value: float) -> str:
    # The manifest holds no floating-point numbers (docs/archive-format.md section 2).
    return f"{value:.4f}"


def _thumb(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.asarray(cv2.resize(grey, (80, 60), interpolation=cv2.INTER_AREA), np.float32)


def choose_challenges(pool: set[Challenge], count: tuple[int, int]) -> list[Challenge]:
    """A random sequence, unpredictable to a replay prepared in advance: each challenge drawn
    on its own, repeats allowed. With two challenges (YuNet's turns), forbidding repeats left
    only the alternating sequences, which a video looping left-right-left follows half the
    time. When the pool has several, the sequence is never one challenge throughout: the
    customer shows more than one movement."""
    rng = secrets.SystemRandom()
    options = sorted(pool)
    if not options:
        raise ValueError("no liveness challenge is configured that this face engine can judge")
    n = rng.randint(count[0], count[1])
    while True:
        chosen = [rng.choice(options) for _ in range(n)]
        if len(options) == 1 or len(set(chosen)) > 1:
            return chosen


class IdentityVerification:
    """The identity verification of one session's customer; owned by the session's room."""

    def __init__(
        self,
        session_id: str,
        services: IdentityServices,
        send: Send,
        camera: Callable[[], EncodedSource | None],
        marks: Callable[[str, str], None],
        publish: Callable[[dict[str, Any]], None],
    ) -> None:
        self._session_id = session_id
        self._svc = services
        self._config = services.engines.config
        self._send = send
        self._camera = camera
        self._marks = marks
        self._publish = publish
        self.state = "idle"
        self.consent: bool | None = None
        self.steps = {step: StepState() for step in Step}
        self._front_image: np.ndarray | None = None
        self._fields: dict[str, dict[str, Any]] = {}
        self._manual: dict[str, str] | None = None
        self._challenge: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._working: Step | None = None
        # Starting a step (the teller's, or the customer's upload on another connection) and the
        # manual decision check the state, await the database, then change it: one at a time,
        # or two steps started at once would both run (past the attempt limit at the last
        # attempt), and a step started during the manual decision could conclude over it.
        self._changing = asyncio.Lock()
        self._restored = False

    # -- messages ------------------------------------------------------------------------------

    def public_message(self) -> dict[str, Any]:
        return server_message(
            "identity",
            state=self.state,
            steps={step.value: s.public() for step, s in self.steps.items()},
            challenge=self._challenge,
        )

    def staff_message(self) -> dict[str, Any]:
        message = self.public_message()
        for step, s in self.steps.items():
            message["steps"][step.value]["attempts"] = s.attempts
        message.update(
            consent=self.consent,
            max_attempts=self._config.max_attempts,
            fields={side: staff_card_fields(f) for side, f in self._fields.items()},
            manual=self._manual,
        )
        return message

    async def announce(self) -> None:
        await self._send(self.staff_message(), STAFF)
        await self._send(self.public_message(), CUSTOMER)

    async def restore(self) -> None:
        """Pick up where this session's verification was (the process restarted, or the session
        moved to another worker): the customer's answer from the session's events; outcomes,
        attempts, the card photo and each step's manifest from the records."""
        if self._restored:
            return
        self._restored = True
        answers = [
            e.detail["granted"]
            for e in await self._svc.store.events(self._session_id)
            if e.type == "identity_consent"
        ]
        if not answers:
            return  # never asked, or not answered yet: the teller starts again
        self.consent = bool(answers[-1])
        for row in await self._svc.records.for_session(self._session_id):
            opened = await self._svc.records.open(row.id)
            if row.step == "manual":
                self._manual = {
                    "decision": opened.detail["decision"],
                    "reason": opened.detail["reason"],
                    "by": row.participant_id or "",
                }
                continue
            step = Step(row.step)
            state = self.steps[step]
            state.attempts += 1
            state.status = "passed" if row.outcome == "pass" else "failed"
            state.record_id = row.id
            state.evidence_sha256 = list(row.evidence_sha256)
            state.manifest = _manifest(step, opened.detail)
            if step is Step.CARD_FRONT and row.outcome == "pass":
                self._fields["front"] = opened.detail.get("fields", {})
                self._front_image = await asyncio.to_thread(
                    decode_image, opened.evidence["card_front.jpg"]
                )
        if self._manual is not None:
            self.state = "verified_manually"
        elif not self.consent:
            self.state = "manual_required"
        elif all(s.status == "passed" for s in self.steps.values()):
            self.state = "passed"
        elif any(
            s.status == "failed" and s.attempts >= self._config.max_attempts
            for s in self.steps.values()
        ):
            self.state = "manual_review"
        else:
            self.state = "in_progress"

    # -- the teller and the customer -----------------------------------------------------------

    async def start(self, teller_id: str, customer_connected: bool) -> None:
        if self.state not in ("idle", "manual_required"):
            raise ProtocolError(
                "out_of_order", "Identity verification has already started.", "identity_start"
            )
        if not customer_connected:
            raise ProtocolError(
                "out_of_order", "The customer must be in the call.", "identity_start"
            )
        await self._log("identity.requested", teller_id, Role.TELLER)
        self.state = "awaiting_consent"
        await self._send(server_message("identity_consent_request"), CUSTOMER)
        await self.announce()

    async def give_consent(self, customer_id: str, granted: bool) -> None:
        if self.state != "awaiting_consent":
            raise ProtocolError("out_of_order", "No consent was asked for.", "identity_consent")
        await self._log("identity.consent", customer_id, Role.CUSTOMER, {"granted": granted})
        await self._svc.store.record(
            self._session_id, "identity_consent", customer_id, {"granted": granted}
        )
        self.consent = granted
        self.state = "in_progress" if granted else "manual_required"
        if granted:
            self._marks("identity", "start")
        await self.announce()

    async def run_step(self, teller_id: str, step: Step) -> None:
        """Start one automatic step in the background; its result is announced when done."""
        async with self._changing:
            await self._check_can_run(step, "identity_step")
            await self._log("identity.step_started", teller_id, Role.TELLER, {"step": step.value})
            self._begin(step)
            self._task = asyncio.ensure_future(self._run(step, None, teller_id))

    async def upload_card(self, customer_id: str, side: Side, image: np.ndarray) -> None:
        """The customer's page sent a photo of the card: it replaces a running camera capture
        of the same side (which then does not count as an attempt)."""
        step = Step(f"card_{side}")
        async with self._changing:
            if self._working is step and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self._check_can_run(step, "identity_upload")
            self._begin(step)
            self._task = asyncio.ensure_future(self._run(step, image, customer_id))

    async def manual(self, teller_id: str, decision: str, reason: str) -> None:
        async with self._changing:
            await self._decide(teller_id, decision, reason)

    async def _decide(self, teller_id: str, decision: str, reason: str) -> None:
        if self.state in ("idle", "awaiting_consent") or self._working is not None:
            raise ProtocolError(
                "out_of_order",
                "Start identity verification first, and wait for the running step to end.",
                "identity_manual",
            )
        await self._log(
            "identity.manual",
            teller_id,
            Role.TELLER,
            {"decision": decision, "reason": reason, "previous_state": self.state},
        )
        record = await self._svc.records.add(
            self._session_id,
            teller_id,
            "manual",
            decision,
            "manual",
            {"decision": decision, "reason": reason, "previous_state": self.state},
            [],
        )
        self._manual = {"decision": decision, "reason": reason, "by": teller_id}
        self.state = "verified_manually"
        await self._conclude(method="manual", record_id=record.id)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- running one step ---------------------------------------------------------------------

    async def _check_can_run(self, step: Step, ref: str) -> None:
        if self.state != "in_progress":
            why = {
                "idle": "Start identity verification first.",
                "awaiting_consent": "Wait for the customer's consent.",
                "manual_required": "The customer declined face recognition; verify manually.",
                "manual_review": "Attempts are used up; verify manually.",
            }.get(self.state, "Identity verification has ended.")
            raise ProtocolError("out_of_order", why, ref)
        if self._working is not None:
            raise ProtocolError("busy", f"Wait for {self._working.value} to finish.", ref)
        if self.steps[step].status == "passed":
            raise ProtocolError("out_of_order", f"{step.value} has already passed.", ref)
        # Both compare the live face with the card's portrait. Liveness run without it would
        # prove only that someone moved, and a photo held up for the face step would then pass.
        if step in (Step.FACE, Step.LIVENESS) and self._front_image is None:
            raise ProtocolError(
                "out_of_order", "Capture the front of the card first: its photo is needed.", ref
            )
        # The back's validity term must fit the holder's age, read from the front's number.
        if step is Step.CARD_BACK and self.steps[Step.CARD_FRONT].status != "passed":
            raise ProtocolError(
                "out_of_order",
                "Capture the front of the card first: the back is checked against it.",
                ref,
            )
        used = await self._svc.records.attempts(self._session_id, step.value)
        if used >= self._config.max_attempts:
            self.state = "manual_review"
            await self.announce()
            raise ProtocolError(
                "attempts_exhausted", f"{step.value}: no attempts left; verify manually.", ref
            )

    def _begin(self, step: Step) -> None:
        self._working = step
        self.steps[step].status = "working"
        self.steps[step].messages = []

    async def _run(self, step: Step, upload: np.ndarray | None, actor: str) -> None:
        try:
            await self.announce()
            try:
                if step in (Step.CARD_FRONT, Step.CARD_BACK):
                    outcome = await self._card(
                        "front" if step is Step.CARD_FRONT else "back", upload
                    )
                elif step is Step.FACE:
                    outcome = await self._face()
                else:
                    outcome = await self._liveness()
            except Unavailable:
                outcome = Outcome(False, [NO_VIDEO], {"error": NO_VIDEO.reason}, [])
            finally:
                self._challenge = None
            await self._finish(step, outcome, actor, upload is not None)
        except asyncio.CancelledError:
            self.steps[step].status = "pending"
            raise
        except Exception:
            log.exception("identity_step_failed", session_id=self._session_id, step=step.value)
            self.steps[step].status = "failed"
            self.steps[step].messages = [
                Message("internal", "系统繁忙，请稍后重试", "internal error; it has been logged")
            ]
            await self.announce()
        finally:
            self._working = None

    async def _finish(self, step: Step, outcome: Outcome, actor: str, uploaded: bool) -> None:
        state = self.steps[step]
        reason = outcome.messages[0].reason if outcome.messages else "passed"
        decision = "pass" if outcome.passed else "fail"
        detail = outcome.detail | {"source": "upload" if uploaded else "camera"}
        record = await self._svc.records.add(
            self._session_id, actor, step.value, decision, reason, detail, outcome.evidence
        )
        state.attempts = await self._svc.records.attempts(self._session_id, step.value)
        state.status = "passed" if outcome.passed else "failed"
        state.messages = outcome.messages
        state.record_id = record.id
        state.evidence_sha256 = list(record.evidence_sha256)
        state.manifest = _manifest(step, detail)
        if step is Step.CARD_FRONT and outcome.passed and self._svc.on_card_read is not None:
            try:
                await self._svc.on_card_read(self._session_id, self._fields.get("front", {}))
            except Exception:
                # The verification stands; the archive stays findable by name and teller.
                log.exception("identity_card_not_indexed", session_id=self._session_id)
        await self._svc.audit.append_fact(
            "identity.checked",
            actor=actor,
            actor_role=Role.CUSTOMER.value if uploaded else Role.TELLER.value,
            target=self._session_id,
            detail={"step": step.value, "outcome": decision, "reason": reason, "record": record.id},
        )
        await self._svc.store.record(
            self._session_id,
            "identity_checked",
            None,
            {"step": step.value, "outcome": decision, "reason": reason, "record": record.id},
        )
        if not outcome.passed and state.attempts >= self._config.max_attempts:
            self.state = "manual_review"
        if all(s.status == "passed" for s in self.steps.values()):
            self.state = "passed"
            await self._conclude(method="automatic", record_id=None)
            return
        await self.announce()

    async def _conclude(self, method: str, record_id: str | None) -> None:
        passed = self.state == "passed" or (
            self._manual is not None and self._manual["decision"] == "pass"
        )
        summary = self.summary(method, record_id)
        await self._svc.audit.append_fact(
            "identity.result",
            actor=SYSTEM,
            actor_role=SYSTEM,
            target=self._session_id,
            detail={"decision": "pass" if passed else "fail", "method": method},
        )
        await self._svc.store.record(
            self._session_id,
            "identity_result",
            None,
            {"decision": "pass" if passed else "fail", "method": method},
        )
        self._marks("identity", "end")
        self._publish(summary)
        await self.announce()

    def summary(self, method: str, manual_record: str | None) -> dict[str, Any]:
        """The identity moment of the archive manifest: outcomes, scores, thresholds, model
        versions and evidence hashes; no card fields (the manifest is not encrypted)."""
        passed = self.state == "passed" or (
            self._manual is not None and self._manual["decision"] == "pass"
        )
        steps = {
            step.value: {
                "outcome": s.status,
                "attempts": s.attempts,
                "reason": s.messages[0].reason if s.messages else None,
                "record_id": s.record_id,
                "evidence_sha256": s.evidence_sha256,
                **s.manifest,
            }
            for step, s in self.steps.items()
        }
        document: dict[str, Any] = {
            "version": 1,
            "decision": "pass" if passed else "fail",
            "method": method,
            "face_recognition_consent": self.consent,
            "steps": steps,
        }
        if self._manual is not None:
            document["manual"] = self._manual | {"record_id": manual_record}
        return document

    # -- the steps ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _view(self, max_fps: float) -> Any:
        source = self._camera()
        if source is None:
            raise Unavailable
        async with DecodedView(source, max_fps=max_fps) as view:
            yield view

    async def _pictures(self, seconds: float, max_fps: float) -> Any:
        """Pictures of the customer's camera until `seconds` have passed."""
        deadline = time.monotonic() + seconds
        async with self._view(max_fps) as view:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    picture = await view.next_picture(timeout=remaining)
                except (TimeoutError, PictureUnavailable):
                    return
                yield picture.image

    async def _card(self, side: Side, upload: np.ndarray | None) -> Outcome:
        engines = self._svc.engines
        reading: CardReading | None = None
        if upload is not None:
            reading = await engines.read_card_async(upload)
        else:
            got_video = False
            previous: np.ndarray | None = None
            async for image in self._pictures(self._config.card_capture_seconds, 4):
                got_video = True
                thumb = _thumb(image)
                steady = previous is not None and float(np.abs(thumb - previous).mean()) < (
                    STEADY_DIFF
                )
                previous = thumb
                if not steady:
                    continue
                reading = await engines.read_card_async(image)
                if reading.complete and reading.side == side and not reading.quality:
                    break
                # Still looking: tell the customer what to change while they hold the card.
                hint = reading_problems(reading, side)
                if hint:
                    await self._send(
                        server_message("identity_hint", message=Message.of(hint[0]).to_dict()),
                        CUSTOMER,
                    )
            if not got_video:
                raise Unavailable
        if reading is None:
            return Outcome(False, [NO_CARD], {"error": NO_CARD.reason}, [])
        problems = reading_problems(reading, side)
        if side == "front":
            problems += check_front(reading.fields, self._svc.today())
        else:
            problems += check_back(reading.fields, self._svc.today())
            front = IdCardFields(id_number=self._fields["front"].get("id_number"))
            problems += check_sides(front, reading.fields)
        fields = {
            k: v
            for k, v in reading.fields.to_dict().items()
            if v not in (None, False) and k in (_FRONT_KEYS if side == "front" else _BACK_KEYS)
        }
        self._fields[side] = fields
        messages = [Message.of(p) for p in problems]
        # The face and liveness steps compare with the portrait, and a passed front cannot be
        # taken again: a front whose portrait no detector finds (glare on it, a finger over it)
        # fails now, while the customer can still retake it.
        if (
            side == "front"
            and not problems
            and (await engines.observe_face_async(reading.image)).faces == 0
        ):
            messages.append(NO_PORTRAIT)
        passed = not messages
        # The picture as it was read, upright: a card held upside down has its portrait upside
        # down too, where no face is found to match.
        if passed and side == "front":
            self._front_image = reading.image
        return Outcome(
            passed,
            messages,
            {
                "fields": fields,
                "problems": [p.to_dict() for p in problems],
                "ocr_models": engines.ocr().model_versions,
            },
            [await _evidence(f"card_{side}.jpg", reading.image)],
        )

    async def _face(self) -> Outcome:
        assert self._front_image is not None
        engines = self._svc.engines
        live: np.ndarray | None = None
        best: tuple[float, np.ndarray] | None = None  # the most frontal single face seen
        async for image in self._pictures(self._config.face_capture_seconds, 4):
            live = image
            seen = await engines.observe_face_async(image)
            if seen.faces > 1:
                best = None  # several people in view: the match below says so, at once
                break
            if seen.landmarks is None:
                continue
            yaw = abs(yaw_ratio(seen.landmarks))
            if best is None or yaw < best[0]:
                best = (yaw, image)
            # A turned head matches poorly: compare a frontal view, as a person would.
            if yaw < YAW_FRONTAL:
                break
        if live is None:
            raise Unavailable
        chosen = best[1] if best is not None else live
        result = await engines.match_async(self._front_image, chosen)
        return Outcome(
            result.decision is Decision.PASS,
            [] if result.decision is Decision.PASS else [_match_message(result)],
            result.audit_dict(),
            [await _evidence("face_live.jpg", chosen)],
        )

    async def _liveness(self) -> Outcome:
        engines = self._svc.engines
        pool = set(self._config.liveness_challenges) & engines.supported_challenges()
        challenges = choose_challenges(pool, self._config.challenge_count)
        threshold = CONTINUITY_THRESHOLDS[self._config.face_engine]
        evidence: list[Evidence] = []
        judged: list[dict[str, Any]] = []
        frontal: tuple[float, np.ndarray] | None = None
        # The face followed from picture to picture, across the challenges, and its picture: the
        # face that moves must be the face matched with the card, not a photo of the holder
        # held up for the frontal pose and someone else doing the turns.
        followed: tuple[FaceObservation, np.ndarray] | None = None
        for index, challenge in enumerate(challenges):
            self._challenge = {
                "challenge": challenge.value,
                "index": index,
                "count": len(challenges),
                "seconds": self._config.challenge_seconds,
            }
            await self.announce()
            frames: list[np.ndarray] = []
            done = got_video = False
            broken: tuple[Break, FaceObservation, np.ndarray] | None = None
            started = time.monotonic()
            # Only pictures from the prompt on, for `challenge_seconds`: the movement must answer
            # this prompt, not be something the camera showed before it or long after.
            async for image in self._pictures(self._config.challenge_seconds, ANALYSIS_FPS):
                got_video = True
                seen = await engines.observe_face_async(
                    image, None if followed is None else followed[0].embedding, embed=True
                )
                if followed is None and seen.faces == 0:
                    continue  # nobody in view yet: the sequence starts at the first face
                kind = continuity_break(
                    seen.faces,
                    seen.box,
                    None if followed is None else followed[0].box,
                    seen.similarity,
                    threshold,
                )
                if kind is not None:
                    broken = (kind, seen, image)
                    break
                followed = (seen, image)
                assert seen.landmarks is not None  # one face was seen
                # Turned faces match poorly: the identity check uses the most frontal frame.
                yaw = abs(yaw_ratio(seen.landmarks))
                if frontal is None or yaw < frontal[0]:
                    frontal = (yaw, image)
                frames.append(seen.landmarks)
                try:
                    done = len(frames) >= 2 * MIN_FRAMES and judge(challenge, frames)
                except LivenessInputError:
                    done = False
                if done:
                    evidence.append(
                        await _evidence(f"liveness_{index}_{challenge.value}.jpg", image)
                    )
                    break
            judged.append(
                {
                    "challenge": challenge.value,
                    "passed": done,
                    "frames": len(frames),
                    "ms": int((time.monotonic() - started) * 1000),
                }
            )
            if broken is not None:
                return await self._broken(broken, followed, threshold, judged, evidence)
            if not got_video:
                raise Unavailable
            if not frames:
                # The camera works but nobody is in view: "turn the camera on" would mislead.
                return _liveness_failed(NO_FACE, judged, evidence)
            if not done:
                return _liveness_failed(CHALLENGE_MISSED, judged, evidence)
        # The person who moved must be the person on the card: `_check_can_run` guarantees the
        # card photo, every passed challenge saw a face, and every picture from the first face
        # on showed the same one, so the most frontal of them stands for the face that moved.
        assert self._front_image is not None and frontal is not None
        same = await engines.match_async(self._front_image, frontal[1])
        evidence.insert(0, await _evidence("liveness_frontal.jpg", frontal[1]))
        if same.decision is not Decision.PASS:
            outcome = _liveness_failed(FACE_CHANGED, judged, evidence)
            outcome.detail["match"] = same.audit_dict()
            return outcome
        return Outcome(True, [], {"challenges": judged}, evidence)

    async def _broken(
        self,
        broken: tuple[Break, FaceObservation, np.ndarray],
        followed: tuple[FaceObservation, np.ndarray] | None,
        threshold: float,
        judged: list[dict[str, Any]],
        evidence: list[Evidence],
    ) -> Outcome:
        """The liveness attempt that stopped following one face: the customer is told what to
        do; the record keeps why, with the numbers, and the pictures before and at the break."""
        kind, seen, image = broken
        continuity: dict[str, Any] = {"break": kind.value, "threshold": threshold}
        if seen.similarity is not None:
            continuity["similarity"] = round(seen.similarity, 4)
        if followed is not None and followed[0].box is not None and seen.box is not None:
            shift, scale = box_change(followed[0].box, seen.box)
            continuity |= {"shift": round(shift, 4), "scale": round(scale, 4)}
        if followed is not None:
            evidence.append(await _evidence("liveness_before_break.jpg", followed[1]))
        evidence.append(await _evidence("liveness_break.jpg", image))
        outcome = _liveness_failed(BREAK_MESSAGES[kind], judged, evidence)
        outcome.detail["continuity"] = continuity
        return outcome

    async def _log(
        self, action: str, actor: str, role: Role, detail: dict[str, Any] | None = None
    ) -> None:
        await self._svc.audit.append(
            action, actor=actor, actor_role=role.value, target=self._session_id, detail=detail
        )


_FRONT_KEYS = ("name", "sex", "ethnicity", "birth_date", "address", "id_number")
_BACK_KEYS = ("issuing_authority", "valid_from", "valid_until", "valid_long_term")


def _match_message(result: MatchResult) -> Message:
    return Message(result.reason.value, result.message_zh, result.message_en)


def _liveness_failed(
    message: Message, judged: list[dict[str, Any]], evidence: list[Evidence]
) -> Outcome:
    return Outcome(False, [message], {"challenges": judged, "error": message.reason}, evidence)


def _manifest(step: Step, detail: dict[str, Any]) -> dict[str, Any]:
    """A step's part of the manifest, from its record's detail: a room restored from the records
    seals the same manifest as the room that ran the step. Details without these keys (no
    picture or no video, or an older card record without its OCR models) add nothing."""
    if step in (Step.CARD_FRONT, Step.CARD_BACK):
        return {"ocr_models": detail["ocr_models"]} if "ocr_models" in detail else {}
    if step is Step.FACE:
        if "threshold" not in detail:
            return {}
        return {
            "engine": detail["engine"],
            "model_versions": detail["model_versions"],
            "score": None if detail["score"] is None else _decimal(detail["score"]),
            "threshold": _decimal(detail["threshold"]),
        }
    if "challenges" not in detail:
        return {}
    # The challenges asked, up to a failed one; judged on the camera's own, unmirrored frames.
    return {"challenges": [c["challenge"] for c in detail["challenges"]], "mirrored": False}
