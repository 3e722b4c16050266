"""The signaling WebSocket: authenticates, validates every message, drives the member's room."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

import structlog
from aiohttp import WSMsgType, web

from server.api.access import check_origin, note_refusal, principals, staff_login_holds
from server.auth.principal import Principal, Role
from server.background import cancel_and_wait
from server.context import services
from server.errors import ApiError
from server.identity.images import ImageInputError, ImageLimits, decode_image
from server.sessions.store import SessionStore
from server.settings import Settings
from server.sfu.rooms import CLOSE_ENDED, Room, RoomRegistry, RoomRetired
from server.signaling.protocol import (
    Answer,
    Chat,
    ClientMessage,
    Consent,
    End,
    Ice,
    IdentityConsent,
    IdentityManual,
    IdentityStart,
    IdentityStep,
    IdentityUpload,
    Join,
    Leave,
    Mark,
    Ping,
    ProtocolError,
    RecordingStart,
    RecordingStop,
    ScreenShare,
    error_message,
    parse_client_message,
    server_message,
)

log = structlog.get_logger(__name__)

# aiohttp closes (1009) beyond this; up to it, oversized frames get a readable error instead.
# Room for a photo of the ID card (identity_upload); text messages have their own, lower limit.
HARD_FRAME_LIMIT = 4 * 1024 * 1024
MAX_UPLOAD_BYTES = HARD_FRAME_LIMIT - 1024
CLOSE_CODES = {401: 4401, 403: 4403, 404: 4404, 410: 4410}
CLOSE_WRONG_WORKER = 4421


class Refused(Protocol):
    async def __call__(
        self, status: int, code: str, reason: str, *, method: str | None = None
    ) -> None: ...


class WebSocketConnection:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        if not self._ws.closed:
            await self._ws.send_json(message)

    async def close(self, code: int, reason: str) -> None:
        if not self._ws.closed:
            await self._ws.close(code=code, message=reason.encode())


class _RateLimit:
    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._times: deque[float] = deque()

    def exceeded(self) -> bool:
        now = time.monotonic()
        while self._times and self._times[0] <= now - 1:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) > self._per_second


async def signaling(request: web.Request) -> web.WebSocketResponse:
    svc = services(request)
    ws = web.WebSocketResponse(
        max_msg_size=HARD_FRAME_LIMIT, heartbeat=svc.settings.ws_heartbeat_seconds
    )
    await ws.prepare(request)
    connection = WebSocketConnection(ws)
    try:
        check_origin(request)
        principal, participant_id = await _admit(request)
    except ApiError as exc:
        await note_refusal(request, exc.status, exc.code, exc.message)
        await connection.send(error_message(exc.code, exc.message))
        await connection.close(CLOSE_CODES.get(exc.status, 4400), exc.code)
        return ws
    owner = await svc.workers.claim(request.match_info["session_id"])
    if owner is not None:
        await connection.send(
            server_message(
                "error",
                code="wrong_worker",
                message="This session is hosted elsewhere; connect to ws_url.",
                ref=None,
                ws_url=owner.replace("http", "ws", 1)
                + f"/ws/v1/sessions/{request.match_info['session_id']}",
            )
        )
        await connection.close(CLOSE_WRONG_WORKER, "wrong_worker")
        return ws

    session = _Session(
        svc.rooms,
        svc.sessions,
        request.match_info["session_id"],
        principal,
        participant_id,
        connection,
        svc.settings,
        functools.partial(note_refusal, request, principal=principal),
    )
    watch = (
        asyncio.create_task(_watch_staff_login(request, principal, connection))
        if principal.role is not Role.CUSTOMER
        else None
    )
    try:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                go_on = await session.handle(frame.data)
            elif frame.type == WSMsgType.BINARY:
                go_on = await session.handle_binary(frame.data)
            else:
                continue
            if not go_on:
                break
    finally:
        await cancel_and_wait(watch)
        await session.finish()
    return ws


async def _watch_staff_login(
    request: web.Request, staff: Principal, connection: WebSocketConnection
) -> None:
    """Close a staff member's connection once their login no longer stands: a logout or a
    disabled account must end access to the call too, not only to the next HTTP request.
    (A customer's credential ends with the session, which closes the connection itself.)"""
    every = services(request).settings.ws_login_check_seconds
    while True:
        await asyncio.sleep(every)
        try:
            holds = await staff_login_holds(request, staff)
        except Exception:
            # The database is away: not a reason to cut a call; the next check decides.
            log.warning("ws_login_check_failed", user_id=staff.user_id, exc_info=True)
            continue
        if not holds:
            await connection.send(
                error_message(
                    "not_authenticated",
                    "Your login has ended (logged out, or the account was disabled): log in again.",
                )
            )
            await connection.close(4401, "not_authenticated")
            return


async def _admit(request: web.Request) -> tuple[Principal, str]:
    """The principal and participant id this connection acts as, or an ApiError."""
    store = services(request).sessions
    session = await store.get(request.match_info["session_id"])
    if session is not None and session.state == "ended":
        # First: a customer's credential ends with the call, and "the call is over" is what a
        # customer whose page reconnects just then must be told, not "log in".
        raise ApiError(410, "session_ended", "This session has ended.")
    found = await principals(request)
    if not found:
        raise ApiError(401, "not_authenticated", "Log in, or open your invitation link again.")
    if session is None:
        raise ApiError(404, "unknown_session", "There is no such session.")
    denial: ApiError | None = None
    for principal in found:
        try:
            participant = await store.participant_for(principal, session)
        except ApiError as exc:
            denial = exc
            continue
        return principal, participant.id
    assert denial is not None
    raise denial


class _Session:
    """One connection's protocol state machine."""

    def __init__(
        self,
        rooms: RoomRegistry,
        sessions: SessionStore,
        session_id: str,
        principal: Principal,
        participant_id: str,
        connection: WebSocketConnection,
        settings: Settings,
        refused: Refused,
    ) -> None:
        self._rooms = rooms
        self._sessions = sessions
        self._session_id = session_id
        self._principal = principal
        self._participant_id = participant_id
        self._connection = connection
        self._refused = refused  # the audit's: a message this principal's role may not send
        self._max_bytes: int = settings.ws_max_message_bytes
        self._rate = _RateLimit(settings.ws_max_messages_per_second)
        self._joined = False
        self._done = False  # left or ended deliberately: no rejoin grace
        self._upload: IdentityUpload | None = None  # announced; its binary frame comes next
        self._joined_room: Room | None = None

    async def handle_binary(self, data: bytes) -> bool:
        """Process one binary frame (the photo announced by identity_upload); False closes the
        connection."""
        if self._rate.exceeded():
            await self._error(ProtocolError("rate_limited", "Too many messages; slow down."))
            return True
        upload, self._upload = self._upload, None
        if upload is None:
            await self._error(ProtocolError("bad_json", "Send text frames with JSON."))
            return True
        return await self._run(self._upload_card(upload, data))

    async def _upload_card(self, upload: IdentityUpload, data: bytes) -> None:
        if len(data) != upload.bytes:
            raise ProtocolError(
                "invalid_message",
                f"identity_upload announced {upload.bytes} bytes but {len(data)} came.",
                "identity_upload",
            )
        try:
            # Decoding is CPU work on untrusted bytes: off the loop, with caps checked first.
            image = await asyncio.to_thread(
                decode_image, data, ImageLimits(max_bytes=MAX_UPLOAD_BYTES)
            )
        except ImageInputError as exc:
            raise ProtocolError(
                "bad_image", f"{exc.code}: {exc.message_en}", "identity_upload"
            ) from exc
        except Exception as exc:
            # The image libraries raise what they like on corrupt data (PIL: SyntaxError for a
            # broken EXIF block); to the customer it is a photo that cannot be read.
            log.info("upload_undecodable", participant_id=self._participant_id, error=repr(exc))
            raise ProtocolError(
                "bad_image", "not_an_image: The photo could not be read.", "identity_upload"
            ) from exc
        # The verification checks its state again: it may have moved on during the decoding.
        await self._room("identity_upload").identity_upload(
            self._participant_id, upload.side, image
        )

    async def handle(self, raw: str) -> bool:
        """Process one text frame; False closes the connection."""
        # Binary is accepted only right after identity_upload (protocol 2.1): any other frame in
        # between, even a refused one, withdraws the announcement.
        self._upload = None
        # Every frame counts, refused ones too: they are no way around the limit.
        if self._rate.exceeded():
            await self._error(ProtocolError("rate_limited", "Too many messages; slow down."))
            return True
        if len(raw.encode("utf-8")) > self._max_bytes:
            await self._error(
                ProtocolError(
                    "message_too_large", f"Messages may be at most {self._max_bytes} bytes."
                )
            )
            return True
        return await self._run(self._parse_and_dispatch(raw))

    async def _parse_and_dispatch(self, raw: str) -> None:
        await self._dispatch(parse_client_message(raw))

    async def _run(self, work: Awaitable[None]) -> bool:
        """Await one frame's work, turning every failure into an `error` for the client: one
        bad frame never costs the connection, unless the error is fatal. False closes it."""
        try:
            await work
        except ProtocolError as exc:
            if exc.code == "forbidden":
                await self._refused(403, exc.code, exc.message, method=exc.ref or "message")
            await self._error(exc)
            if exc.fatal:
                # 4410 tells the page the call is over (not a protocol fault to report).
                code = CLOSE_ENDED if exc.code == "session_ended" else 4400
                await self._connection.close(code, exc.code)
                return False
        except ApiError as exc:
            await self._refused(exc.status, exc.code, exc.message, method="message")
            await self._error(ProtocolError(exc.code, exc.message))
        except Exception:
            log.exception("signaling_failed", participant_id=self._participant_id)
            await self._error(
                ProtocolError("internal", "Something went wrong on our side; it has been logged.")
            )
        return not self._done

    def _room(self, ref: str) -> Room:
        """The room this connection joined, to act in as its participant. Refused once the
        session is over (ended or left empty), so that a late frame never brings a finished
        session's room back, and once another connection of the participant replaced this one
        (4409): a frame the old tab sent just before would act on the new tab's peer (answer
        its offer) or membership."""
        room = self._rooms.get(self._session_id)
        if room is None or room is not self._joined_room:
            raise ProtocolError("session_ended", "This session has ended.", ref, fatal=True)
        if not room.holds(self._participant_id, self._connection):
            raise ProtocolError(
                "out_of_order",
                "This connection was replaced by a newer one of yours (or lost): continue there.",
                ref,
            )
        return room

    async def _dispatch(self, message: ClientMessage) -> None:
        if not self._joined and not isinstance(message, Join):
            await self._refuse_if_ended(message.type)
        if isinstance(message, Ping):
            await self._connection.send(server_message("pong"))
            return
        if isinstance(message, Join):
            if self._joined:
                raise ProtocolError("out_of_order", "Already joined.", "join")
            self._joined = True
            while True:
                room = self._joined_room = self._rooms.room(self._session_id)
                try:
                    await room.join(
                        self._participant_id,
                        self._principal.role,
                        self._principal.display_name,
                        self._connection,
                    )
                except RoomRetired:
                    continue  # the last member left while this join waited: a fresh room
                except Exception as exc:
                    # Refused or undone (e.g. the audit log is unavailable): the client may send
                    # `join` again on this connection.
                    self._joined = room.holds(self._participant_id, self._connection)
                    if self._joined or isinstance(exc, (ProtocolError, ApiError)):
                        raise
                    log.exception("join_failed", participant_id=self._participant_id)
                    raise ProtocolError(
                        "internal",
                        "Joining failed on our side (it has been logged) and took no effect: "
                        "send join again.",
                        "join",
                    ) from exc
                return
        if not self._joined:
            raise ProtocolError("out_of_order", "Send join first.", message.type)
        room = self._room(message.type)
        if isinstance(message, Answer):
            await room.answer(self._participant_id, message.sdp)
        elif isinstance(message, Ice):
            await room.ice(self._participant_id, message.candidate)
        elif isinstance(message, Chat):
            await room.chat(self._participant_id, message.text)
        elif isinstance(message, ScreenShare):
            await room.screen_share(self._participant_id, message.active)
        elif isinstance(message, Leave):
            await room.leave(self._participant_id, "left", self._connection)
            # Only once it took effect: a refused leave keeps the rejoin grace of a drop.
            self._done = True
        elif isinstance(message, RecordingStart):
            await room.recording_start(self._participant_id, message.script, dict(message.values))
        elif isinstance(message, Consent):
            await room.consent(self._participant_id, message.granted)
        elif isinstance(message, Mark):
            await room.mark(self._participant_id, message.moment, message.phase)
        elif isinstance(message, RecordingStop):
            await room.recording_stop(self._participant_id)
        elif isinstance(message, IdentityStart):
            await room.identity_start(self._participant_id)
        elif isinstance(message, IdentityConsent):
            await room.identity_consent(self._participant_id, message.granted)
        elif isinstance(message, IdentityStep):
            await room.identity_step(self._participant_id, message.step)
        elif isinstance(message, IdentityUpload):
            if message.bytes > MAX_UPLOAD_BYTES:
                raise ProtocolError(
                    "message_too_large",
                    f"Photos may be at most {MAX_UPLOAD_BYTES} bytes; send a smaller one.",
                    "identity_upload",
                )
            # Before the photo is decoded (seconds of CPU for a large one): refused now if the
            # verification could not use it.
            room.check_upload(self._participant_id, message.side)
            self._upload = message
        elif isinstance(message, IdentityManual):
            await room.identity_manual(self._participant_id, message.decision, message.reason)
        elif isinstance(message, End):
            if self._principal.role not in (Role.TELLER, Role.CUSTOMER):
                raise ProtocolError("forbidden", "Only the teller or the customer can end.", "end")
            await room.end(self._participant_id)
            # Only once it took effect: a refused end (the audit log is down) leaves the
            # connection open so that the client can try again.
            self._done = True

    async def _refuse_if_ended(self, ref: str) -> None:
        """Protocol 2.5: after the end, a connection opened before it gets `session_ended` (and
        4410) for anything it sends, joined or not (a joined one's room is gone: `_room`)."""
        session = await self._sessions.get(self._session_id)
        if session is None or session.state == "ended":
            raise ProtocolError("session_ended", "This session has ended.", ref, fatal=True)

    async def _error(self, exc: ProtocolError) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._connection.send(error_message(exc.code, exc.message, exc.ref))

    async def finish(self) -> None:
        room = self._joined_room
        if room is not None and self._joined and not self._done:
            await room.disconnected(self._participant_id, self._connection)
