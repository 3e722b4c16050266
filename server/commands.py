"""What the `vteller` subcommands share: their help when no subcommand is given, running an
async body against the settings' database with expected failures as one line on stderr, and the
rule that a command writing into the data directory runs as that directory's owner."""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
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


def foreign_data_dir(data_dir: Path, command: str) -> str | None:
    """Why `command` (e.g. "vteller audit checkpoint") must not run as this user, or None.

    A command that writes into the data directory (the SQLite database, audit-signed.json, a
    generated secret, a model cache) marks its parser with `set_defaults(writes_data_dir=
    parser.prog)`, and `vteller` checks this first. What it writes there must stay the server's:
    run as root, it left files only root can read, and the server then refused every checkpoint.
    Giving files away afterwards would need to know each one (SQLite makes its own), so the
    command is refused instead, with the line that runs it as the owner.
    """
    try:
        owner = data_dir.stat().st_uid
    except FileNotFoundError:
        return None  # whoever runs the first command creates it, and owns what is in it
    if owner == os.geteuid():
        return None
    name, current = _user_name(owner), _user_name(os.geteuid())
    return (
        f"{data_dir} belongs to {name}, and this command would leave files there that belong to "
        f"{current}, which a server running as {name} cannot use: run it as {name}, e.g. "
        f"`sudo -E -u {name} {command} ...` (-E keeps the VTELLER_* settings)"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"  # no name: sudo -u takes the number in this form


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
