"""Errors someone is meant to read: API errors (a stable code plus a message that says what to
do), and the refusal of a worker to start as its machine is set up."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class StartRefused(RuntimeError):
    """This worker must not start as configured (its message names the fix); `vteller serve`
    prints it and exits with EX_CONFIG, and the supervisor stops rather than restart it."""


class ApiError(Exception):
    """`details`: further members of the error object, beside `code` and `message` (those of
    `invalid_request`: see invalid())."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        details: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = dict(details or {})


class Rule(StrEnum):
    """What is wrong with the field of a `400 invalid_request` (docs/protocol.md): a closed set,
    so that pages can say it in the user's language; the English message says it in detail."""

    REQUIRED = "required"  # missing, or empty where something must be written
    TYPE = "type"  # the wrong JSON type: "5" for 5, "true" for true, an object for text
    TOO_SHORT = "too_short"  # text or a list shorter than the least allowed
    TOO_LONG = "too_long"  # text or a list longer than the most allowed
    RANGE = "range"  # a number outside its bounds
    FORMAT = "format"  # text not of the required form: a pattern, a date, the NUL character
    CHOICE = "choice"  # not one of the values allowed
    UNKNOWN_FIELD = "unknown_field"  # a member the request has no such field for
    INVALID = "invalid"  # anything else (a rule between fields): only the message says what


def invalid(field: str, rule: Rule, why: str, *, named: str | None = None) -> ApiError:
    """The one way to refuse a request's field: `field` is its name in the JSON body or the
    query (dotted when nested: `transaction.amount.minor`), or a path variable's; `named`, how
    the message names it if not so (pydantic's location of the error)."""
    return ApiError(
        400,
        "invalid_request",
        f"{named or field}: {why}",
        details={"field": field, "rule": rule.value},
    )


def not_authenticated() -> ApiError:
    return ApiError(
        401,
        "not_authenticated",
        "Please log in (or open your invitation link) first. A customer's access ends with the "
        "video session.",
    )


def forbidden(what: str) -> ApiError:
    return ApiError(403, "forbidden", f"Your role may not {what}.")


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


class HiddenRefusal(ApiError):
    """A 404 answered on purpose to someone who proved who they are, for something that exists
    but is not theirs: the answer is the one a missing object gets, so that it does not tell
    that the object exists. `refusal` is the truth, for the audit log only (`access.denied`,
    server/api/access.py); it never reaches the response."""

    def __init__(self, code: str, message: str, refusal: str) -> None:
        super().__init__(404, code, message)
        self.refusal = refusal
