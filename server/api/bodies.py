"""Request bodies of the HTTP API, validated before any route logic runs."""

from __future__ import annotations

import json
from datetime import date
from inspect import isclass
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from server.auth.accounts import MAX_REASON_LENGTH, MIN_REASON_LENGTH
from server.auth.passwords import MIN_PASSWORD_LENGTH
from server.auth.principal import Role
from server.errors import ApiError, Rule, invalid
from server.nul import REFUSAL, nul_at
from server.workflow.transactions.request import TransactionRequest

Body = TypeVar("Body", bound=BaseModel)


class _Strict(BaseModel):
    # Integers and booleans are strict (each field says so): "yes" is not `true` and "5" not 5.
    # (Not the whole model: strictly, a date or an enum would have to be a Python object.)
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# Passwords are taken verbatim: whitespace is part of them (the CLI stores them as typed).
_Password = Annotated[str, StringConstraints(strip_whitespace=False)]
# A password an account is given (by the admin page, `vteller admin create-user` and
# `reset-password`): what hash_password accepts, and not so long that hashing it is a burden.
_NewPassword = Annotated[_Password, Field(min_length=MIN_PASSWORD_LENGTH, max_length=256)]


class LoginBody(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: _Password = Field(min_length=1, max_length=256)


class InvitationBody(_Strict):
    business: Literal["wealth", "insurance", "general"]
    customer_name: str = Field("", max_length=64)
    ttl_minutes: int | None = Field(None, ge=1, le=1440, strict=True)


class ExpertBody(_Strict):
    username: str = Field(min_length=1, max_length=64)


class ReviewBody(_Strict):
    decision: Literal["approved", "rejected"]
    note: str = Field(min_length=4, max_length=1000)


class NewUserBody(_Strict):
    username: str = Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    password: _NewPassword
    display_name: str = Field("", max_length=64)
    role: Role


class NewPasswordBody(_Strict):
    password: _NewPassword


class DisableAccountBody(_Strict):
    # `vteller admin disable-user --reason`'s bounds: the audit log keeps it.
    reason: str = Field(min_length=MIN_REASON_LENGTH, max_length=MAX_REASON_LENGTH)


class ArchiveSearchBody(_Strict):
    """Auditor search; a POST body so that ID numbers never appear in URLs or access logs."""

    date_from: date | None = None
    date_to: date | None = None
    teller: str = Field("", max_length=64)
    customer_name: str = Field("", max_length=64)
    id_number: str = Field("", max_length=32)
    business: str = Field("", max_length=16)
    product: str = Field("", max_length=64)
    compliance: Literal["", "pass", "fail", "needs_review", "pending"] = ""
    hold: Literal["", "held", "not_held"] = ""
    page: int = Field(1, ge=1, le=10000, strict=True)

    @model_validator(mode="after")
    def _dates_in_order(self) -> ArchiveSearchBody:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        return self


class UnrecordedSessionsQuery(_Strict):
    """The auditor's list of sessions never recorded: a query string (parse_query), whose
    values are text, so the number is not strict. Days and an outcome: nothing of a person."""

    date_from: date | None = None
    date_to: date | None = None
    identity: Literal["failed", "passed", "none", "all"] = "all"
    limit: int = Field(50, ge=1, le=200)

    @field_validator("date_to")
    @classmethod
    def _not_before_date_from(cls, date_to: date | None, info: ValidationInfo) -> date | None:
        date_from = info.data.get("date_from")
        if date_to and date_from and date_to < date_from:
            raise ValueError("date_to is before date_from")
        return date_to


class LegalHoldBody(_Strict):
    held: bool = Field(strict=True)
    reason: str = Field(min_length=4, max_length=500)


class QueueJoinBody(_Strict):
    topic: Literal["wealth", "insurance", "cards", "other"]
    elderly: bool = Field(False, strict=True)


class CallbackBody(_Strict):
    # Checked by server/workflow/queue/phone.py, which says what a valid number looks like.
    phone: str = Field(min_length=1, max_length=32)


class TellerStatusBody(_Strict):
    status: Literal["available", "away"]


class TellerSkillsBody(_Strict):
    skills: list[Literal["wealth", "insurance", "general"]] = Field(max_length=3)


class AssignBody(_Strict):
    teller_id: str = Field(min_length=1, max_length=32)


class TransactionBody(_Strict):
    transaction: TransactionRequest


class OverrideBody(_Strict):
    reason: str = Field(min_length=1, max_length=2000)


class RejectBody(_Strict):
    reason: str = Field(min_length=4, max_length=1000)


async def parse(request: web.Request, model: type[Body]) -> Body:
    try:
        raw = await request.json()
    except json.JSONDecodeError as exc:
        raise _bad_json(_undecodable(exc, request.content_type)) from exc
    except LookupError as exc:
        raise _bad_json(f"the charset {request.charset!r} is unknown; send UTF-8") from exc
    except UnicodeDecodeError as exc:
        raise _bad_json("the body is not UTF-8 text") from exc
    except RecursionError as exc:
        raise _bad_json("arrays or objects are nested too deeply") from exc
    except ValueError as exc:
        # The one ValueError left: an integer longer than Python converts (sys.int_info).
        raise _bad_json("a number has too many digits") from exc
    return _validated(model, raw)


def parse_query(request: web.Request, model: type[Body]) -> Body:
    """The request's query string as `model` (each parameter's first value), refused as a
    body's fields are: 400 invalid_request naming the parameter and its rule."""
    return _validated(model, dict(request.query))


def _validated(model: type[Body], raw: Any) -> Body:
    try:
        body = model.model_validate(raw)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0], model) from exc
    if (where := nul_at(raw)) is not None:
        raise invalid(_dotted(where), Rule.FORMAT, REFUSAL)
    return body


# pydantic's error types (https://docs.pydantic.dev/latest/errors/validation_errors/) as the
# rules an API client is told (server/errors.py); other `*_type` errors are TYPE, other
# `*_parsing` errors FORMAT, and the rest (a model's own validator) INVALID.
_RULES: dict[str, Rule] = {
    "missing": Rule.REQUIRED,
    "union_tag_not_found": Rule.REQUIRED,
    "extra_forbidden": Rule.UNKNOWN_FIELD,
    "string_too_short": Rule.TOO_SHORT,
    "too_short": Rule.TOO_SHORT,
    "string_too_long": Rule.TOO_LONG,
    "too_long": Rule.TOO_LONG,
    "greater_than": Rule.RANGE,
    "greater_than_equal": Rule.RANGE,
    "less_than": Rule.RANGE,
    "less_than_equal": Rule.RANGE,
    "int_from_float": Rule.TYPE,
    "string_pattern_mismatch": Rule.FORMAT,
    "date_from_datetime_inexact": Rule.FORMAT,
    "literal_error": Rule.CHOICE,
    "enum": Rule.CHOICE,
    "union_tag_invalid": Rule.CHOICE,
}


def _refusal(error: ErrorDetails, model: type[BaseModel]) -> ApiError:
    """The first thing pydantic refused, with the field's path in the body and its rule. The
    message is pydantic's own, naming the field as pydantic's location does."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind in _RULES:
        rule = _RULES[kind]
    elif kind.endswith("_type"):
        rule = Rule.TYPE
    elif kind.endswith("_parsing"):
        rule = Rule.FORMAT
    else:
        rule = Rule.INVALID
    if rule is Rule.TOO_SHORT and ctx.get("min_length") == 1:
        rule = Rule.REQUIRED  # nothing written where something must be (whitespace is stripped)
    path = _json_path(model, error["loc"])
    if kind.startswith("union_tag_"):
        # The refused member is the union's tag, which pydantic's context quotes: `'kind'`.
        path = (*path, str(ctx["discriminator"]).strip("'"))
    return invalid(_dotted(path), rule, error["msg"], named=_dotted(error["loc"]))


def _json_path(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """pydantic's location as a path in the JSON body. pydantic adds the member's tag after a
    tagged union's field (`transaction.purchase.amount` is the body's `transaction.amount`) and
    `[key]` after a refused key of a dict (the dict is the field then: `transaction.details`);
    the model's types tell a tag from a field of the same name (`service`)."""
    path: list[str | int] = []
    kind: Any = model
    tag: str | None = None  # the name of the tag that the next part is the value of
    for part in loc:
        if part == "[key]":
            path.pop()
            break
        if tag is not None:
            kind = next(
                (m for m in get_args(kind) if part in get_args(m.model_fields[tag].annotation)),
                None,
            )
            tag = None
            continue
        path.append(part)
        kind, tag = _member(kind, part)
    return tuple(path)


def _member(kind: Any, part: str | int) -> tuple[Any, str | None]:
    """The type of `part` of a value of type `kind`, and the name of its tag if it is a tagged
    union; None for what needs no further look (text, numbers)."""
    if isclass(kind) and issubclass(kind, BaseModel) and part in kind.model_fields:
        field = kind.model_fields[part]
        tag = field.discriminator  # a Discriminator object (none here) names no field
        return field.annotation, tag if isinstance(tag, str) else None
    if get_origin(kind) in (list, dict):
        return get_args(kind)[-1], None
    return None, None


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "body"


def _undecodable(exc: json.JSONDecodeError, content_type: str) -> str:
    if not exc.doc.strip():
        return "it is empty; send a JSON object"
    why = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    # The Content-Type is not checked, but a form or a file sent by mistake is the likely cause.
    if content_type != "application/json" and not content_type.endswith("+json"):
        why += f" (it was sent as {content_type}; send application/json)"
    return why


def _bad_json(why: str) -> ApiError:
    return ApiError(400, "bad_json", f"The request body is not valid JSON: {why}.")
