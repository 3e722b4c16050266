"""`vteller serve --workers 2`: sessions are spread over workers and survive a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.bot import Bot, dominant
from tests.support.process import ServerProcess
from tests.support.server import ApiClient


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path, workers=2, VTELLER_WORKER_HEARTBEAT_SECONDS="0.5")
    server.create_user("teller1", "teller")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


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
    teller = ApiClient(cluster.url)
    customer_http = ApiClient(cluster.url)
    await teller.login("teller1")
    created = [
        await teller.call("POST", "/api/v1/invitations", {"business": "general"}, expect=201)
        for _ in range(2)
    ]
    ws_urls = [c["session"]["ws_url"] for c in created]
    assert {u.split("/")[2] for u in ws_urls} == {
        cluster.worker_url(0).split("/")[2],
        cluster.worker_url(1).split("/")[2],
    }, ws_urls  # least-loaded placement spreads them

    # A call on the second worker...
    second = cluster.worker_url(1).replace("http", "ws", 1)
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
        os.kill(_worker_pid(tmp_path / "vteller.db", cluster.worker_url(1)), signal.SIGKILL)
        assert (await staff.expect("closed", timeout=10))["code"] != 4410

        # The session is marked interrupted and handed to a live worker; both reconnect there.
        async with asyncio.timeout(30):
            while True:
                detail = await teller.call("GET", f"/api/v1/sessions/{session_id}")
                if "session_interrupted" in [e["type"] for e in detail["events"]]:
                    break
                await asyncio.sleep(0.3)
        new_ws = detail["session"]["ws_url"]
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
