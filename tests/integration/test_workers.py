"""`vteller serve --workers 2`: sessions are spread over workers and survive a killed worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.bot import Bot, dominant
from tests.support.server import PASSWORD, ApiClient, free_port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    base = free_port()
    while True:  # the second worker takes the next port
        try:
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            base = free_port()
    env = dict(os.environ) | {
        "VTELLER_DATA_DIR": str(tmp_path),
        "VTELLER_ICE_HOST_ADDRESSES": json.dumps(["127.0.0.1"]),
        "VTELLER_WORKER_HEARTBEAT_SECONDS": "0.5",
        "VTELLER_LOG_LEVEL": "WARNING",
    }
    for user, role in (("teller1", "teller"),):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "server",
                "admin",
                "create-user",
                "--username",
                user,
                "--role",
                role,
                "--password-stdin",
            ],
            input=PASSWORD.encode(),
            env=env,
            check=True,
            capture_output=True,
        )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--workers", "2", "--port", str(base)], env=env
    )
    try:
        yield f"http://127.0.0.1:{base}", tmp_path / "vteller.db", env
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=20)
        except subprocess.TimeoutExpired:
            supervisor.kill()


async def _healthy(url: str) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def _worker_pid(database: Path, url: str) -> int:
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT pid FROM workers WHERE url = ? AND stopped_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1",
            (url,),
        ).fetchone()
    return int(row[0])


@pytest.fixture
async def teller(cluster: tuple[str, Path, dict[str, str]]) -> AsyncIterator[ApiClient]:
    url = cluster[0]
    first, second = url, url.rsplit(":", 1)[0] + f":{int(url.rsplit(':', 1)[1]) + 1}"
    await _healthy(first)
    await _healthy(second)
    client = ApiClient(url)
    await client.login("teller1")
    yield client
    await client.close()


async def test_sessions_are_placed_on_both_workers_and_move_when_one_dies(
    cluster: tuple[str, Path, dict[str, str]], teller: ApiClient
) -> None:
    url, database, _ = cluster
    created = [
        await teller.call("POST", "/api/v1/invitations", {"business": "general"}, expect=201)
        for _ in range(2)
    ]
    ws_urls = [c["session"]["ws_url"] for c in created]
    ports = {u.split("/")[2] for u in ws_urls}
    assert len(ports) == 2, ws_urls  # least-loaded placement spreads them

    # A call on the second worker...
    target = next(
        c for c in created if ":" + str(int(url.rsplit(":", 1)[1]) + 1) in c["session"]["ws_url"]
    )
    session_id = target["session"]["id"]
    customer_http = ApiClient(url)
    await customer_http.join_link(target["invitation_url"])
    staff = Bot(teller, session_id, colour="blue", ws_url=target["session"]["ws_url"])
    customer = Bot(customer_http, session_id, colour="red", ws_url=target["session"]["ws_url"])
    try:
        await staff.join()
        await customer.join()
        await staff.wait_for_media(customer.participant_id, "camera")

        # ...whose worker is killed.
        worker_url = target["session"]["ws_url"].split("/ws/")[0].replace("ws", "http", 1)
        os.kill(_worker_pid(database, worker_url), signal.SIGKILL)
        assert (await staff.expect("closed", timeout=10))["code"] != 4410

        # The session is marked interrupted and handed to a live worker; both reconnect there.
        async with asyncio.timeout(30):
            while True:
                detail = await teller.call("GET", f"/api/v1/sessions/{session_id}")
                events = [e["type"] for e in detail["events"]]
                if "session_interrupted" in events:
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
        await customer_http.close()
