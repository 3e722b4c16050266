"""Errors someone is meant to read: API errors (a stable code plus a message that says what to
do), and the refusal of a worker to start as its machine is set up."""

from __future__ import annotations


class StartRefused(RuntimeError):
    """This worker must not start as configured (its message names the fix); `vteller serve`
    prints it and exits with EX_CONFIG, and the supervisor stops rather than restart it."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


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
