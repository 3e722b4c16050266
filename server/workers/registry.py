"""Workers: the processes (on one or many machines) that host live sessions.

Each worker registers itself with the URL browsers reach it at and the open sessions it may be
given, and heartbeats its load into the shared database. A new session is placed on the
least-loaded live worker with room for it, or refused (503 capacity_full) when every one is
full; a session lives on that worker while it is alive. When a worker stops heartbeating, any
live worker moves its open sessions to the least-loaded live worker and marks them interrupted,
so their participants reconnect there.
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, Select, case, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from server.background import cancel_and_wait
from server.db.engine import DbSession, exclusive
from server.db.models import CallSession, SessionEvent, Worker, utcnow
from server.errors import ApiError, StartRefused
from server.sessions.store import OPEN_STATES
from server.settings import Settings
from server.sfu.rooms import RoomRegistry

log = structlog.get_logger(__name__)

# The rows of workers gone this long, or stopped, are deleted once no session refers to them.
# Not as soon as they are taken for dead: one that was only cut off for a while comes back to
# heartbeat its row, and the sessions it then claims must be able to refer to it.
FORGET_AFTER = timedelta(hours=1)
# Every placement, on every worker and machine, takes this lock for its transaction.
PLACEMENT_LOCK = "vteller/worker-placement"
# A slot frees when a call ends: calls last minutes, so a retry within seconds would only be
# refused again.
RETRY_AFTER_SECONDS = 30


def capacity_full() -> ApiError:
    return ApiError(
        503,
        "capacity_full",
        "Every worker already carries as many sessions as it may, so nothing was started: try "
        "again when a call ends. Operators: add workers or machines, or raise "
        "VTELLER_WORKER_MAX_SESSIONS if the media benchmark shows this machine carries more "
        "(docs/deployment.md, Capacity).",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class WorkerRegistry:
    def __init__(
        self, db: async_sessionmaker[DbSession], settings: Settings, rooms: RoomRegistry
    ) -> None:
        self._db = db
        self._rooms = rooms
        self._interval = settings.worker_heartbeat_seconds
        self._dead_after = timedelta(
            seconds=settings.worker_heartbeat_seconds * settings.worker_dead_after_heartbeats
        )
        self._url = settings.worker_url
        self.worker_id = ""
        self.max_sessions = settings.worker_max_sessions
        # Open sessions the database places on this worker, as of its last heartbeat (/metrics).
        self.open_sessions = 0
        self._task: asyncio.Task[None] | None = None

    async def check_url(self) -> None:
        """Refuse to start where another live worker is registered at this worker's URL.

        A worker at its own URL is taken for the predecessor it replaces (a restart), and its
        sessions are taken over: two live workers sharing a URL (machines left on the default
        advertise URL) would take each other's sessions and send browsers to the wrong one.
        """
        async with self._db() as db:
            now = await _database_now(db)
            holders = (
                await db.execute(
                    select(Worker.hostname, Worker.pid).where(
                        Worker.url == self._url,
                        Worker.stopped_at.is_(None),
                        Worker.heartbeat_at > now - self._dead_after,
                    )
                )
            ).all()
        here = socket.gethostname()
        for hostname, pid in holders:
            if hostname != here or (pid != os.getpid() and _process_exists(pid)):
                raise StartRefused(
                    f"another live worker (on {hostname}, process {pid}) is registered at "
                    f"{self._url}: give every worker its own VTELLER_ADVERTISE_URL (each "
                    "machine its own address, with {port}; docs/deployment.md), or stop that "
                    "worker first"
                )

    async def start(self) -> None:
        async with self._db() as db, db.begin():
            now = await _database_now(db)
            worker = Worker(
                url=self._url,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
                max_sessions=self.max_sessions,
            )
            db.add(worker)
        self.worker_id = worker.id
        log.info("worker_registered", worker_id=worker.id, url=self._url)
        self._task = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        async with self._db() as db, db.begin():
            await db.execute(
                update(Worker).where(Worker.id == self.worker_id).values(stopped_at=utcnow())
            )

    async def place(self) -> str:
        """The live worker with the fewest open sessions, one with room first (this one when it
        is the only one). Sessions of a dead worker are moved this way even when every worker is
        full: they are calls in progress, and a worker that is gone would host them nowhere."""
        async with self._db() as db:
            chosen = await db.scalar(self._least_loaded(await _database_now(db)))
        return chosen or self.worker_id

    async def check_room(self) -> None:
        """Refuse (capacity_full) when every live worker is full, before the caller logs or
        takes anything; `admit` decides, this only spares the common case the work."""
        async with self._db() as db:
            if await db.scalar(self._least_loaded(await _database_now(db), room_only=True)) is None:
                raise capacity_full()

    async def admit(self, db: DbSession) -> str:
        """The least-loaded live worker with room for one more session, chosen as the first
        step of the caller's transaction, which records the session there.

        The choice and the session's insert are one step for every worker on the database: two
        placements at the same moment see each other's sessions, so they never both take a
        worker's last slot. Raises capacity_full when every live worker is full.
        """
        await exclusive(db, PLACEMENT_LOCK)
        chosen = await db.scalar(self._least_loaded(await _database_now(db), room_only=True))
        if chosen is None:
            raise capacity_full()
        return chosen

    def _least_loaded(self, now: datetime, *, room_only: bool = False) -> Select[str]:
        load = (
            select(CallSession.worker_id, func.count().label("open"))
            .where(CallSession.state.in_(OPEN_STATES))
            .group_by(CallSession.worker_id)
            .subquery()
        )
        open_sessions = func.coalesce(load.c.open, 0)
        room = (Worker.max_sessions == 0) | (open_sessions < Worker.max_sessions)
        return (
            select(Worker.id)
            .outerjoin(load, load.c.worker_id == Worker.id)
            .where(self._live(now) & room if room_only else self._live(now))
            # Random among equals: invitations created at the same moment see the same load.
            .order_by(case((room, 0), else_=1), open_sessions, Worker.peers, func.random())
            .limit(1)
        )

    async def claim(self, session_id: str) -> str | None:
        """Host `session_id` here unless a live worker has it; returns that worker's URL then."""
        async with self._db() as db, db.begin():
            session = await db.get(CallSession, session_id)
            if session is None or session.worker_id == self.worker_id:
                return None
            owner = session.worker
            if (
                owner is not None
                and owner.stopped_at is None
                and owner.heartbeat_at > await _database_now(db) - self._dead_after
                # A worker at our own URL is one this process replaced after a restart.
                and owner.url != self._url
            ):
                return owner.url
            won = await db.execute(
                update(CallSession)
                .where(
                    CallSession.id == session_id,
                    CallSession.worker_id.is_not_distinct_from(session.worker_id),
                )
                .values(worker_id=self.worker_id)
            )
            lost = won.rowcount != 1  # type: ignore[attr-defined]
            if not lost:
                db.add(
                    SessionEvent(
                        session_id=session_id,
                        type="session_moved",
                        detail={"from": owner.id if owner else None, "to": self.worker_id},
                    )
                )
        # Another worker claimed it between our read and our write: it hosts it now.
        return await self.claim(session_id) if lost else None

    def _live(self, now: datetime) -> ColumnElement[bool]:
        """Heartbeating, not stopped, and not a predecessor this process replaced at its URL."""
        return (
            Worker.stopped_at.is_(None)
            & (Worker.heartbeat_at > now - self._dead_after)
            & ((Worker.url != self._url) | (Worker.id == self.worker_id))
        )

    async def _heartbeat(self) -> None:
        while True:
            try:
                async with self._db() as db, db.begin():
                    await db.execute(
                        update(Worker)
                        .where(Worker.id == self.worker_id)
                        .values(
                            heartbeat_at=await _database_now(db),
                            sessions=len(self._rooms),
                            peers=self._rooms.peer_count(),
                        )
                    )
                    self.open_sessions = (
                        await db.scalar(
                            select(func.count()).where(
                                CallSession.worker_id == self.worker_id,
                                CallSession.state.in_(OPEN_STATES),
                            )
                        )
                        or 0
                    )
                await self.recover_dead()
                await self._rooms.reconcile(self.worker_id)
            except Exception:
                # A database hiccup must not kill the heartbeat; the next beat tries again.
                log.exception("worker_heartbeat_failed", worker_id=self.worker_id)
            await asyncio.sleep(self._interval)

    async def recover_dead(self) -> int:
        """Move the open sessions of dead workers to live ones; returns how many moved."""
        async with self._db() as db, db.begin():
            now = await _database_now(db)
            # A subquery, not the ids as parameters: the dead (every worker ever stopped or
            # restarted) only grow, and a statement's parameters are limited.
            dead = select(Worker.id).where(~self._live(now))
            orphans = (
                await db.execute(
                    select(CallSession.id, CallSession.worker_id, CallSession.state).where(
                        CallSession.worker_id.in_(dead), CallSession.state.in_(OPEN_STATES)
                    )
                )
            ).all()
            await db.execute(
                delete(Worker).where(
                    Worker.stopped_at.is_not(None) | (Worker.heartbeat_at < now - FORGET_AFTER),
                    ~exists().where(CallSession.worker_id == Worker.id),
                )
            )
        moved = 0
        for session_id, previous, state in orphans:
            target = await self.place()
            interrupted = state == "active"
            async with self._db() as db, db.begin():
                # Compare-and-set: every live worker recovers the dead at its own heartbeat, and
                # only one of them may move a session (and record that it moved).
                won = await db.execute(
                    update(CallSession)
                    .where(
                        CallSession.id == session_id,
                        CallSession.worker_id == previous,
                        CallSession.state == state,
                    )
                    .values(worker_id=target, state="interrupted" if interrupted else state)
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # another worker got there first
                db.add(
                    SessionEvent(
                        session_id=session_id,
                        type="session_interrupted" if interrupted else "session_moved",
                        detail={"from": previous, "to": target},
                    )
                )
                moved += 1
        if moved:
            log.warning(
                "sessions_recovered_from_dead_workers",
                count=moved,
                workers=sorted({str(previous) for _, previous, _ in orphans}),
            )
        return moved


async def _database_now(db: DbSession) -> datetime:
    """The database server's clock when it has one of its own (PostgreSQL), else this machine's.

    Heartbeats are written and judged by the same clock: workers on machines whose clocks
    disagree by more than a few heartbeats would otherwise take each other for dead and move
    each other's live sessions. SQLite is one machine's file, so its clock is that machine's.
    """
    if db.get_bind().dialect.name == "sqlite":
        return utcnow()
    now: datetime = await db.scalar(select(func.now()))  # type: ignore[assignment]
    return now


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
