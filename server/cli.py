"""The `vteller` operator command."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import math
import os
import shlex
import socket
import sys
import unicodedata
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from compliance.cli import add_commands as add_compliance_commands
from recorder.tools import add_commands as add_archive_commands
from recorder.tools import run as run_archive_tool
from server import __version__
from server.audit.cli import add_commands as add_audit_commands
from server.auditor.cli import add_commands as add_purge_commands
from server.auth.accounts import MAX_REASON_LENGTH, MIN_REASON_LENGTH, Account, AccountAdmin
from server.auth.passwords import MIN_PASSWORD_LENGTH, WeakPasswordError
from server.auth.principal import STAFF_ROLES, Role
from server.commands import (
    data_dir_refusal,
    foreign_data_dir,
    help_for,
    sqlite_in_data_dir,
    writes_data_dir,
)
from server.errors import ApiError
from server.identity.cli import add_commands as add_kyc_commands
from server.logs import AccessLogger, configure_logging
from server.settings import Settings, load_settings, settings_problems
from server.workflow.webhooks.cli import add_commands as add_webhook_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run") and not hasattr(args, "tool"):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(settings_problems(exc), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if refusal := data_dir_refusal(args, settings):
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if hasattr(args, "tool"):
        return run_archive_tool(args, settings.data_dir, settings.store)
    result: int = args.run(args, settings)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vteller",
        description="Video remote banking and dual recording. Settings come from VTELLER_* "
        "environment variables and the TOML file named by VTELLER_CONFIG (see README).",
    )
    parser.add_argument("--version", action="version", version=f"vteller {__version__}")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the web service")
    serve.add_argument("--host", help="address to listen on (default: settings.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: settings.port)")
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, one per core by default; worker i listens on port + i",
    )
    serve.set_defaults(run=_serve)

    admin = commands.add_parser("admin", help="manage staff accounts")
    admin_commands = admin.add_subparsers(title="admin commands")
    create = admin_commands.add_parser(
        "create-user",
        help="create a staff account",
        description=f"Create a staff account. The password (at least {MIN_PASSWORD_LENGTH} "
        "characters) is asked for interactively, or read from standard input with "
        "--password-stdin.",
    )
    create.add_argument(
        "--username", required=True, help="login name: 2-64 letters, digits, '_', '.' or '-'"
    )
    create.add_argument(
        "--role",
        required=True,
        choices=sorted(r.value for r in STAFF_ROLES),
        help="what the account may do (docs/protocol.md)",
    )
    create.add_argument("--display-name", default="", help="name shown to customers")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create.set_defaults(run=_create_user)
    writes_data_dir(create, when=sqlite_in_data_dir)
    _add_account_commands(admin_commands)
    admin.set_defaults(run=help_for(admin))

    add_archive_commands(commands)
    add_purge_commands(commands)
    add_kyc_commands(commands)
    add_compliance_commands(commands)
    add_audit_commands(commands)
    add_webhook_commands(commands)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(title="db commands")
    upgrade = db_commands.add_parser(
        "upgrade",
        help="apply schema migrations",
        description="Bring the database (settings.database_url; SQLite under the data directory "
        "by default) to the schema this version needs. `vteller serve` does it at start too.",
    )
    upgrade.set_defaults(run=_db_upgrade)
    writes_data_dir(upgrade, when=sqlite_in_data_dir)
    db.set_defaults(run=help_for(db))
    return parser


def _add_account_commands(admin_commands: argparse._SubParsersAction[Any]) -> None:
    username = {"required": True, "help": "the account's login name (case-sensitive)"}
    listed = admin_commands.add_parser(
        "list-users",
        help="list the staff accounts",
        description="List every staff account: login name, role, display name, whether it is "
        "disabled or locked out after failed logins, and its last login.",
    )
    listed.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listed.set_defaults(run=_list_users)

    disable = admin_commands.add_parser(
        "disable-user",
        help="disable an account (a leaver) and end its logins",
        description="Disable a staff account: it can no longer log in, every request with its "
        "cookies is refused at once, and its open call connections are closed within "
        "ws_login_check_seconds. A call it is in goes on as after a dropped connection, "
        'recording included (docs/deployment.md, "Staff accounts").',
    )
    disable.add_argument("--username", **username)
    disable.add_argument(
        "--reason",
        required=True,
        help=f"why, in the audit log ({MIN_REASON_LENGTH}-{MAX_REASON_LENGTH} characters), "
        'e.g. "left the bank"',
    )
    disable.set_defaults(run=_disable_user)

    enable = admin_commands.add_parser(
        "enable-user",
        help="let a disabled account log in again",
        description="Enable a disabled staff account. Its logins ended by the disable stay "
        "ended: its owner logs in again.",
    )
    enable.add_argument("--username", **username)
    enable.set_defaults(run=_enable_user)

    unlock = admin_commands.add_parser(
        "unlock-user",
        help="clear an account's lock-out after failed logins",
        description="Clear the failed logins counted against a staff account and its browsers "
        "(login_max_failures_per_user within login_window_seconds), so that it can log in "
        "at once. Failures counted against an address (login_max_failures_per_address) stay.",
    )
    unlock.add_argument("--username", **username)
    unlock.set_defaults(run=_unlock_user)

    reset = admin_commands.add_parser(
        "reset-password",
        help="set a new password and end the account's logins",
        description=f"Set a new password (at least {MIN_PASSWORD_LENGTH} characters), asked "
        "for interactively or read from standard input with --password-stdin, and end every "
        "login of the account: the old password and cookies no longer work.",
    )
    reset.add_argument("--username", **username)
    reset.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    reset.set_defaults(run=_reset_password)
    for command in (listed, disable, enable, unlock, reset):
        writes_data_dir(command, when=sqlite_in_data_dir)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from server.app import create_app
    from server.errors import StartRefused
    from server.workers.supervisor import EXIT_CONFIG

    host = args.host or settings.host
    port = args.port or settings.port
    settings = settings.model_copy(update={"host": host, "port": port})
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    _warn_if_foreign(settings)
    if args.workers > 1:
        from server.workers.supervisor import run_workers

        # Migrate once here: concurrent migrations from every worker would race.
        if (code := _db_upgrade(args, settings)) != 0:
            return code
        print(
            f"vteller {__version__}: {args.workers} workers on http://{host}:{port}"
            f"..{port + args.workers - 1}",
            file=sys.stderr,
        )
        return run_workers(settings, args.workers)
    # Listen before the app starts: during startup the worker registers itself and may be handed
    # sessions (its own, after a restart), so browsers sent here must wait in the backlog rather
    # than be refused while the app finishes starting.
    try:
        listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
    except OSError as exc:
        print(
            f"error: cannot listen on {host}:{port} ({exc.strerror}); "
            "stop whatever uses the port or choose another with --port",
            file=sys.stderr,
        )
        return 1
    print(f"vteller {__version__} listening on http://{host}:{port}", file=sys.stderr)
    _one_opencv_thread()
    try:
        web.run_app(create_app(settings), sock=listener, print=None, access_log_class=AccessLogger)
    except StartRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _warn_if_foreign(settings: Settings) -> None:
    # Not refused like the commands (data_dir_refusal): a server run as another user than the
    # directory's owner (root in a container, say) can use what it writes itself. Only a later
    # switch to the owner finds keys and tokens it cannot read, so say so while it can be fixed.
    if reason := foreign_data_dir(settings.data_dir, "vteller serve"):
        print(f"warning: {reason}", file=sys.stderr)


def _one_opencv_thread() -> None:
    # There is one worker per core. OpenCV's own pool (a thread per CPU by default) in every
    # worker would oversubscribe the cores N times over, and one thread costs less CPU per face
    # detection anyway (YuNet at 512 px: docs/benchmarks.md "Face detection threads").
    import cv2

    cv2.setNumThreads(1)


def _read_password(args: argparse.Namespace) -> str | None:
    """The new password from standard input or asked twice; None (said why) when they differ."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Repeat password: "):
        print("error: the passwords differ; run the command again", file=sys.stderr)
        return None
    return password


def _print_invalid(exc: ValidationError) -> int:
    for item in exc.errors():
        option = "--" + "-".join(str(part) for part in item["loc"]).replace("_", "-")
        print(f"error: {option}: {item['msg']}", file=sys.stderr)
    return 1


def _create_user(args: argparse.Namespace, settings: Settings) -> int:
    if (password := _read_password(args)) is None:
        return 1
    from server.api.bodies import NewUserBody

    try:
        # The same rules as the admin page's form: an account made here can log in there.
        body = NewUserBody(
            username=args.username,
            password=password,
            display_name=args.display_name,
            role=Role(args.role),
        )
    except ValidationError as exc:
        return _print_invalid(exc)
    try:
        asyncio.run(_with_auth(settings, body.username, password, body.display_name, body.role))
    except (WeakPasswordError, ApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        return _database_refused("used", exc)
    print(f"created {body.role.value} {body.username!r}")
    return 0


def _database_refused(what: str, exc: Exception) -> int:
    print(
        f"error: the database cannot be {what} ({exc}); check settings.database_url "
        "(VTELLER_DATABASE_URL), that the database is running and that this account may use it",
        file=sys.stderr,
    )
    return 2


async def _with_auth(
    settings: Settings, username: str, password: str, display_name: str, role: Role
) -> None:
    from server.audit import SYSTEM, AuditLog
    from server.auth.ratelimit import LoginThrottle
    from server.auth.service import AuthService
    from server.commands import database, operator

    async with database(settings, migrated=True) as db:
        auth = AuthService(db, LoginThrottle(db, 1, 1, 1), 1)
        user = await auth.new_user(username, password, display_name, role)
        await AuditLog(db).append(
            "admin.user_created",
            actor=operator(),
            actor_role=SYSTEM,
            target=username,
            detail={"user_id": user.id, "role": role.value, "via": "cli"},
        )
        await auth.add_user(user)


def _accounts(settings: Settings, work: Callable[[AccountAdmin], Coroutine[Any, Any, int]]) -> int:
    """Run `work` on the settings' database as this operator; an account error exits 1."""
    from server.audit import SYSTEM, AuditLog
    from server.auth.ratelimit import LoginThrottle
    from server.commands import database, operator

    async def run() -> int:
        async with database(settings, migrated=True) as db:
            throttle = LoginThrottle(
                db,
                settings.login_max_failures_per_user,
                settings.login_max_failures_per_address,
                settings.login_window_seconds,
            )
            admin = AccountAdmin(db, throttle, AuditLog(db), actor=operator(), actor_role=SYSTEM)
            return await work(admin)

    try:
        return asyncio.run(run())
    except (WeakPasswordError, ApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        return _database_refused("used", exc)


def _list_users(args: argparse.Namespace, settings: Settings) -> int:
    async def work(admin: AccountAdmin) -> int:
        accounts = await admin.accounts()
        if args.json:
            print(json.dumps({"users": [a.view() for a in accounts]}, ensure_ascii=False))
        else:
            _print_accounts(accounts)
        return 0

    return _accounts(settings, work)


def _print_accounts(accounts: Sequence[Account]) -> None:
    rows = [("USERNAME", "ROLE", "DISPLAY NAME", "STATE", "LAST LOGIN")]
    for account in accounts:
        user = account.user
        states = [] if user.active else [f"disabled since {_day(user.disabled_at)}"]
        if account.locked_seconds > 0:
            states.append(f"locked out for {math.ceil(account.locked_seconds)} s")
        last = account.last_login
        rows.append(
            (
                user.username,
                user.role,
                user.display_name,
                ", ".join(states) or "active",
                last.strftime("%Y-%m-%d %H:%M UTC") if last else "never",
            )
        )
    # Every column but the last padded to its widest cell, as a terminal shows it: a Chinese
    # display name takes two columns per character.
    widths = [max(_columns(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        padded = [
            cell + " " * (width - _columns(cell))
            for cell, width in zip(row[:-1], widths, strict=True)
        ]
        print(*padded, row[-1], sep="  ")


def _columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _day(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d") if at is not None else "?"


def _disable_user(args: argparse.Namespace, settings: Settings) -> int:
    async def work(admin: AccountAdmin) -> int:
        done = await admin.disable(args.username, args.reason)
        released = done.released
        print(f"disabled {args.username!r}; {done.logins_ended} login(s) ended")
        if released.cancelled or released.unassigned:
            print(
                f"{len(released.cancelled)} session(s) not yet started cancelled (their links "
                f"now say so), {len(released.requeued)} of them queue customers put back in "
                f"their place in the queue; {len(released.unassigned)} waiting queue "
                "customer(s) routed to them moved to the general queue"
            )
        if done.open_sessions:
            print(
                f"note: {args.username!r} is in sessions in progress "
                f"{', '.join(done.open_sessions)}: their call connections close within "
                f"{settings.ws_login_check_seconds:g} s, and each call goes on as after a "
                "dropped connection (the recording continues and is sealed when the call "
                'ends; the account cannot rejoin). docs/deployment.md, "Staff accounts"',
                file=sys.stderr,
            )
        if not done.logged:
            print(
                "warning: the audit log could not be written: the account is disabled (and its "
                "customers given back) all the same, and the entries are in the errors above; "
                "tell whoever keeps the audit log",
                file=sys.stderr,
            )
        return 0

    return _accounts(settings, work)


def _enable_user(args: argparse.Namespace, settings: Settings) -> int:
    async def work(admin: AccountAdmin) -> int:
        await admin.enable(args.username)
        print(f"enabled {args.username!r}: it may log in again")
        return 0

    return _accounts(settings, work)


def _unlock_user(args: argparse.Namespace, settings: Settings) -> int:
    async def work(admin: AccountAdmin) -> int:
        cleared = await admin.unlock(args.username)
        print(f"unlocked {args.username!r}; {cleared} failed login(s) cleared")
        return 0

    return _accounts(settings, work)


def _reset_password(args: argparse.Namespace, settings: Settings) -> int:
    if (password := _read_password(args)) is None:
        return 1
    from server.api.bodies import NewPasswordBody

    try:
        NewPasswordBody(password=password)  # create-user's rules
    except ValidationError as exc:
        return _print_invalid(exc)

    async def work(admin: AccountAdmin) -> int:
        ended = await admin.reset_password(args.username, password)
        print(f"new password set for {args.username!r}; {ended} login(s) ended")
        if (locked := await admin.lockout(args.username)) > 0:
            print(
                f"note: {args.username!r} is locked out after failed logins for another "
                f"{math.ceil(locked)} s; `vteller admin unlock-user --username "
                f"{shlex.quote(args.username)}` lifts it",
                file=sys.stderr,
            )
        return 0

    return _accounts(settings, work)


def _db_upgrade(_: argparse.Namespace, settings: Settings) -> int:
    from server.db.engine import create_engine, migrate
    from server.errors import StartRefused

    async def run() -> None:
        engine = create_engine(settings.effective_database_url)
        try:
            await migrate(engine, settings.data_dir / "keys")
        finally:
            await engine.dispose()

    try:
        asyncio.run(run())
    except StartRefused as exc:  # a migration needing the deployment's keys (0016)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        return _database_refused("migrated", exc)
    print("database schema is up to date", file=sys.stderr)
    return 0
