"""Approved transactions reach a real webhook receiver on loopback, which checks every request with
the code of docs/webhooks.md: delivered once, retried, refused, resumed after a restart, retried by
an operator; and only supervisors (and, reading, auditors) reach the delivery API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.media import free_port
from recorder.seal.signing import Signer
from server.auth.principal import Role
from server.commands import operator
from server.db.engine import DbSession, session_factory
from server.db.models import AuditEntry, CallSession, Transaction, WebhookDelivery, utcnow
from server.workflow.webhooks.config import WebhookConfig
from server.workflow.webhooks.delivery import WebhookDeliveries
from server.workflow.webhooks.http import Outcome, Verdict
from server.workflow.webhooks.records import DeliveryRecords
from tests.integration.test_http_api import customer_of, invite, staff
from tests.support import server as support
from tests.support.server import RunningServer, running_server
from tests.support.tls import loopback_tls
from tests.support.webhook_receiver import Receiver, delivery_settled, running_receiver

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

STATUS_KEYS = {"state", "attempts", "last_error", "next_attempt_at", "delivered_at"}


def _config(url: str, **changes: Any) -> WebhookConfig:
    # Short waits so that retries happen within a test; nothing asserts how long they took.
    values: dict[str, Any] = {
        "url": url,
        "timeout_seconds": 3.0,
        "max_attempts": 5,
        "backoff_initial_seconds": 0.05,
        "backoff_multiplier": 2.0,
        "backoff_max_seconds": 0.2,
        "poll_seconds": 0.2,
    }
    return WebhookConfig(**(values | changes))


def _event(transaction_id: str, amount: int = 1_000_000) -> dict[str, Any]:
    return {
        "approval": {"transaction_id": transaction_id, "approved_by": ["u_checker"]},
        "transaction": {
            "id": transaction_id,
            "kind": "purchase",
            "product_name": "稳健理财 7 号",
            "amount_minor": amount,
            "currency": "CNY",
        },
    }


def _arm(receiver: Receiver, server: RunningServer) -> None:
    """The receiver checks with what the core bank is given: the secret and the public keys."""
    keys = server.settings.data_dir / "keys"
    receiver.secret = (keys / "webhook-secret").read_text().strip()
    receiver.keys_dir = keys / "public"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


@pytest.fixture
async def server(tmp_path: Path, receiver: Receiver) -> AsyncIterator[RunningServer]:
    settings = support.test_settings(tmp_path / "server", webhook=_config(receiver.url))
    async with running_server(settings) as running:
        _arm(receiver, running)
        yield running


async def _settled(
    server: RunningServer, transaction_id: str, states: tuple[str, ...]
) -> dict[str, Any]:
    return await delivery_settled(server.services.webhooks, transaction_id, states)


async def _audit(server: RunningServer, action: str, expected: int = 0) -> list[AuditEntry]:
    """The entries of `action`, once there are `expected` (an outcome is logged right after it
    is stored, so a test that has seen the outcome may be a moment early)."""
    query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
    async with asyncio.timeout(30):
        while True:
            async with session_factory(server.services.engine)() as db:
                entries = list(await db.scalars(query))
            if len(entries) >= expected:
                return entries
            await asyncio.sleep(0.05)


async def _barrier(server: RunningServer, receiver: Receiver, name: str) -> None:
    """Deliver one more transaction: whatever was sent before it has arrived by then."""
    await server.services.webhooks.enqueue(name, _event(name))
    await _settled(server, name, ("delivered",))


async def test_an_approved_transaction_is_delivered_once_and_signed(
    server: RunningServer, receiver: Receiver
) -> None:
    webhooks = server.services.webhooks
    assert await webhooks.status("t_unknown") is None
    await webhooks.enqueue("t_one", _event("t_one"))
    status = await _settled(server, "t_one", ("delivered",))
    assert set(status) == STATUS_KEYS
    assert status["attempts"] == 1 and status["last_error"] is None
    assert status["next_attempt_at"] is None and status["delivered_at"]
    await _barrier(server, receiver, "t_barrier")

    assert receiver.rejected == []  # signature, Ed25519, timestamp and idempotency key all held
    (request,) = receiver.for_transaction("t_one")
    assert request.envelope["event"] == _event("t_one")
    assert request.envelope["event_type"] == "transaction.approved"
    assert request.headers["Idempotency-Key"] == "t_one"
    assert request.headers["Vteller-Attempt"] == "1"
    assert request.headers["Vteller-Delivery-Id"] == request.envelope["delivery_id"]
    (delivered, _) = await _audit(server, "webhook.delivered", 2)
    assert delivered.target == "t_one" and delivered.actor == "system"
    assert delivered.detail == {
        "delivery_id": request.envelope["delivery_id"],
        "attempts": 1,
        "status": 200,
    }


async def test_an_approval_whose_delivery_was_never_queued_is_delivered(
    server: RunningServer, receiver: Receiver
) -> None:
    """The approval and its delivery are stored one after the other: a worker dying in between
    must not leave the core bank without the transaction (nobody may look at it again)."""
    teller = await server.user("teller-late", Role.TELLER)
    async with session_factory(server.services.engine)() as db, db.begin():
        db.add(CallSession(id="s_late", business="wealth", teller_id=teller))
        await db.flush()
        db.add(
            Transaction(
                id="t_late",
                session_id="s_late",
                kind="service",
                content="{}",
                sha256="0" * 64,
                state="approved",
                created_by=teller,
                approval_record=json.dumps({"transaction_id": "t_late"}),
                approval_signature="ab" * 32,
            )
        )
    await _settled(server, "t_late", ("delivered",))
    await _barrier(server, receiver, "t_barrier")
    (request,) = receiver.for_transaction("t_late")
    assert request.envelope["event"] == {
        "record": {"transaction_id": "t_late"},
        "signature": "ab" * 32,
    }


async def test_server_errors_are_retried_until_accepted(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]
    await server.services.webhooks.enqueue("t_retry", _event("t_retry"))
    status = await _settled(server, "t_retry", ("delivered",))
    assert status["attempts"] == 3
    requests = receiver.for_transaction("t_retry")
    assert [r.headers["Vteller-Attempt"] for r in requests] == ["1", "2", "3"]
    # The same bytes every time; only the timestamp and the signatures may differ.
    assert len({r.body for r in requests}) == 1
    assert len({r.headers["Vteller-Delivery-Id"] for r in requests}) == 1
    assert receiver.rejected == []


async def test_a_client_error_fails_at_once_and_is_not_retried(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.answers = [422]
    await server.services.webhooks.enqueue("t_bad", _event("t_bad"))
    status = await _settled(server, "t_bad", ("failed",))
    assert status["attempts"] == 1
    assert "HTTP 422" in status["last_error"] and "not retried" in status["last_error"]
    await _barrier(server, receiver, "t_after_bad")
    assert len(receiver.for_transaction("t_bad")) == 1
    (failed,) = await _audit(server, "webhook.failed", 1)
    assert failed.target == "t_bad"
    assert failed.detail["reason"] == "refused" and failed.detail["status"] == 422


async def test_enqueueing_a_transaction_twice_delivers_it_once(
    server: RunningServer, receiver: Receiver
) -> None:
    webhooks = server.services.webhooks
    await asyncio.gather(*(webhooks.enqueue("t_twice", _event("t_twice")) for _ in range(3)))
    await webhooks.enqueue("t_twice", _event("t_twice", amount=1))  # a caller's mistake
    await _settled(server, "t_twice", ("delivered",))
    await webhooks.enqueue("t_twice", _event("t_twice"))  # after delivery, too
    await _barrier(server, receiver, "t_after_twice")
    (request,) = receiver.for_transaction("t_twice")
    assert request.envelope["event"] == _event("t_twice")  # the first one stands
    assert (await webhooks.status("t_twice") or {})["attempts"] == 1


async def test_unreachable_receiver_is_retried_until_it_is_up(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/core-bank/hook"
    settings = support.test_settings(tmp_path / "server", webhook=_config(url, max_attempts=1000))
    async with running_server(settings) as server:
        await server.services.webhooks.enqueue("t_down", _event("t_down"))
        async with asyncio.timeout(30):
            while True:
                status = await _settled(server, "t_down", ("pending",))
                if status["attempts"] >= 2 and status["last_error"]:
                    break
                await asyncio.sleep(0.05)
        assert "could not reach the webhook" in status["last_error"]
        assert status["next_attempt_at"] is not None
        async with running_receiver(port) as receiver:
            _arm(receiver, server)
            status = await _settled(server, "t_down", ("delivered",))
            assert status["attempts"] >= 3 and status["last_error"] is None
            assert len(receiver.for_transaction("t_down")) == 1
            assert receiver.rejected == []


async def test_https_receiver_certificates_are_checked(tmp_path: Path) -> None:
    ca_file, tls = loopback_tls(tmp_path / "tls")
    async with running_receiver(tls=tls) as receiver:
        # Not signed by a CA the system trusts: refused (and retried) until the bank's CA is set.
        settings = support.test_settings(tmp_path / "server", webhook=_config(receiver.url))
        async with running_server(settings) as server:
            _arm(receiver, server)
            await server.services.webhooks.enqueue("t_tls", _event("t_tls"))
            async with asyncio.timeout(30):
                while True:
                    status = await _settled(server, "t_tls", ("pending",))
                    if status["last_error"]:
                        break
                    await asyncio.sleep(0.05)
            assert "certificate" in status["last_error"].lower()
        assert receiver.received == []
        config = _config(receiver.url, ca_file=ca_file)
        async with running_server(
            support.test_settings(tmp_path / "server", webhook=config)
        ) as server:
            status = await _settled(server, "t_tls", ("delivered",))
        assert len(receiver.for_transaction("t_tls")) == 1 and receiver.rejected == []


async def test_a_stopped_server_resumes_its_deliveries(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    async with running_receiver() as receiver:
        # Disabled (no URL): the delivery waits, and says so.
        async with running_server(support.test_settings(data_dir, webhook=_config(""))) as server:
            await server.services.webhooks.enqueue("t_waits", _event("t_waits"))
            status = await server.services.webhooks.status("t_waits")
            assert status is not None and status["state"] == "disabled"
            assert status["next_attempt_at"] is None
            supervisor = await staff(server, "chen", Role.SUPERVISOR)
            listed = await supervisor.call("GET", "/api/v1/webhooks/deliveries")
            assert listed["enabled"] is False
            assert [d["state"] for d in listed["deliveries"]] == ["disabled"]
            refused = await supervisor.call(
                "POST", "/api/v1/webhooks/deliveries/t_waits/retry", expect=409
            )
            assert refused["error"]["code"] == "webhook_disabled"
        # Configured, and stopped while the receiver holds the request unanswered.
        receiver.hold = asyncio.Event()
        settings = support.test_settings(data_dir, webhook=_config(receiver.url))
        async with running_server(settings) as server:
            _arm(receiver, server)
            await receiver.wait_for(1)
            await server.services.webhooks.enqueue("t_later", _event("t_later"))
        # The attempt in flight was given back, not lost.
        receiver.hold.set()
        receiver.hold = None
        async with running_server(
            support.test_settings(data_dir, webhook=_config(receiver.url))
        ) as server:
            first = await _settled(server, "t_waits", ("delivered",))
            later = await _settled(server, "t_later", ("delivered",))
        # Sent twice, counted once: the attempt a stopping worker gave back takes none of the
        # delivery's allowance, and the next one carries its number again.
        assert first["attempts"] == 1 and later["attempts"] == 1
        sent = receiver.for_transaction("t_waits")
        assert len(sent) == 2 and sent[0].body == sent[1].body
        assert [r.headers["Idempotency-Key"] for r in sent] == ["t_waits", "t_waits"]
        assert [r.headers["Vteller-Attempt"] for r in sent] == ["1", "1"]
        assert receiver.rejected == []


async def test_two_workers_never_hold_the_same_delivery(tmp_path: Path) -> None:
    settings = support.test_settings(tmp_path / "server", webhook=_config(""))
    async with running_server(settings) as server:
        db = session_factory(server.services.engine)
        config = _config("http://127.0.0.1:9/unused")
        workers = [DeliveryRecords(config, db, server.services.audit) for _ in range(2)]
        await workers[0].enqueue("t_contended", _event("t_contended"))
        (delivery_id,) = await workers[0].due(10)
        claims = await asyncio.gather(
            *(worker.claim(delivery_id, f"owner{i}") for i, worker in enumerate(workers * 3))
        )
        held = [claim for claim in claims if claim is not None]
        assert len(held) == 1 and held[0].attempts == 1
        owner = held[0].lease_owner
        assert owner is not None and await workers[1].due(10) == []

        # The owner died: once its lease has run out, another worker takes over...
        async with db() as session, session.begin():
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(lease_until=utcnow() - timedelta(seconds=1))
            )
        taken = await workers[1].claim(delivery_id, "successor")
        assert taken is not None and taken.attempts == 2
        # ...and a late answer from the first owner no longer counts.
        await workers[0].settle(held[0], owner, Outcome(Verdict.DELIVERED, 200))
        await workers[1].settle(taken, "successor", Outcome(Verdict.REFUSED, 410, "gone"))
        status = await workers[1].status("t_contended")
        assert status is not None and status["state"] == "failed"
        assert await _audit(server, "webhook.delivered") == []


async def test_a_delivery_whose_attempts_keep_killing_workers_fails(tmp_path: Path) -> None:
    settings = support.test_settings(tmp_path / "server", webhook=_config(""))
    async with running_server(settings) as server:
        db = session_factory(server.services.engine)
        records = DeliveryRecords(
            _config("http://127.0.0.1:9/unused", max_attempts=3), db, server.services.audit
        )
        await records.enqueue("t_poison", _event("t_poison"))
        (delivery_id,) = await records.due(10)
        for attempt in (1, 2, 3):
            claimed = await records.claim(delivery_id, f"killed_{attempt}")
            assert claimed is not None and claimed.attempts == attempt
            # Its worker was killed during the attempt: the lease runs out.
            async with db() as session, session.begin():
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id)
                    .values(lease_until=utcnow() - timedelta(seconds=1))
                )
        # Not sent a fourth time: it fails, where supervisors and operators see it.
        assert await records.claim(delivery_id, "successor") is None
        status = await records.status("t_poison")
        assert status is not None and (status["state"], status["attempts"]) == ("failed", 3)
        assert status["last_error"] == "gave up after 3 attempts; none of them recorded an outcome"
        assert await records.due(10) == []
        (failed,) = await _audit(server, "webhook.failed", 1)
        assert failed.target == "t_poison"
        assert failed.detail == {
            "delivery_id": delivery_id,
            "attempts": 3,
            "status": None,
            "reason": "exhausted",
        }
        # An operator's retry gives it its attempts again.
        await records.retry("t_poison", actor="system", actor_role="system", via="cli")
        again = await records.claim(delivery_id, "successor")
        assert again is not None and again.attempts == 4


async def _due_now(db: async_sessionmaker[DbSession], delivery_id: str) -> None:
    """Skip the backoff: the retry is due at once."""
    async with db() as session, session.begin():
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(next_attempt_at=utcnow())
        )


async def test_a_stopping_worker_gives_its_attempt_back(tmp_path: Path) -> None:
    settings = support.test_settings(tmp_path / "server", webhook=_config(""))
    async with running_server(settings) as server:
        db = session_factory(server.services.engine)
        records = DeliveryRecords(
            _config("http://127.0.0.1:9/unused", max_attempts=2), db, server.services.audit
        )
        await records.enqueue("t_restart", _event("t_restart"))
        (delivery_id,) = await records.due(10)
        first = await records.claim(delivery_id, "w1")
        assert first is not None
        busy = "the webhook answered HTTP 503: busy"
        await records.settle(first, "w1", Outcome(Verdict.RETRY, 503, busy))
        await _due_now(db, delivery_id)
        # The last attempt is under way when its worker stops (a rolling restart): released...
        last = await records.claim(delivery_id, "w2")
        assert last is not None and last.attempts == 2
        await records.release(last, "w2")
        status = await records.status("t_restart")
        assert status is not None and (status["state"], status["attempts"]) == ("pending", 1)
        assert status["last_error"] == busy
        # ...it is still sent: the stop did not use it up.
        again = await records.claim(delivery_id, "w3")
        assert again is not None and again.attempts == 2
        # This worker is killed: nothing is left, and the failure keeps what the bank answered.
        async with db() as session, session.begin():
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(lease_until=utcnow() - timedelta(seconds=1))
            )
        assert await records.claim(delivery_id, "w4") is None
        status = await records.status("t_restart")
        assert status is not None and (status["state"], status["attempts"]) == ("failed", 2)
        assert status["last_error"] == f"gave up after 2 attempts; before: {busy}"
        (failed,) = await _audit(server, "webhook.failed", 1)
        assert failed.detail is not None and failed.detail["reason"] == "exhausted"

        # Fewer attempts configured than one already used: given up without blaming a crash.
        await records.enqueue("t_lowered", _event("t_lowered"))
        (lowered_id,) = await records.due(10)
        claimed = await records.claim(lowered_id, "w1")
        assert claimed is not None
        await records.settle(claimed, "w1", Outcome(Verdict.RETRY, 503, busy))
        await _due_now(db, lowered_id)
        fewer = DeliveryRecords(
            _config("http://127.0.0.1:9/unused", max_attempts=1), db, server.services.audit
        )
        assert await fewer.claim(lowered_id, "w2") is None
        status = await fewer.status("t_lowered")
        assert status is not None and status["state"] == "failed"
        assert status["last_error"] == f"gave up after 1 attempts; before: {busy}"


async def test_two_sending_workers_deliver_each_transaction_once(
    server: RunningServer, receiver: Receiver
) -> None:
    first = server.services.webhooks
    second = WebhookDeliveries(
        server.settings.webhook,
        session_factory(server.services.engine),
        server.services.audit,
        Signer.open(server.settings.data_dir / "keys" / "signing-key.pem"),
        receiver.secret,
    )
    await second.start()
    try:
        names = [f"t_many_{i:02}" for i in range(24)]
        await asyncio.gather(
            *(
                (first if i % 2 else second).enqueue(name, _event(name))
                for i, name in enumerate(names)
            )
        )
        for name in names:
            await _settled(server, name, ("delivered",))
    finally:
        await second.stop()
    assert sorted(r.envelope["transaction_id"] for r in receiver.received) == names
    assert receiver.rejected == []


async def test_supervisor_retries_a_delivery_that_ran_out_of_attempts(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.otherwise = 503
    await server.services.webhooks.enqueue("t_busy", _event("t_busy"))
    status = await _settled(server, "t_busy", ("failed",))
    assert status["attempts"] == 5
    assert status["last_error"].startswith("gave up after 5 attempts")
    (failed,) = await _audit(server, "webhook.failed", 1)
    assert failed.detail["reason"] == "exhausted" and failed.detail["attempts"] == 5

    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    listed = await supervisor.call("GET", "/api/v1/webhooks/deliveries?state=failed")
    assert listed["enabled"] is True
    (view,) = listed["deliveries"]
    assert view["transaction_id"] == "t_busy" and view["last_status"] == 503
    assert "body" not in view and "event" not in view
    receiver.otherwise = 200
    retried = await supervisor.call(
        "POST", f"/api/v1/webhooks/deliveries/{view['delivery_id']}/retry"
    )
    assert retried["delivery"]["state"] in ("pending", "delivered")
    status = await _settled(server, "t_busy", ("delivered",))
    assert status["attempts"] == 6
    (entry,) = await _audit(server, "webhook.retried")
    assert entry.actor_role == "supervisor" and entry.target == "t_busy"
    assert entry.detail == {"delivery_id": view["delivery_id"], "attempts": 5, "via": "api"}
    assert entry.address == "127.0.0.1"

    again = await supervisor.call("POST", "/api/v1/webhooks/deliveries/t_busy/retry", expect=409)
    assert again["error"]["code"] == "delivery_not_failed"
    missing = await supervisor.call(
        "POST", "/api/v1/webhooks/deliveries/t_nothing/retry", expect=404
    )
    assert missing["error"]["code"] == "unknown_delivery"
    shown = await supervisor.call("GET", "/api/v1/webhooks/deliveries/t_busy")
    assert shown["delivery"]["state"] == "delivered"


async def _vteller(server: RunningServer, url: str, *args: str) -> tuple[int, str, str]:
    env = dict(
        os.environ,
        VTELLER_DATA_DIR=str(server.settings.data_dir),
        VTELLER_DATABASE_URL=server.settings.database_url,
        VTELLER_WEBHOOK__URL=url,
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "webhooks", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await child.communicate()
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def test_operator_prints_the_secret_lists_and_retries_from_the_command_line(
    server: RunningServer, receiver: Receiver
) -> None:
    data_dir = server.settings.data_dir
    code, out, _ = await _vteller(server, receiver.url, "secret")
    assert code == 0 and out.strip() == receiver.secret
    assert (data_dir / "keys" / "webhook-secret").stat().st_mode & 0o777 == 0o600

    receiver.answers = [400]
    await server.services.webhooks.enqueue("t_cli", _event("t_cli"))
    await _settled(server, "t_cli", ("failed",))
    code, out, _ = await _vteller(server, receiver.url, "list", "--state", "failed")
    assert code == 0 and "t_cli" in out and "HTTP 400" in out
    code, out, _ = await _vteller(server, receiver.url, "retry", "t_cli")
    assert code == 0 and "is due again" in out
    status = await _settled(server, "t_cli", ("delivered",))
    assert status["attempts"] == 2
    (entry,) = await _audit(server, "webhook.retried")
    # The operator who ran it, as for `vteller admin` (the child inherits SUDO_USER, if any).
    assert (entry.actor, entry.actor_role) == (operator(), "system")
    assert entry.detail["via"] == "cli"

    code, _, err = await _vteller(server, receiver.url, "retry", "t_cli")
    assert code == 1 and "only a failed one can be retried" in err


async def test_only_supervisors_retry_and_only_they_and_auditors_read(
    server: RunningServer, receiver: Receiver
) -> None:
    receiver.answers = [403]
    await server.services.webhooks.enqueue("t_roles", _event("t_roles"))
    await _settled(server, "t_roles", ("failed",))
    listing = "/api/v1/webhooks/deliveries"
    retry = f"{listing}/t_roles/retry"

    anonymous = server.client()
    assert (await anonymous.call("GET", listing, expect=401))["error"]["code"] == (
        "not_authenticated"
    )
    await anonymous.call("POST", retry, expect=401)

    teller = await staff(server, "wang", Role.TELLER)
    customer = await customer_of(server, await invite(teller))
    others = [teller, customer]
    for username, role in (("zhao", Role.EXPERT), ("root", Role.ADMIN)):
        others.append(await staff(server, username, role))
    for client in others:
        for method, path in (("GET", listing), ("GET", f"{listing}/t_roles"), ("POST", retry)):
            reply = await client.call(method, path, expect=403)
            assert reply["error"]["code"] == "forbidden"

    auditor = await staff(server, "qian", Role.AUDITOR)
    (seen,) = (await auditor.call("GET", listing))["deliveries"]
    assert seen["state"] == "failed"
    assert (await auditor.call("POST", retry, expect=403))["error"]["code"] == "forbidden"

    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    token, supervisor.csrf = supervisor.csrf, ""
    assert (await supervisor.call("POST", retry, expect=403))["error"]["code"] == "csrf_failed"
    supervisor.csrf = token
    for query in ("?state=lost", "?limit=0", "?limit=501", "?limit=ten"):
        reply = await supervisor.call("GET", listing + query, expect=400)
        assert reply["error"]["code"] == "invalid_request"
    # None of the refused attempts was a retry.
    assert await _audit(server, "webhook.retried") == []
    assert (await server.services.webhooks.status("t_roles") or {})["state"] == "failed"
