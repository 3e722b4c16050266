"""Delivery of approved transactions to the core bank's webhook: signed, retried, idempotent.

The transaction workflow calls `enqueue` when a transaction is approved; the delivery is in the
database before that call returns, and each worker's background loop sends due deliveries
(docs/webhooks.md). Retries are persisted, so a worker that is killed or restarted loses nothing:
pending deliveries are picked up at the next start, or by any other worker once its claim expires.
The core bank deduplicates by the transaction id it receives as the idempotency key, because an
attempt whose answer was lost (a timeout after the receiver committed) is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker

from recorder.seal.files import generated_secret
from recorder.seal.signing import Signer
from server.audit import AuditLog
from server.background import cancel_and_wait
from server.db.engine import DbSession
from server.workflow.webhooks.config import WebhookConfig
from server.workflow.webhooks.http import attempt, client_session
from server.workflow.webhooks.records import DeliveryRecords
from server.workflow.webhooks.signing import request_headers

log = structlog.get_logger(__name__)

# Deliveries one worker sends at once; more wait for the next round.
BATCH = 16
# Never spin: another worker may hold a due delivery's claim for a moment.
MIN_PAUSE_SECONDS = 0.05
SECRET_FILE = "webhook-secret"


def secret_file(data_dir: Path) -> Path:
    return data_dir / "keys" / SECRET_FILE


def webhook_secret(config: WebhookConfig, data_dir: Path) -> str:
    """The HMAC key: configured, or generated once into {data_dir}/keys/webhook-secret (0600)."""
    configured = config.secret.get_secret_value()
    return configured or generated_secret(secret_file(data_dir))


class WebhookDeliveries(DeliveryRecords):
    def __init__(
        self,
        config: WebhookConfig,
        db: async_sessionmaker[DbSession],
        audit: AuditLog,
        signer: Signer,
        secret: str,
    ) -> None:
        super().__init__(config, db, audit)
        self._signer = signer
        self._secret = secret
        # Identifies this process's claims; a restarted worker is a new owner.
        self._owner = secrets.token_hex(8)
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            log.info("webhook_disabled", hint="set webhook.url to deliver approved transactions")
            return
        if _plain_http_beyond_loopback(self._config.url):
            log.warning(
                "webhook_not_encrypted",
                hint="webhook.url is http:// to another host: transactions cross the network "
                "in clear; use https://",
            )
        self._http = client_session(self._config.timeout_seconds, self._config.ca_file)
        self._runner = asyncio.create_task(self._run_forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._runner)
        self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the interface of the transaction workflow ---------------------------------------------

    async def enqueue(self, transaction_id: str, event: dict[str, Any]) -> None:
        await super().enqueue(transaction_id, event)
        self._wake.set()

    async def retry(
        self, key: str, *, actor: str, actor_role: str, via: str, address: str | None = None
    ) -> dict[str, Any]:
        view = await super().retry(
            key, actor=actor, actor_role=actor_role, via=via, address=address
        )
        self._wake.set()
        return view

    # -- sending -------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            # Cleared before looking, so an enqueue during a round makes the next one start at once.
            self._wake.clear()
            try:
                await self.enqueue_unqueued(BATCH)
                due = await self.due(BATCH)
                if due:
                    # All of them finish (or are cancelled with the loop) before the next round.
                    results = await asyncio.gather(
                        *(self._deliver(delivery_id) for delivery_id in due),
                        return_exceptions=True,
                    )
                    for delivery_id, result in zip(due, results, strict=True):
                        if isinstance(result, Exception):
                            log.error(
                                "webhook_attempt_crashed", delivery_id=delivery_id, exc_info=result
                            )
                    if len(due) == BATCH:
                        continue
                pause = await self.seconds_to_next()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be briefly unavailable; the deliveries are still in it.
                log.exception("webhook_round_failed")
                pause = None
            if pause is None or pause > self._config.poll_seconds:
                # Deliveries queued or retried by other processes are found at the next poll.
                pause = self._config.poll_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(pause, MIN_PAUSE_SECONDS)):
                    await self._wake.wait()

    async def _deliver(self, delivery_id: str) -> None:
        row = await self.claim(delivery_id, self._owner)
        if row is None:
            return  # another worker has it, or its attempts were spent and it failed
        assert self._http is not None
        body = row.body.encode("utf-8")
        headers = request_headers(
            secret=self._secret,
            signer=self._signer,
            timestamp=int(time.time()),
            body=body,
            transaction_id=row.transaction_id,
            delivery_id=row.id,
            attempt=row.attempts,
        )
        try:
            outcome = await attempt(self._http, self._config.url, body, headers)
        except asyncio.CancelledError:
            # Shielded: a second cancellation must not leave the release half-written.
            await asyncio.shield(self.release(row, self._owner))
            raise
        await self.settle(row, self._owner, outcome)


def _plain_http_beyond_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
