"""Request bodies of the HTTP API, validated before any route logic runs."""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from server.auth.principal import Role
from server.errors import ApiError

Body = TypeVar("Body", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# Passwords are taken verbatim: whitespace is part of them (the CLI stores them as typed).
_Password = Annotated[str, StringConstraints(strip_whitespace=False)]


class LoginBody(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: _Password = Field(min_length=1, max_length=256)


class InvitationBody(_Strict):
    business: Literal["wealth", "insurance", "general"]
    customer_name: str = Field("", max_length=64)
    ttl_minutes: int | None = Field(None, ge=1, le=1440)


class ExpertBody(_Strict):
    username: str = Field(min_length=1, max_length=64)


class ReviewBody(_Strict):
    decision: Literal["approved", "rejected"]
    note: str = Field(min_length=4, max_length=1000)


class NewUserBody(_Strict):
    username: str = Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    password: _Password = Field(min_length=12, max_length=256)
    display_name: str = Field("", max_length=64)
    role: Role


async def parse(request: web.Request, model: type[Body]) -> Body:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", "The request body is not valid JSON.") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, "invalid_request", f"{field}: {first['msg']}") from exc
