"""What the `vteller` subcommands share: their help when no subcommand is given, and running an
async body against the settings' database, with expected failures as one line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession, create_engine, migrate, session_factory

if TYPE_CHECKING:
    from server.settings import Settings

Run = Callable[[argparse.Namespace, "Settings"], int]


def help_for(parser: argparse.ArgumentParser) -> Run:
    def show(_: argparse.Namespace, __: Settings) -> int:
        parser.print_help()
        return 2

    return show


def run_reporting(body: Coroutine[Any, Any, int], errors: tuple[type[Exception], ...]) -> int:
    """Run `body`; an error of `errors` (an unreadable database, a missing key) exits 2."""
    try:
        return asyncio.run(body)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


@asynccontextmanager
async def database(
    settings: Settings, *, migrated: bool
) -> AsyncIterator[async_sessionmaker[DbSession]]:
    """The settings' database for one command; `migrated=False` leaves its schema as it is."""
    engine = create_engine(settings.effective_database_url)
    try:
        if migrated:
            await migrate(engine)
        yield session_factory(engine)
    finally:
        await engine.dispose()
