"""Structured logging: one JSON object per line (or readable lines for a developer's console)."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server.api.forwarded import CLIENT_ADDRESS


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
            # The path only: query strings may carry tokens (invitation links never do, but
            # nothing guarantees a future route will not).
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 1),
            # Behind a trusted proxy, the client it forwarded for (server/api/forwarded.py).
            remote=request.get(CLIENT_ADDRESS, request.remote),
        )
