"""`vteller archive purge`: delete what has reached the end of its retention, on schedule.

A dry run by default: it lists what is due and why everything else is kept. `--apply` deletes.
Meant to run daily (docs/deployment.md, "Deleting at the end of retention").
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from recorder.store.s3 import (
    ArchiveBucket,
    ArchiveStoreError,
    ArchiveUnavailableError,
    DeleteRefusedError,
)
from server.audit import AuditLog, AuditUnavailable
from server.auditor.exporting import ExportSpool
from server.auditor.purge import (
    ArchiveCandidate,
    Purged,
    PurgeError,
    Purger,
    SessionCandidate,
)
from server.commands import database, help_for, operator, run_reporting, writes_data_dir
from server.settings import Settings

MB = 1024 * 1024


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = commands.add_parser("archive", help="archive maintenance (deleting on schedule)")
    archive_commands = archive.add_subparsers(title="archive commands")
    purge = archive_commands.add_parser(
        "purge",
        help="delete archives and identity records whose retention has ended",
        description="Without --apply, list what is due and why everything else is kept; "
        "nothing is deleted. An archive is due when every version of every one of its objects "
        "has a COMPLIANCE retain-until in the past and no legal hold, as the store reports them "
        "(the store refuses to delete anything earlier by its own clock, and that refusal is "
        "reported). Purging deletes every object version, the customer's identity records and "
        "index entries, and leaves a tombstone (archive id, manifest sha256, retain-until, when, "
        "by whom) and an archive.purged audit entry. Identity records of sessions never "
        "recorded go identity.unrecorded_retention_days after the session ended "
        "(identity.purged), with the customer's other data but for approved transactions, "
        "which go workflow.transaction_retention_days after it, unless an auditor put the "
        "session under legal hold. An "
        "interrupted run is finished by the next. Exits 0 when everything due was deleted (or "
        "listed), 1 when something due could not be, 2 when the database or the store cannot "
        "be used.",
    )
    purge.add_argument("--apply", action="store_true", help="delete what is due")
    purge.set_defaults(run=_purge)
    # The SQLite database, the hold lock files and the export spool are in the data directory.
    writes_data_dir(purge)
    archive.set_defaults(run=help_for(archive))


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    return run_reporting(
        _run(args.apply, settings),
        (SQLAlchemyError, OSError, ArchiveStoreError, AuditUnavailable),
    )


async def _run(apply: bool, settings: Settings) -> int:
    bucket = ArchiveBucket.from_settings(settings.store)
    async with database(settings, migrated=True) as db:
        purger = Purger(
            db,
            bucket,
            AuditLog(db),
            ExportSpool(settings.data_dir / "exports"),
            actor=operator(),
            unrecorded_retention_days=settings.identity.unrecorded_retention_days,
            transaction_retention_days=settings.workflow.transaction_retention_days,
        )
        if apply:
            for archive_id in await purger.unaudited():
                print(f"logged the purge of {archive_id} that an interrupted run left unlogged")
        archives = await purger.archives(_checked)
        sessions = await purger.unrecorded()
        for candidate in archives:
            _print_archive(candidate)
        for session in sessions:
            _print_session(session)
        due = [c for c in archives if c.kept is None]
        due_sessions = [s for s in sessions if s.kept is None]
        print(
            f"{len(due)} archive(s) due ({sum(c.size or 0 for c in due) / MB:.1f} MB), "
            f"{len(archives) - len(due)} kept; {len(due_sessions)} unrecorded session(s) due"
        )
        if not apply:
            if due or due_sessions:
                print("dry run: nothing was deleted; run with --apply to delete what is due")
            return 0
        failed = 0
        for number, candidate in enumerate(due, 1):
            failed += not await _purge_one(purger, candidate, number, len(due))
        for session in due_sessions:
            records = await purger.purge_session(session)
            if isinstance(records, str):  # a legal hold set since it was listed
                print(
                    f"kept the customer data of unrecorded session {session.session_id}: {records}"
                )
                continue
            print(
                f"erased the customer data of unrecorded session {session.session_id}, "
                f"{records} identity record(s){_approved(session)}"
            )
        return 1 if failed else 0


async def _purge_one(purger: Purger, candidate: ArchiveCandidate, number: int, total: int) -> bool:
    """Purge one due archive, saying how it went; False when it could not be."""
    prefix = f"[{number}/{total}] {candidate.archive_id}"

    def progress(_: str, done: int, versions: int) -> None:
        if done == versions or done % 100 == 0:
            print(f"{prefix}: {done}/{versions} object versions deleted", file=sys.stderr)

    try:
        result: Purged | str = await purger.purge_archive(candidate.archive_id, progress)
    except DeleteRefusedError as exc:
        print(
            f"{prefix}: not purged: {exc}. The store's clock says its retention has not "
            "ended (or a legal hold was set): nothing more of it is deleted, and the next run "
            "tries again; if this repeats, compare this machine's clock with the store's",
            file=sys.stderr,
        )
        return False
    except PurgeError as exc:
        print(f"{prefix}: not purged: {exc}", file=sys.stderr)
        return False
    except ArchiveUnavailableError as exc:
        print(
            f"{prefix}: not finished: {exc}. What was deleted stays deleted and the archive's "
            "purge is recorded as under way: run the purge again once the store is back",
            file=sys.stderr,
        )
        raise
    if isinstance(result, str):
        print(f"{prefix}: kept: {result}")
        return True
    print(
        f"{prefix}: purged {result.objects} object version(s), {result.bytes / MB:.1f} MB "
        f"(audit entry {result.audit_seq})"
    )
    return True


def _checked(done: int, total: int) -> None:
    if done == total or done % 100 == 0:
        print(f"checked {done}/{total} archive(s)", file=sys.stderr)


def _day(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S} UTC" if at is not None else "-"


def _print_archive(candidate: ArchiveCandidate) -> None:
    what = (
        f"archive {candidate.archive_id} session {candidate.session_id} "
        f"product {candidate.product} retain-until {_day(candidate.retain_until)}"
        + (f" {candidate.size / MB:.1f} MB" if candidate.size is not None else "")
    )
    if candidate.kept is None:
        resumed = " (an earlier run began deleting it)" if candidate.resuming else ""
        print(f"due   {what}{resumed}")
    else:
        print(f"kept  {what}: {candidate.kept}")


def _approved(session: SessionCandidate) -> str:
    return f", {session.transactions} approved transaction(s)" if session.transactions else ""


def _print_session(session: SessionCandidate) -> None:
    what = (
        f"customer data of unrecorded session {session.session_id} "
        f"({session.records} identity record(s){_approved(session)}), "
        f"ended {_day(session.ended_at)}"
    )
    print(f"due   {what}" if session.kept is None else f"kept  {what}: {session.kept}")
