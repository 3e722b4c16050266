"""`vteller audit verify | checkpoint | tail`: check and read the audit log from the command line.

They work on the database named by the settings (VTELLER_DATABASE_URL, or SQLite in the data
directory), so an auditor can run `verify` on a copy of the database and the public keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from recorder.seal.signing import PublicKeyError, Signer, SigningKeyError, load_public_keys
from server.audit.chain import Entry, format_time
from server.audit.log import AuditLog, CheckpointRefused, SignedHereUnreadable
from server.commands import (
    Run,
    database,
    help_for,
    operator,
    run_reporting,
    sqlite_in_data_dir,
    writes_data_dir,
)
from server.settings import Settings

Command = Callable[[argparse.Namespace, AuditLog, Settings], Awaitable[int]]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="check and read the hash-chained audit log",
        description="The audit log records every security-relevant action in a hash chain with "
        "signed checkpoints (docs/audit-log.md).",
    )
    audit_commands = audit.add_subparsers(title="audit commands")

    verify = audit_commands.add_parser(
        "verify",
        help="recompute the whole chain and check every checkpoint signature",
        description="Walk the log from its first entry: recompute every hash, check that the "
        "sequence has no gaps and each entry names its predecessor's hash, check every "
        "checkpoint's signature and entry, that no interval of 100 entries went without a "
        "checkpoint, and that the log still holds the last checkpoint this machine signed. "
        "Reports the first broken link; exits 0 only when everything holds, 1 when something "
        "does not, 2 when the log cannot be read.",
    )
    verify.add_argument(
        "--keys", type=Path, help="public key file or directory (default: {data_dir}/keys/public)"
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(run=_runner(_verify))
    # Only reads, but SQLite creates its journal files (or an empty database) next to the log.
    writes_data_dir(verify, when=sqlite_in_data_dir)

    checkpoint = audit_commands.add_parser(
        "checkpoint",
        help="sign the current head of the log now",
        description="Check the newest checkpoint and the entries since, and sign the newest entry "
        "with this installation's signing key ({data_dir}/keys/signing-key.pem). Refused (exit 1) "
        "when checkpoints are missing or the log does not verify; `vteller audit verify` names "
        "what is wrong.",
    )
    checkpoint.add_argument(
        "--accept-unsigned",
        metavar="REASON",
        help="sign even though checkpoints are missing (or this machine's record of its last one "
        "no longer matches), once you know why, e.g. after restoring the database from a backup; "
        "REASON goes into the log as an audit.checkpoint_forced entry, and `verify` keeps naming "
        "the unsigned entries. Never signs a log whose entries do not verify.",
    )
    checkpoint.set_defaults(run=_runner(_checkpoint))
    writes_data_dir(checkpoint)  # audit-signed.json, whatever the database

    tail = audit_commands.add_parser("tail", help="print the newest entries")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=_runner(_tail))
    writes_data_dir(tail, when=sqlite_in_data_dir)

    audit.set_defaults(run=help_for(audit))


def _runner(command: Command) -> Run:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        return run_reporting(
            _with_log(command, args, settings),
            (SQLAlchemyError, SigningKeyError, PublicKeyError, SignedHereUnreadable, OSError),
        )

    return run


async def _with_log(command: Command, args: argparse.Namespace, settings: Settings) -> int:
    # No migration here: verifying must not change the database it is given.
    async with database(settings, migrated=False) as db:
        signer = None
        if command is _checkpoint:
            signer = Signer.open(settings.data_dir / "keys" / "signing-key.pem")
        return await command(args, AuditLog(db, signer, data_dir=settings.data_dir), settings)


async def verify_command(
    audit: AuditLog, keys: Path, *, as_json: bool = False, out: Any = None
) -> int:
    """`vteller audit verify` without the process around it (the tests call this)."""
    out = out or sys.stdout
    report = await audit.verify(_public_keys(keys))
    if as_json:
        print(json.dumps(report.as_json(), indent=2), file=out)
    else:
        print(report.render(), file=out)
    return 0 if report.ok else 1


def _public_keys(keys: Path) -> dict[str, bytes]:
    # No key directory (no worker ever ran here): any checkpoint is then by an unknown key.
    return load_public_keys(keys) if keys.exists() else {}


async def _verify(args: argparse.Namespace, audit: AuditLog, settings: Settings) -> int:
    keys = args.keys or settings.data_dir / "keys" / "public"
    return await verify_command(audit, keys, as_json=args.json)


async def _checkpoint(args: argparse.Namespace, audit: AuditLog, settings: Settings) -> int:
    if args.accept_unsigned is not None and not args.accept_unsigned.strip():
        print("error: --accept-unsigned needs the reason, for the log", file=sys.stderr)
        return 2
    try:
        checkpoint = await audit.checkpoint(accept_unsigned=args.accept_unsigned, actor=operator())
    except CheckpointRefused as exc:
        print(f"refused: {exc}\nrun `vteller audit verify` for the whole picture", file=sys.stderr)
        return 1
    if checkpoint is None:
        print("the audit log is empty; nothing to sign")
        return 0
    print(
        f"checkpoint at {checkpoint.seq}: {checkpoint.entry_hash} signed by {checkpoint.key_id} "
        f"at {format_time(checkpoint.at)}"
    )
    return 0


async def _tail(args: argparse.Namespace, audit: AuditLog, settings: Settings) -> int:
    for entry in await audit.tail(max(args.n, 0)):
        print(json.dumps(entry.as_json(), ensure_ascii=False) if args.json else _line(entry))
    return 0


def _line(entry: Entry) -> str:
    detail = json.dumps(entry.detail, ensure_ascii=False, sort_keys=True)
    return (
        f"{entry.seq:>8} {format_time(entry.at)} {entry.action:<20} "
        f"{entry.actor} ({entry.actor_role}) -> {entry.target or '-'} {detail}"
        + (f" from {entry.address}" if entry.address else "")
    )
