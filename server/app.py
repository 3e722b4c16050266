"""The application factory: everything a running vteller process is made of, from settings."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from compliance.cli import model_cache_dir
from recorder.store.s3 import ArchiveBucket
from server.api import (
    account_routes,
    auditor_routes,
    auth_routes,
    compliance_routes,
    join_routes,
    pages,
    queue_routes,
    session_routes,
    transaction_routes,
    webhook_routes,
)
from server.api.access import refusals_noted
from server.api.forwarded import forwarded_client
from server.api.middleware import json_errors, security_headers, unnameable_paths
from server.audit.denials import Denials
from server.audit.incidents import StorageIncidents
from server.audit.log import AuditLog
from server.auditor.service import AuditorPortal
from server.auth.accounts import StaffAccounts
from server.auth.ratelimit import LoginThrottle
from server.auth.service import AuthService
from server.context import SERVICES, Services
from server.crypto.deployment_keys import check_deployment_keys, local_check_values
from server.db.engine import create_engine, migrate, session_factory
from server.identity.engines import IdentityEngines
from server.identity.records import IdentityRecords
from server.identity.verification import IdentityServices
from server.metrics import Metrics, metrics_handler, metrics_token
from server.recording.analysis import AnalysisJobs
from server.recording.live_speech import WhisperListener
from server.recording.manager import RecordingManager
from server.recording.metrics import RecordingCollector
from server.sessions.store import SessionStore
from server.settings import Settings
from server.sfu.ice_policy import IcePolicy
from server.sfu.rooms import RoomRegistry
from server.sfu.turn import BrowserIce, turn_secret
from server.signaling.handler import signaling
from server.workers.registry import WorkerRegistry
from server.workflow.queue.service import QueueService
from server.workflow.transactions.bindings import RecordedSignatures
from server.workflow.transactions.service import Transactions
from server.workflow.webhooks.delivery import WebhookDeliveries, webhook_secret

API_BODY_LIMIT = 64 * 1024


async def _revalidate_static(request: web.Request, response: web.StreamResponse) -> None:
    # Module URLs carry no version: after an upgrade a browser that reused its cached copy would
    # mix old and new scripts. It asks first (ETag / Last-Modified), mostly answered with a 304.
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")


async def create_app(settings: Settings) -> web.Application:
    # Keys, the database and recordings in transit live here: owner-only.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)
    engine = create_engine(settings.effective_database_url)
    await migrate(engine, settings.data_dir / "keys")
    db = session_factory(engine)
    store = SessionStore(db)

    policy = IcePolicy(settings.ice_host_addresses, map(str, settings.ice_peer_networks))
    policy.install()
    throttle = LoginThrottle(
        db,
        settings.login_max_failures_per_user,
        settings.login_max_failures_per_address,
        settings.login_window_seconds,
    )
    recorder = RecordingManager(settings, db)
    # Checkpoints are signed with the worker's signing key, published next to the manifests' one.
    audit = AuditLog(db, recorder.signer, data_dir=settings.data_dir)
    auditor = AuditorPortal(
        settings.auditor,
        db,
        settings.data_dir,
        recorder.bucket if isinstance(recorder.bucket, ArchiveBucket) else None,
        recorder.keyring,
        audit,
        unrecorded_retention_days=settings.identity.unrecorded_retention_days,
    )
    identity = IdentityServices(
        engines=IdentityEngines(settings.identity),
        records=IdentityRecords(db, settings.data_dir / "keys" / "identity-keyring.json"),
        store=store,
        audit=audit,
        on_card_read=auditor.index.record_card,
    )
    listener = WhisperListener(model_cache_dir(settings.data_dir)) if settings.live_speech else None
    turn_key = (
        await asyncio.to_thread(turn_secret, settings.turn, settings.data_dir)
        if settings.turn.enabled
        else None
    )
    browser_ice = BrowserIce(
        [s.model_dump(exclude_none=True) for s in settings.ice_servers], settings.turn, turn_key
    )
    rooms = RoomRegistry(store, settings, policy, browser_ice, recorder, audit, identity, listener)
    analysis = AnalysisJobs(settings, db, recorder.signer, recorder.bucket, audit)

    async def sealed(archive_id: str, session_id: str) -> None:
        auditor.index.sealed(archive_id)
        await analysis.submit(archive_id, session_id)

    recorder.on_sealed = sealed
    incidents = StorageIncidents(audit)
    recorder.audit_incidents(incidents)
    auditor.incidents = incidents
    analysis.notify = rooms.notify_staff
    secret = webhook_secret(settings.webhook, settings.data_dir)
    webhooks = WebhookDeliveries(settings.webhook, db, audit, recorder.signer, secret)
    services = Services(
        settings=settings,
        engine=engine,
        auth=AuthService(db, throttle, settings.staff_session_hours),
        sessions=store,
        rooms=rooms,
        workers=WorkerRegistry(db, settings, rooms),
        audit=audit,
        denials=Denials(audit),
        identity=identity,
        analysis=analysis,
        auditor=auditor,
        webhooks=webhooks,
        transactions=Transactions(
            db,
            settings.workflow,
            recorder.signer,
            audit,
            settings.data_dir / "keys" / "signature-keyring.json",
            rooms.bind_transaction,
            rooms.notify_session,
            RecordedSignatures(recorder.bucket).bound,
        ),
        queue=QueueService(
            db,
            store,
            audit,
            settings.queue,
            timedelta(minutes=settings.invitation_ttl_minutes),
            settings.data_dir / "keys" / "queue-keyring.json",
        ),
        accounts=StaffAccounts(db, throttle, audit),
    )

    # Every key file exists by now (created at first start): compare them with the other
    # machines' before anything is written with them.
    keys = settings.data_dir / "keys"
    local_keys = await asyncio.to_thread(
        local_check_values, keys, recorder.signer.key_id, secret, turn_key
    )
    await check_deployment_keys(db, keys, local_keys)
    await services.workers.check_url()

    middlewares: list[Middleware] = [json_errors, refusals_noted, unnameable_paths]
    if settings.trusted_proxies:
        middlewares.insert(0, forwarded_client(settings.trusted_proxies))
    app = web.Application(middlewares=middlewares, client_max_size=API_BODY_LIMIT)
    app[SERVICES] = services
    for module in (
        auth_routes,
        session_routes,
        compliance_routes,
        auditor_routes,
        webhook_routes,
        transaction_routes,
        queue_routes,
        account_routes,
        join_routes,
        pages,
    ):
        app.add_routes(module.routes)
    app.router.add_get("/ws/v1/sessions/{session_id}", signaling)
    app.router.add_static("/static/", pages.WEB_DIR, append_version=False)
    app.on_response_prepare.append(_revalidate_static)
    app.on_response_prepare.append(security_headers)
    metrics = Metrics(rooms, services.workers)
    metrics.registry.register(RecordingCollector(recorder))
    metrics.registry.register(services.denials)
    app.router.add_get(
        "/metrics",
        metrics_handler(metrics, metrics_token(settings.metrics_token, settings.data_dir)),
    )

    # Started with the worker, not waited for: they only warm up or check, and log what they find.
    side_tasks: set[asyncio.Task[Any]] = set()

    def on_the_side(job: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(job)
        side_tasks.add(task)
        task.add_done_callback(side_tasks.discard)

    async def start_worker(_: web.Application) -> None:
        if settings.identity.preload:
            on_the_side(identity.engines.preload_async())
        if settings.turn.enabled:
            on_the_side(browser_ice.check())
        metrics.start()
        await recorder.start()
        await analysis.start()
        await audit.start()
        await auditor.start()
        await webhooks.start()
        await services.workers.start()
        await services.workers.recover_dead()

    async def stop_rooms(_: web.Application) -> None:
        await services.rooms.shutdown()
        await analysis.stop()
        await recorder.stop()
        await webhooks.stop()
        await auditor.stop()
        await services.denials.close()
        await audit.stop()
        await services.workers.stop()
        await metrics.stop()

    async def dispose_engine(_: web.Application) -> None:
        await asyncio.to_thread(identity.engines.close)
        await engine.dispose()

    app.on_startup.append(start_worker)
    app.on_shutdown.append(stop_rooms)
    app.on_cleanup.append(dispose_engine)
    return app
