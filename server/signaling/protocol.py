"""Signaling protocol v1 (docs/protocol.md section 2): client messages and their validation."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from server.nul import REFUSAL, nul_at

PROTOCOL_VERSION = 1
MAX_SDP_BYTES = 32 * 1024


class ProtocolError(Exception):
    """A client message the server cannot accept; `fatal` ones close the connection."""

    def __init__(self, code: str, message: str, ref: str | None = None, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.fatal = fatal


class _Message(BaseModel):
    # strict: JSON has real booleans and integers; "yes" is not `true` and "0" is not 0.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Literal[1]


class Join(_Message):
    type: Literal["join"]


class Answer(_Message):
    type: Literal["answer"]
    sdp: str = Field(min_length=1, max_length=MAX_SDP_BYTES)

    @field_validator("sdp")
    @classmethod
    def _sdp_bytes(cls, sdp: str) -> str:
        # The limit is in bytes (protocol 2.2); max_length above only counts characters.
        if len(sdp.encode("utf-8")) > MAX_SDP_BYTES:
            raise ValueError(f"at most {MAX_SDP_BYTES} bytes")
        return sdp


class IceCandidate(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    candidate: str = Field(max_length=1024)
    sdpMid: str | None = Field(None, max_length=32)
    sdpMLineIndex: int | None = Field(None, ge=0, le=1024)


class Ice(_Message):
    type: Literal["ice"]
    candidate: IceCandidate | None


class Chat(_Message):
    type: Literal["chat"]
    text: str = Field(min_length=1, max_length=2000)


class ScreenShare(_Message):
    type: Literal["screen_share"]
    active: bool


class Leave(_Message):
    type: Literal["leave"]


class End(_Message):
    type: Literal["end"]


class Ping(_Message):
    type: Literal["ping"]


ScriptValue = Annotated[str, Field(min_length=1, max_length=200)]
ScriptName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class RecordingStart(_Message):
    type: Literal["recording_start"]
    # The sales script read in this recording and its placeholders (product name, risk level,
    # ...): recorded in the manifest so the compliance analysis can be re-run exactly.
    script: ScriptName | None = None
    values: dict[ScriptName, ScriptValue] = Field(default_factory=dict, max_length=32)


class Consent(_Message):
    type: Literal["consent"]
    granted: bool


class Mark(_Message):
    type: Literal["mark"]
    moment: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    phase: Literal["start", "end"]


class RecordingStop(_Message):
    type: Literal["recording_stop"]


class IdentityStart(_Message):
    type: Literal["identity_start"]


class IdentityConsent(_Message):
    type: Literal["identity_consent"]
    granted: bool


class IdentityStep(_Message):
    type: Literal["identity_step"]
    step: Literal["card_front", "card_back", "face", "liveness"]


class IdentityUpload(_Message):
    """Announces a photo of the card; the next frame is binary and carries it (JPEG or PNG)."""

    type: Literal["identity_upload"]
    side: Literal["front", "back"]
    bytes: int = Field(ge=1)


class IdentityManual(_Message):
    type: Literal["identity_manual"]
    decision: Literal["pass", "fail"]
    # Why the teller decided without (or against) the automatic checks: it is the audit record.
    reason: str = Field(min_length=4, max_length=500)


ClientMessage = Annotated[
    Join
    | Answer
    | Ice
    | Chat
    | ScreenShare
    | Leave
    | End
    | Ping
    | RecordingStart
    | Consent
    | Mark
    | RecordingStop
    | IdentityStart
    | IdentityConsent
    | IdentityStep
    | IdentityUpload
    | IdentityManual,
    Field(discriminator="type"),
]
_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_TYPES = (
    "join",
    "answer",
    "ice",
    "chat",
    "screen_share",
    "leave",
    "end",
    "ping",
    "recording_start",
    "consent",
    "mark",
    "recording_stop",
    "identity_start",
    "identity_consent",
    "identity_step",
    "identity_upload",
    "identity_manual",
)


def parse_client_message(raw: str) -> ClientMessage:
    """Validate one text frame; raises ProtocolError with the documented code."""
    try:
        data = json.loads(raw)
    # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; RecursionError,
    # deeply nested arrays (they fit in a small frame).
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", "Messages must be JSON objects.") from exc
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "Messages must be JSON objects.")
    ref = data.get("type") if isinstance(data.get("type"), str) else None
    version = data.get("v")
    # `true == 1` and `1.0 == 1` in Python; neither is protocol version 1.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"This server speaks protocol version {PROTOCOL_VERSION}; reload the page.",
            ref,
            fatal=True,
        )
    if ref not in CLIENT_TYPES:
        raise ProtocolError(
            "invalid_message", f"Unknown message type {ref!r}; see docs/protocol.md.", ref
        )
    try:
        message = _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # The first part of the location is the message type (the union's tag).
        raise _invalid(first["loc"][1:], first["msg"], ref) from exc
    if (where := nul_at(data)) is not None:
        raise _invalid(where, REFUSAL, ref)
    return message


def _invalid(where: tuple[str | int, ...], why: str, ref: str | None) -> ProtocolError:
    field = ".".join(str(part) for part in where) or "message"
    return ProtocolError("invalid_message", f"{field}: {why}", ref)


def server_message(message_type: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": message_type, **fields}


def error_message(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    return server_message("error", code=code, message=message, ref=ref)
