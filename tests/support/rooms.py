"""A session's room with everything real but the database, the audit log and the identity
checks: joins run to the end, and each test makes the part it needs fail."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import types
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from server.audit import AuditUnavailable
from server.auth.principal import Role
from server.errors import ApiError
from server.identity.verification import Step, StepState
from server.settings import Settings
from server.sfu.ice_policy import IcePolicy
from server.sfu.rooms import RoomRegistry
from server.sfu.turn import BrowserIce, TurnConfig
from server.signaling.handler import _Session

_NOW = datetime.datetime.now(datetime.UTC)


def _participant(participant_id: str, role: str) -> Any:
    return types.SimpleNamespace(
        id=participant_id,
        role=role,
        display_name=participant_id,
        state="connected",
        joined_at=_NOW,
        left_at=None,
    )


class Store:
    def __init__(self) -> None:
        self.session = types.SimpleNamespace(
            id="s_1",
            state="active",
            business="wealth",
            customer_name="c",
            created_at=_NOW,
            started_at=_NOW,
            ended_at=None,
            worker=None,
            teller=types.SimpleNamespace(display_name="t", id="u", username="t", role="teller"),
            participants=[_participant("p_t", "teller"), _participant("p_c", "customer")],
        )
        self.fail: set[str] = set()  # write kinds that raise, once each
        self.states: list[tuple[str, str]] = []
        self.slow = 0.0

    async def _write(self, kind: str) -> None:
        await asyncio.sleep(self.slow)
        if kind in self.fail:
            self.fail.discard(kind)
            raise ConnectionError(f"database hiccup at {kind}")

    async def require(self, session_id: str) -> Any:
        return self.session

    async def get(self, session_id: str) -> Any:
        return self.session

    async def update_participant(self, participant_id: str, state: str, **kwargs: Any) -> None:
        self.states.append((participant_id, state))
        await self._write(f"update_participant:{state}")

    async def record(self, session_id: str, kind: str, *args: Any, **kwargs: Any) -> None:
        await self._write(kind)

    async def mark_active(self, session_id: str) -> None:
        await self._write("mark_active")

    async def chat(self, session_id: str) -> list[Any]:
        return []


class Audit:
    def __init__(self) -> None:
        self.down = False
        self.entries: list[tuple[str, str, dict[str, Any]]] = []  # action, actor, detail

    async def append(self, action: str, *, actor: str, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise AuditUnavailable()
        self.entries.append((action, actor, kwargs.get("detail") or {}))

    async def append_fact(self, action: str, *, actor: str, **kwargs: Any) -> None:
        with contextlib.suppress(AuditUnavailable):
            await self.append(action, actor=actor, **kwargs)


class _Manager:
    def store_status(self) -> Any:
        return types.SimpleNamespace(pending_count=0, last_error=None, consecutive_failures=0)


class Connection:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_with: int | None = None
        self.close_error: BaseException | None = None  # raised by close, e.g. at a shutdown

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        if self.close_error is not None:
            raise self.close_error
        self.closed_with = code

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]

    def errors(self) -> list[str]:
        return [m["code"] for m in self.sent if m["type"] == "error"]


class Identity:
    """The verification's state as the signaling reads it; uploads are collected."""

    def __init__(self) -> None:
        self.state = "idle"
        self.steps = {step: StepState() for step in Step}
        self.uploads: list[tuple[str, Any]] = []
        self.refuse: ApiError | None = None

    async def upload_card(self, customer_id: str, side: str, image: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.uploads.append((side, image))

    async def restore(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def public_message(self) -> dict[str, Any]:
        return {"type": "identity"}

    def staff_message(self) -> dict[str, Any]:
        return {"type": "identity"}


class Call:
    def __init__(self) -> None:
        self.store = Store()
        self.audit = Audit()
        self.settings = Settings.model_validate({})
        self.rooms = RoomRegistry(
            self.store,  # type: ignore[arg-type]
            self.settings,
            IcePolicy([]),
            BrowserIce([], TurnConfig(), None),
            _Manager(),  # type: ignore[arg-type]
            self.audit,  # type: ignore[arg-type]
            types.SimpleNamespace(engines=types.SimpleNamespace(config=None)),  # type: ignore[arg-type]
        )
        self.clients: list[RTCPeerConnection] = []
        self.identity = Identity()
        real_room = self.rooms.room

        def room(session_id: str) -> Any:
            created = real_room(session_id)
            created.identity = self.identity  # type: ignore[assignment]
            return created

        self.rooms.room = room  # type: ignore[method-assign]

    def connect(self, participant_id: str, role: Role) -> tuple[_Session, Connection]:
        connection = Connection()
        principal = types.SimpleNamespace(role=role, display_name=participant_id)
        session = _Session(
            self.rooms,
            self.store,  # type: ignore[arg-type]
            "s_1",
            principal,  # type: ignore[arg-type]
            participant_id,
            connection,  # type: ignore[arg-type]
            self.settings,
            _not_audited,
        )
        return session, connection

    async def close(self) -> None:
        await self.rooms.shutdown()
        for client in self.clients:
            await client.close()


async def _not_audited(status: int, code: str, reason: str, *, method: str | None = None) -> None:
    """Refusals go to the audit log through the app (tested in test_signaling_errors.py)."""


async def teller_in_call(call: Call) -> Connection:
    """A teller in the call who has answered its offer (so that the next one goes out at once)."""
    session, connection = call.connect("p_t", Role.TELLER)
    assert await session.handle('{"v":1,"type":"join"}')
    offer = next(m for m in connection.sent if m["type"] == "offer")
    client = RTCPeerConnection()
    call.clients.append(client)
    await client.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
    await client.setLocalDescription(await client.createAnswer())
    answer = {"v": 1, "type": "answer", "sdp": client.localDescription.sdp}
    assert await session.handle(json.dumps(answer))
    assert connection.errors() == []
    return connection
