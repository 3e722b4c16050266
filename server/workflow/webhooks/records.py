"""The webhook outbox in the database: queued deliveries, their claims and their outcomes.

Everything that changes a delivery is a single guarded UPDATE (the state, and for an attempt the
lease, are in its WHERE clause), so any number of worker processes and the operator's command line
can work on the same table: a delivery is claimed by one worker at a time, and an outcome is only
recorded by the worker that still holds the claim.
"""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import String, case, cast, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from recorder.seal.canonical import canonical_json
from server.audit import SYSTEM, AuditLog
from server.db.engine import DbSession
from server.db.models import Transaction, WebhookDelivery, new_id, utcnow
from server.errors import ApiError
from server.workflow.webhooks.config import WebhookConfig
from server.workflow.webhooks.http import Outcome, Verdict
from server.workflow.webhooks.signing import EVENT_TYPE, envelope_body

log = structlog.get_logger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STATES = (PENDING, DELIVERED, FAILED)
# Beyond the request's own timeout: time to record the outcome before another worker may take over.
LEASE_MARGIN_SECONDS = 30.0
# Deliveries that failed together (the core bank was down) should not all come back together.
JITTER = 0.1
MAX_TRANSACTION_ID = 64
MAX_ERROR_CHARS = 1000


def approval_event(row: Transaction) -> dict[str, Any]:
    """The event the core bank gets for an approved transaction: its signed approval record."""
    assert row.approval_record is not None
    return {"record": json.loads(row.approval_record), "signature": row.approval_signature}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _lease_free(now: datetime) -> ColumnElement[bool]:
    return or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now)


def _gave_up(used: ColumnElement[int]) -> ColumnElement[str]:
    """`last_error` of a delivery whose attempts are used up when it is claimed: computed in the
    UPDATE that fails it, from the row as it is then. Neutral about why (killed workers, or a
    lowered `max_attempts`), and keeping what the core bank last answered."""
    prefix = literal("gave up after ", String) + cast(used, String) + literal(" attempts", String)
    before = case(
        (WebhookDelivery.last_error.is_(None), literal("; none of them recorded an outcome")),
        else_=literal("; before: ", String) + WebhookDelivery.last_error,
    )
    return func.substr(prefix + before, 1, MAX_ERROR_CHARS)


class DeliveryRecords:
    def __init__(
        self, config: WebhookConfig, db: async_sessionmaker[DbSession], audit: AuditLog
    ) -> None:
        self._config = config
        self._db = db
        self._audit = audit

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    # -- what callers see ------------------------------------------------------------------------

    async def enqueue(self, transaction_id: str, event: dict[str, Any]) -> None:
        """Persist the delivery of an approved transaction; a second call for it changes nothing.

        `event` must be canonical-JSON-able (no floats): CanonicalJsonError (a ValueError) if not.
        """
        if not 0 < len(transaction_id) <= MAX_TRANSACTION_ID:
            raise ValueError(f"transaction id must be 1 to {MAX_TRANSACTION_ID} characters")
        delivery_id = new_id("wh")
        created_at = utcnow()
        body = envelope_body(delivery_id, transaction_id, created_at, event)
        event_sha256 = hashlib.sha256(canonical_json(event)).hexdigest()
        row = WebhookDelivery(
            id=delivery_id,
            transaction_id=transaction_id,
            event_type=EVENT_TYPE,
            body=body.decode("utf-8"),
            event_sha256=event_sha256,
            state=PENDING,
            attempts=0,
            attempts_at_retry=0,
            next_attempt_at=created_at,
            created_at=created_at,
            updated_at=created_at,
        )
        try:
            # Inserted without reading first: the unique transaction id settles concurrent
            # enqueues, and on SQLite a read before the write could fail on a stale snapshot.
            async with self._db() as db, db.begin():
                db.add(row)
            return
        except IntegrityError:
            pass
        async with self._db() as db:
            existing = await self._by_transaction(db, transaction_id)
        if existing is not None and existing.event_sha256 != event_sha256:
            # The first event is what the core bank gets; a different second one is a caller's
            # bug worth seeing, not a reason to send twice.
            log.warning(
                "webhook_enqueue_differs", transaction_id=transaction_id, delivery_id=existing.id
            )

    async def enqueue_unqueued(self, limit: int) -> int:
        """Queue the approved transactions that have no delivery: the approval and its delivery
        are stored one after the other, and a worker dying (or the database failing) in between
        must not leave the core bank without the transaction. Returns how many."""
        async with self._db() as db:
            rows = list(
                await db.scalars(
                    select(Transaction)
                    .where(
                        Transaction.state == "approved",
                        Transaction.approval_record.is_not(None),
                        ~select(WebhookDelivery.id)
                        .where(WebhookDelivery.transaction_id == Transaction.id)
                        .exists(),
                    )
                    .limit(limit)
                )
            )
        for row in rows:
            log.warning("webhook_enqueued_late", transaction_id=row.id)
            await self.enqueue(row.id, approval_event(row))
        return len(rows)

    async def status(self, transaction_id: str) -> dict[str, Any] | None:
        async with self._db() as db:
            row = await self._by_transaction(db, transaction_id)
        return None if row is None else self._status(row)

    async def deliveries(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; `state` is one of STATES, or None for all."""
        query = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        async with self._db() as db:
            return [self.view(row) for row in await db.scalars(query)]

    async def find(self, key: str) -> WebhookDelivery | None:
        """A delivery by its id or by its transaction's id."""
        async with self._db() as db:
            query = select(WebhookDelivery).where(
                or_(WebhookDelivery.id == key, WebhookDelivery.transaction_id == key)
            )
            return (await db.scalars(query)).first()

    async def retry(
        self, key: str, *, actor: str, actor_role: str, via: str, address: str | None = None
    ) -> dict[str, Any]:
        """Send a failed delivery again, with a fresh allowance of attempts."""
        if not self.enabled:
            raise ApiError(
                409,
                "webhook_disabled",
                "Delivery to the core bank is not configured (webhook.url is empty): configure "
                "it and restart the service; waiting deliveries are then sent by themselves.",
            )
        row = await self.find(key)
        if row is None:
            raise ApiError(404, "unknown_delivery", "No delivery has this transaction or id.")
        if row.state != FAILED:
            raise ApiError(
                409,
                "delivery_not_failed",
                f"This delivery is {self._status(row)['state']}: only a failed one can be retried.",
            )
        if not row.body:
            raise ApiError(
                409,
                "delivery_purged",
                "This delivery's content was erased at the end of its retention "
                "(vteller archive purge): there is nothing left to send.",
            )
        # Logged first: if the retry cannot be audited it does not happen.
        await self._audit.append(
            "webhook.retried",
            actor=actor,
            actor_role=actor_role,
            target=row.transaction_id,
            detail={"delivery_id": row.id, "attempts": row.attempts, "via": via},
            address=address,
        )
        now = utcnow()
        async with self._db() as db, db.begin():
            changed = await db.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row.id, WebhookDelivery.state == FAILED)
                .values(
                    state=PENDING,
                    next_attempt_at=now,
                    attempts_at_retry=WebhookDelivery.attempts,
                    updated_at=now,
                )
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                raise ApiError(409, "delivery_not_failed", "This delivery was just retried.")
            retried = await db.get(WebhookDelivery, row.id, populate_existing=True)
        assert retried is not None
        log.info("webhook_retried", delivery_id=row.id, actor=actor, via=via)
        return self.view(retried)

    def view(self, row: WebhookDelivery) -> dict[str, Any]:
        """What supervisors and operators see: the status and the ids, never the body."""
        return {
            "delivery_id": row.id,
            "transaction_id": row.transaction_id,
            "event_type": row.event_type,
            "last_status": row.last_status,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
        } | self._status(row)

    def _status(self, row: WebhookDelivery) -> dict[str, Any]:
        state = row.state
        if state == PENDING and not self.enabled:
            state = "disabled"
        return {
            "state": state,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "next_attempt_at": _iso(row.next_attempt_at) if state == PENDING else None,
            "delivered_at": _iso(row.delivered_at),
        }

    @staticmethod
    async def _by_transaction(db: DbSession, transaction_id: str) -> WebhookDelivery | None:
        query = select(WebhookDelivery).where(WebhookDelivery.transaction_id == transaction_id)
        return (await db.scalars(query)).first()

    # -- what the sending workers do ---------------------------------------------------------

    async def due(self, limit: int) -> list[str]:
        now = utcnow()
        query = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state == PENDING,
                WebhookDelivery.next_attempt_at <= now,
                _lease_free(now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        async with self._db() as db:
            return list(await db.scalars(query))

    async def seconds_to_next(self) -> float | None:
        """Seconds until the earliest unclaimed pending delivery is due; None if none waits."""
        now = utcnow()
        query = select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.state == PENDING, _lease_free(now)
        )
        async with self._db() as db:
            earliest = await db.scalar(query)
        if earliest is None:
            return None
        if earliest.tzinfo is None:  # an aggregate bypasses the column type's conversion
            earliest = earliest.replace(tzinfo=now.tzinfo)
        return max((earliest - now).total_seconds(), 0.0)

    async def claim(self, delivery_id: str, owner: str) -> WebhookDelivery | None:
        """Take a due delivery for one attempt (counted now, so a crash mid-attempt counts too).

        None when another worker has it, or when its attempts are used up without an outcome
        that settled it (their workers were killed during them, or `max_attempts` was lowered
        since): it then fails instead, so that a delivery whose attempts keep killing workers
        ends like any other.
        """
        now = utcnow()
        lease = timedelta(seconds=self._config.timeout_seconds + LEASE_MARGIN_SECONDS)
        due = (
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            _lease_free(now),
        )
        used = WebhookDelivery.attempts - WebhookDelivery.attempts_at_retry
        async with self._db() as db, db.begin():
            claimed = await db.execute(
                update(WebhookDelivery)
                .where(*due, used < self._config.max_attempts)
                .values(
                    lease_owner=owner,
                    lease_until=now + lease,
                    attempts=WebhookDelivery.attempts + 1,
                    updated_at=now,
                )
            )
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                return await db.get(WebhookDelivery, delivery_id, populate_existing=True)
            given_up = await db.execute(
                update(WebhookDelivery)
                .where(*due, used >= self._config.max_attempts)
                .values(
                    state=FAILED,
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_until=None,
                    last_error=_gave_up(used),
                    updated_at=now,
                )
            )
            failed = (
                await db.get(WebhookDelivery, delivery_id, populate_existing=True)
                if given_up.rowcount == 1  # type: ignore[attr-defined]
                else None
            )
        if failed is not None:
            log.error("webhook_failed", delivery_id=failed.id, error=failed.last_error)
            await self._audit.append_fact(
                "webhook.failed",
                actor=SYSTEM,
                actor_role=SYSTEM,
                target=failed.transaction_id,
                detail={
                    "delivery_id": failed.id,
                    "attempts": failed.attempts,
                    "status": None,  # no answer ended it: it was given up when claimed
                    "reason": "exhausted",
                },
            )
        return None

    async def release(self, row: WebhookDelivery, owner: str) -> None:
        """Give an interrupted attempt back (the worker is stopping): due again at once, and not
        counted, so that a rolling restart cannot use up a delivery's attempts. Its `last_error`
        stays the last counted attempt's: the stop says nothing about the core bank."""
        values = {"next_attempt_at": utcnow(), "attempts": WebhookDelivery.attempts - 1}
        if await self._settle_row(row, owner, values):
            log.info("webhook_attempt_released", delivery_id=row.id, attempt=row.attempts)

    async def settle(self, row: WebhookDelivery, owner: str, outcome: Outcome) -> None:
        """Record an attempt's outcome: delivered, failed, or when to try again."""
        now = utcnow()
        used = row.attempts - row.attempts_at_retry
        values: dict[str, Any] = {"last_status": outcome.status}
        if outcome.verdict is Verdict.DELIVERED:
            values |= {"state": DELIVERED, "delivered_at": now, "next_attempt_at": None}
            values["last_error"] = None
        elif outcome.verdict is Verdict.REFUSED:
            values |= {"state": FAILED, "next_attempt_at": None, "last_error": outcome.error}
        elif used >= self._config.max_attempts:
            values |= {"state": FAILED, "next_attempt_at": None}
            values["last_error"] = f"gave up after {used} attempts; the last: {outcome.error}"
        else:
            delay = self._config.backoff(used) * random.uniform(1 - JITTER, 1 + JITTER)
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self._config.backoff_max_seconds))
            values |= {"next_attempt_at": now + timedelta(seconds=delay)}
            values["last_error"] = outcome.error
        if values["last_error"] is not None:
            values["last_error"] = values["last_error"][:MAX_ERROR_CHARS]
        if not await self._settle_row(row, owner, values):
            return
        state = values.get("state", PENDING)
        if state == PENDING:
            log.warning(
                "webhook_attempt_failed",
                delivery_id=row.id,
                attempt=row.attempts,
                error=outcome.error,
                next_attempt_at=_iso(values["next_attempt_at"]),
            )
            return
        detail: dict[str, Any] = {
            "delivery_id": row.id,
            "attempts": row.attempts,
            "status": outcome.status,
        }
        if state == DELIVERED:
            log.info("webhook_delivered", delivery_id=row.id, attempts=row.attempts)
            action = "webhook.delivered"
        else:
            log.error("webhook_failed", delivery_id=row.id, error=values["last_error"])
            action = "webhook.failed"
            detail["reason"] = "refused" if outcome.verdict is Verdict.REFUSED else "exhausted"
        await self._audit.append_fact(
            action, actor=SYSTEM, actor_role=SYSTEM, target=row.transaction_id, detail=detail
        )

    async def _settle_row(self, row: WebhookDelivery, owner: str, values: dict[str, Any]) -> bool:
        values = values | {"lease_owner": None, "lease_until": None, "updated_at": utcnow()}
        async with self._db() as db, db.begin():
            settled = await db.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == row.id,
                    WebhookDelivery.state == PENDING,
                    WebhookDelivery.lease_owner == owner,
                )
                .values(**values)
            )
        if settled.rowcount != 1:  # type: ignore[attr-defined]
            # Our lease ran out and another worker took the delivery over: its outcome counts
            # (the receiver deduplicates by the idempotency key if both reached it).
            log.warning("webhook_lease_lost", delivery_id=row.id, attempt=row.attempts)
            return False
        return True
