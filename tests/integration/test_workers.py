"""Sessions are spread over workers and survive a killed worker: `vteller serve --workers 2` on
one machine (SQLite), and two machines sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.bot import Bot, dominant
from tests.support.postgres import fresh_database
from tests.support.process import ServerProcess, healthy
from tests.support.server import ApiClient

HEARTBEAT = "0.5"  # seconds: a dead worker's sessions move within a few of them


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path, workers=2, VTELLER_WORKER_HEARTBEAT_SECONDS=HEARTBEAT)
    server.create_user("teller1", "teller")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def machines(tmp_path: Path) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two one-worker 'machines': own data directories, one PostgreSQL database, and the keys
    the second was given from the first (docs/deployment.md)."""
    async with fresh_database() as url:
        first = ServerProcess(
            tmp_path / "a", database_url=url, VTELLER_WORKER_HEARTBEAT_SECONDS=HEARTBEAT
        )
        # Browsers know one address (the bank's load balancer: here the first machine's).
        second = ServerProcess(
            tmp_path / "b",
            database_url=url,
            VTELLER_PUBLIC_URL=first.url,
            VTELLER_WORKER_HEARTBEAT_SECONDS=HEARTBEAT,
        )
        first.create_user("teller1", "teller")
        try:
            await first.start()
            shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
            await second.start()
            yield first, second
        finally:
            second.stop()
            first.stop()


async def test_a_machine_without_the_deployments_keys_refuses_to_start(tmp_path: Path) -> None:
    async with fresh_database() as url:
        first = ServerProcess(tmp_path / "a", database_url=url)
        await first.start()
        try:
            # Keys not copied: the new machine generates its own at its first start.
            second = ServerProcess(tmp_path / "b", database_url=url, workers=2)
            status, stderr = await second.exit_status()
        finally:
            first.stop()
    assert status == 78, stderr  # EX_CONFIG: the supervisor stops rather than restart it
    assert "keys in" in stderr and "are not the deployment's" in stderr, stderr
    assert "keyring.json key kek-" in stderr and "copy the keys directory from" in stderr
    # Each of the two workers at most once: none is started again.
    assert 1 <= stderr.count("are not the deployment's") <= 2, stderr


async def test_a_worker_at_a_live_workers_url_refuses_to_start(tmp_path: Path) -> None:
    async with fresh_database() as url:
        first = ServerProcess(tmp_path / "a", database_url=url)
        await first.start()
        try:
            shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
            # A second machine left on the first one's address: it would take the first one
            # for a predecessor it replaces, and take its sessions.
            second = ServerProcess(
                tmp_path / "b", database_url=url, VTELLER_ADVERTISE_URL=first.url
            )
            status, stderr = await second.exit_status()
            await healthy(first.url, timeout=5)  # the first one is left alone
        finally:
            first.stop()
    assert status == 78, stderr
    assert (
        f"is registered at {first.url}: give every worker its own VTELLER_ADVERTISE_URL" in stderr
    )


def _worker_pid(database: Path, url: str) -> int:
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT pid FROM workers WHERE url = ? AND stopped_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1",
            (url,),
        ).fetchone()
    return int(row[0])


async def test_sessions_are_placed_on_both_workers_and_move_when_one_dies(
    cluster: ServerProcess, tmp_path: Path
) -> None:
    await _placed_on_both_then_moved(
        cluster.url,
        (cluster.worker_url(0), cluster.worker_url(1)),
        lambda: os.kill(
            _worker_pid(tmp_path / "vteller.db", cluster.worker_url(1)), signal.SIGKILL
        ),
    )


async def test_a_session_ended_through_another_worker_ends_where_it_is_hosted(
    cluster: ServerProcess,
) -> None:
    """The teller's page falls back to HTTP to end a call while its WebSocket is down, and the
    load balancer may send that request to any worker: the hosting worker must still end the
    call, not leave the customer connected with the recording running."""
    teller = ApiClient(cluster.worker_url(0))
    customer_http = ApiClient(cluster.url)
    await teller.login("teller1")
    created = await teller.call("POST", "/api/v1/invitations", {"business": "general"}, expect=201)
    ws_url = created["session"]["ws_url"]
    session_id = created["session"]["id"]
    hosting = next(
        i for i in (0, 1) if ws_url.startswith(cluster.worker_url(i).replace("http", "ws", 1))
    )
    other = ApiClient(cluster.worker_url(1 - hosting))
    await customer_http.join_link(created["invitation_url"])
    staff = Bot(teller, session_id, colour="blue", ws_url=ws_url)
    customer = Bot(customer_http, session_id, colour="red", ws_url=ws_url)
    try:
        await staff.join()
        await customer.join()
        await staff.wait_for_media(customer.participant_id, "camera")
        await other.login("teller1")
        await other.call("POST", f"/api/v1/sessions/{session_id}/end", {})
        ended = await customer.expect("session_ended", timeout=10)
        assert ended["reason"] == "ended_by_participant"
        assert (await customer.expect("closed", timeout=10))["code"] == 4410
        detail = await teller.call("GET", f"/api/v1/sessions/{session_id}")
        assert detail["session"]["state"] == "ended"
        assert [e["type"] for e in detail["events"]].count("session_ended") == 1
    finally:
        await staff.close()
        await customer.close()
        await teller.close()
        await other.close()
        await customer_http.close()


async def test_a_worker_thought_dead_gives_up_the_sessions_taken_over(
    cluster: ServerProcess, tmp_path: Path
) -> None:
    """A worker that stalls (paused, swapping) past the dead-after time has its sessions moved
    to a live worker; when it comes back it must not go on hosting them beside the new host
    (a call split over two workers, two recordings): it closes them, and clients reconnect."""
    teller = ApiClient(cluster.url)
    customer_http = ApiClient(cluster.url)
    await teller.login("teller1")
    second = cluster.worker_url(1).replace("http", "ws", 1)
    for _ in range(4):  # placement spreads invitations: find one on the second worker
        created = await teller.call(
            "POST", "/api/v1/invitations", {"business": "general"}, expect=201
        )
        if created["session"]["ws_url"].startswith(second):
            break
    else:
        pytest.fail("no session was placed on the second worker")
    session_id = created["session"]["id"]
    await customer_http.join_link(created["invitation_url"])
    staff = Bot(teller, session_id, colour="blue", ws_url=created["session"]["ws_url"])
    customer = Bot(customer_http, session_id, colour="red", ws_url=created["session"]["ws_url"])
    pid = _worker_pid(tmp_path / "vteller.db", cluster.worker_url(1))
    try:
        await staff.join()
        await customer.join()
        await staff.wait_for_media(customer.participant_id, "camera")
        os.kill(pid, signal.SIGSTOP)
        try:
            detail = await _interrupted(teller, session_id)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert detail["session"]["ws_url"].startswith(
            cluster.worker_url(0).replace("http", "ws", 1)
        )
        # Back from its stall, the second worker closes its stale room: "reconnect".
        assert (await staff.expect("closed", timeout=15))["code"] == 1012
        assert (await customer.expect("closed", timeout=15))["code"] == 1012
    finally:
        await staff.close()
        await customer.close()
        await teller.close()
        await customer_http.close()


async def test_two_machines_share_postgresql_and_take_over_a_dead_machines_sessions(
    machines: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = machines
    await _placed_on_both_then_moved(first.url, (first.url, second.url), second.kill)


async def _interrupted(teller: ApiClient, session_id: str) -> Any:
    """The session's detail once it is marked interrupted (its worker taken for dead)."""
    async with asyncio.timeout(30):
        while True:
            detail = await teller.call("GET", f"/api/v1/sessions/{session_id}")
            if "session_interrupted" in [e["type"] for e in detail["events"]]:
                return detail
            await asyncio.sleep(0.3)


async def _placed_on_both_then_moved(
    public_url: str, worker_urls: tuple[str, str], kill_second: Callable[[], None]
) -> None:
    """Two invitations land on both workers; the second worker is killed during a call; the
    session is marked interrupted on the first, and both participants reconnect there."""
    teller = ApiClient(public_url)
    customer_http = ApiClient(public_url)
    await teller.login("teller1")
    created = [
        await teller.call("POST", "/api/v1/invitations", {"business": "general"}, expect=201)
        for _ in range(2)
    ]
    ws_urls = [c["session"]["ws_url"] for c in created]
    assert {u.split("/")[2] for u in ws_urls} == {u.split("/")[2] for u in worker_urls}, (
        ws_urls
    )  # least-loaded placement spreads them

    # A call on the second worker...
    second = worker_urls[1].replace("http", "ws", 1)
    target = next(c for c in created if c["session"]["ws_url"].startswith(second))
    session_id = target["session"]["id"]
    await customer_http.join_link(target["invitation_url"])
    staff = Bot(teller, session_id, colour="blue", ws_url=target["session"]["ws_url"])
    customer = Bot(customer_http, session_id, colour="red", ws_url=target["session"]["ws_url"])
    try:
        await staff.join()
        await customer.join()
        await staff.wait_for_media(customer.participant_id, "camera")

        # ...whose worker is killed.
        kill_second()
        assert (await staff.expect("closed", timeout=10))["code"] != 4410

        # The session is marked interrupted and handed to a live worker; both reconnect there.
        detail = await _interrupted(teller, session_id)
        new_ws = detail["session"]["ws_url"]
        assert new_ws.startswith(worker_urls[0].replace("http", "ws", 1)), new_ws
        await staff.close()
        await customer.close()
        staff = Bot(teller, session_id, colour="blue", ws_url=new_ws)
        customer = Bot(customer_http, session_id, colour="red", ws_url=new_ws)
        await staff.join()
        await customer.join()
        got = await staff.wait_for_media(customer.participant_id, "camera")
        assert got.last_rgb and dominant(got.last_rgb) == "red"
        seen = await customer.wait_for_media(staff.participant_id, "camera")
        assert seen.last_rgb and dominant(seen.last_rgb) == "blue"
    finally:
        await staff.close()
        await customer.close()
        await teller.close()
        await customer_http.close()
