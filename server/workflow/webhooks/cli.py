"""`vteller webhooks secret | list | retry`: the operator's side of the core bank's webhook.

They work on the database and data directory of the settings, next to a running service: a retry
marks the delivery due, and the running workers send it at their next poll (webhook.poll_seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from server.audit import SYSTEM, AuditLog
from server.commands import (
    Run,
    database,
    help_for,
    operator,
    run_reporting,
    sqlite_in_data_dir,
    writes_data_dir,
)
from server.errors import ApiError
from server.settings import Settings
from server.workflow.webhooks.delivery import SECRET_FILE, secret_file, webhook_secret
from server.workflow.webhooks.records import STATES, DeliveryRecords

Command = Callable[[argparse.Namespace, DeliveryRecords], Awaitable[int]]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = commands.add_parser(
        "webhooks",
        help="deliveries of approved transactions to the core bank",
        description="Approved transactions are POSTed, signed, to the core bank's webhook "
        "(webhook.url) and retried until it accepts them (docs/webhooks.md).",
    )
    webhook_commands = webhooks.add_subparsers(title="webhooks commands")

    secret = webhook_commands.add_parser(
        "secret",
        help="print the HMAC secret the core bank verifies signatures with",
        description=f"Print the shared secret of the Vteller-Signature header: webhook.secret "
        f"if set, otherwise {{data_dir}}/keys/{SECRET_FILE}, generated now if there is none "
        "(0600). Give it to the core bank's team over a channel fit for secrets.",
    )
    secret.set_defaults(run=_secret)
    writes_data_dir(secret, when=_generates_secret)

    listing = webhook_commands.add_parser(
        "list",
        help="list deliveries, newest first",
        description="List deliveries with their state (pending, delivered, failed; pending is "
        "shown as disabled while webhook.url is empty), attempts and last error.",
    )
    listing.add_argument("--state", choices=[*STATES, "all"], default="all")
    listing.add_argument("-n", type=int, default=50, help="how many (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=_runner(_list))
    # Also `list`: it brings the database's schema up to date first.
    writes_data_dir(listing, when=sqlite_in_data_dir)

    retry = webhook_commands.add_parser(
        "retry",
        help="send a failed delivery again",
        description="Mark a failed delivery due now, with a fresh allowance of "
        "webhook.max_attempts attempts; the running service sends it. Logged in the audit log "
        "as webhook.retried by `system`.",
    )
    retry.add_argument("key", help="the transaction id, or the delivery id (wh_...)")
    retry.set_defaults(run=_runner(_retry))
    writes_data_dir(retry, when=sqlite_in_data_dir)

    webhooks.set_defaults(run=help_for(webhooks))


def _generates_secret(settings: Settings) -> bool:
    # A configured secret, or one generated before, is only read. os.path.exists: a keys
    # directory this account cannot look into counts as no secret yet, refused with its owner.
    return not settings.webhook.secret.get_secret_value() and not os.path.exists(
        secret_file(settings.data_dir)
    )


def _secret(_: argparse.Namespace, settings: Settings) -> int:
    try:
        print(webhook_secret(settings.webhook, settings.data_dir))
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _runner(command: Command) -> Run:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        return run_reporting(_with_records(command, args, settings), (SQLAlchemyError, OSError))

    return run


async def _with_records(command: Command, args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings, migrated=True) as db:
        return await command(args, DeliveryRecords(settings.webhook, db, AuditLog(db)))


async def _list(args: argparse.Namespace, records: DeliveryRecords) -> int:
    state = None if args.state == "all" else args.state
    deliveries = await records.deliveries(state, max(args.n, 1))
    if not records.enabled:
        print("webhook.url is not set: delivery is disabled", file=sys.stderr)
    for delivery in deliveries:
        print(json.dumps(delivery, ensure_ascii=False) if args.json else _line(delivery))
    return 0


async def _retry(args: argparse.Namespace, records: DeliveryRecords) -> int:
    try:
        delivery = await records.retry(args.key, actor=operator(), actor_role=SYSTEM, via="cli")
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"{delivery['delivery_id']} for {delivery['transaction_id']} is due again")
    return 0


def _line(delivery: dict[str, Any]) -> str:
    when = delivery["delivered_at"] or delivery["next_attempt_at"] or delivery["updated_at"]
    error = f"  {delivery['last_error']}" if delivery["last_error"] else ""
    return (
        f"{delivery['delivery_id']}  {delivery['transaction_id']:<26} {delivery['state']:<9} "
        f"attempts={delivery['attempts']:<3} {when}{error}"
    )
