"""Structured logging: one JSON object per line (or readable lines for a developer's console)."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from server.api.forwarded import CLIENT_ADDRESS
from server.api.middleware import logged_path


def configure_logging(level: str, fmt: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s", force=True)
    # aiortc and aioice log every packet, alembic every plugin: quiet unless asked for.
    for noisy in ("aiortc", "aioice", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # One filter object: added again when logging is configured again, it is not added twice.
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUESTS)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )


class _MalformedRequests(logging.Filter):
    """Drops aiohttp's report of a request it could not parse.

    The report quotes the request's first line, path and all, and an invitation link's token is
    in its path; the access log still has the request, with its status.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


_MALFORMED_REQUESTS = _MalformedRequests()


class _StderrLogger:
    """Writes each line to whatever `sys.stderr` is at that moment.

    structlog's PrintLogger keeps the stream it was created with; when that is replaced and
    closed (a test harness capturing output, a daemon redirecting it), logging would fail.
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _StderrLoggerFactory:
    def __call__(self, *args: object) -> _StderrLogger:
        return _StderrLogger()


class AccessLogger(AbstractAccessLogger):
    """One structured line per HTTP request (aiohttp's default is an Apache-style text line)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        structlog.get_logger("vteller.access").info(
            "http_request",
            method=request.method,
            # Neither the query string nor a route's variables: either may carry a token (an
            # invitation link's is in its path).
            path=logged_path(request),
            status=response.status,
            duration_ms=round(time * 1000, 1),
            # Behind a trusted proxy, the client it forwarded for (server/api/forwarded.py).
            remote=request.get(CLIENT_ADDRESS, request.remote),
        )
