"""What the `vteller` subcommands share: their help when no subcommand is given, running an
async body against the settings' database with expected failures as one line on stderr, and the
rule that a command writing into the data directory runs as that directory's owner."""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.db.engine import DbSession, create_engine, migrate, session_factory

if TYPE_CHECKING:
    from server.settings import Settings

Run = Callable[[argparse.Namespace, "Settings"], int]
AUDIT_ACTOR_LENGTH = 64  # audit_log.actor


def help_for(parser: argparse.ArgumentParser) -> Run:
    def show(_: argparse.Namespace, __: Settings) -> int:
        parser.print_help()
        return 2

    return show


def writes_data_dir(
    parser: argparse.ArgumentParser, when: Callable[[Settings], bool] | None = None
) -> None:
    """Mark `parser`'s command as writing into the data directory: whenever it runs, or only
    when `when(settings)` holds. `vteller` then runs it only as the directory's owner
    (data_dir_refusal). compliance/cli.py, which does not import the server, sets the
    unconditional marker (`writes_data_dir=parser.prog`) itself."""
    parser.set_defaults(writes_data_dir=parser.prog, writes_data_dir_when=when)


def sqlite_in_data_dir(settings: Settings) -> bool:
    """Whether the settings' database is an SQLite file under the data directory: the file and
    its WAL journals land there even for a command that only reads. Any other database (the
    usual PostgreSQL) keeps nothing there, so an auditor's account may verify it."""
    try:
        url = make_url(settings.effective_database_url)
    except ArgumentError:
        return False  # opens nothing: the command itself says that the URL is not one
    database = url.database
    if not url.drivername.startswith("sqlite") or not database or database == ":memory:":
        return False
    return Path(database).resolve().is_relative_to(settings.data_dir.resolve())


def data_dir_refusal(args: argparse.Namespace, settings: Settings) -> str | None:
    """Why the command `args` chose must not run as this user, or None (writes_data_dir)."""
    command: str | None = getattr(args, "writes_data_dir", None)
    when: Callable[[Settings], bool] | None = getattr(args, "writes_data_dir_when", None)
    if command is None or (when is not None and not when(settings)):
        return None
    return foreign_data_dir(settings.data_dir, command)


def foreign_data_dir(data_dir: Path, command: str) -> str | None:
    """Why `command` (e.g. "vteller audit checkpoint") must not write into `data_dir` as this
    user, or None.

    What a command writes there must stay the server's: run as root, `vteller audit checkpoint`
    left audit-signed.json only root could read, and the server then refused every checkpoint.
    Giving files away afterwards would need to know each one (SQLite makes its own), so the
    command is refused instead, with the line that runs it as the owner.
    """
    try:
        owner = data_dir.stat().st_uid
    except FileNotFoundError:
        return None  # whoever runs the first command creates it, and owns what is in it
    except OSError as exc:
        # Typically a parent this account may not enter: the server's user can, so run as it.
        return (
            f"cannot tell who owns {data_dir} ({exc.strerror}): run this command as the user "
            f"the server runs as, e.g. `sudo -E -u USER {command} ...`, or set VTELLER_DATA_DIR "
            "to a data directory this account may use"
        )
    if owner == os.geteuid():
        return None
    name, current = _user_name(owner), _user_name(os.geteuid())
    return (
        f"{data_dir} belongs to {name}, and this command would leave files there that belong to "
        f"{current}, which a server running as {name} cannot use: run it as {name}, e.g. "
        f"`sudo -E -u {shlex.quote(name)} {command} ...` (-E keeps the VTELLER_* settings)"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"  # no name: sudo -u takes the number in this form (quoted: # is a comment)


def operator() -> str:
    """Who runs this command, as the audit log's actor: `os:USER@HOST`, USER being the account
    that ran sudo, if the command was run through it, followed by ` as ACCOUNT` it ran as (the
    data directory's owner, usually, whose name alone would not say who it was). Attribution
    for honest operators: whoever can reach the database could write any name."""
    account = _user_name(os.geteuid())
    sudo = os.environ.get("SUDO_USER")
    who, suffix = (sudo, f" as {account}") if sudo and sudo != account else (account, "")
    room = AUDIT_ACTOR_LENGTH - len(f"os:{who}@{suffix}")
    return f"os:{who}@{socket.gethostname()[: max(room, 1)]}{suffix}"[:AUDIT_ACTOR_LENGTH]


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
            await migrate(engine, settings.data_dir / "keys")
        yield session_factory(engine)
    finally:
        await engine.dispose()
