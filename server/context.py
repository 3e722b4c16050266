"""The services one application instance is made of, reachable from every request."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from server.audit.denials import Denials
from server.audit.log import AuditLog
from server.auditor.service import AuditorPortal
from server.auth.accounts import StaffAccounts
from server.auth.service import AuthService
from server.identity.verification import IdentityServices
from server.recording.analysis import AnalysisJobs
from server.sessions.store import SessionStore
from server.settings import Settings
from server.sfu.rooms import RoomRegistry
from server.workers.registry import WorkerRegistry
from server.workflow.queue.service import QueueService
from server.workflow.transactions.service import Transactions
from server.workflow.webhooks.delivery import WebhookDeliveries


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    auth: AuthService
    sessions: SessionStore
    rooms: RoomRegistry
    workers: WorkerRegistry
    audit: AuditLog
    denials: Denials
    identity: IdentityServices
    analysis: AnalysisJobs
    auditor: AuditorPortal
    webhooks: WebhookDeliveries
    transactions: Transactions
    queue: QueueService
    accounts: StaffAccounts


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
