"""A core bank's webhook receiver on loopback, checking requests with docs/webhooks.md's code."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.media import free_port
from recorder.seal.signing import load_public_keys
from server.workflow.webhooks.delivery import WebhookDeliveries

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def documented_verifier() -> dict[str, Any]:
    """The namespace of the receiver-side Python in docs/webhooks.md: verify_webhook and more."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text("utf-8"), flags=re.DOTALL)
    (code,) = [block for block in blocks if "def verify_webhook" in block]
    namespace: dict[str, Any] = {"__name__": "webhook_receiver_doc"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    envelope: dict[str, Any]


@dataclass
class Receiver:
    """Answers each request with the next of `answers` (then `otherwise`), after verifying it.

    `hold` makes the receiver take requests and not answer them until it is set.
    """

    port: int
    answers: list[int] = field(default_factory=list)
    otherwise: int = 200
    secret: str = ""
    keys_dir: Path | None = None
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    hold: asyncio.Event | None = None
    tls: ssl.SSLContext | None = None
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _verify: Callable[..., dict[str, Any]] = field(
        default_factory=lambda: documented_verifier()["verify_webhook"]
    )

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/core-bank/hook"

    def for_transaction(self, transaction_id: str) -> list[Received]:
        return [r for r in self.received if r.envelope["transaction_id"] == transaction_id]

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            keys = load_public_keys(self.keys_dir) if self.keys_dir else None
            envelope = self._verify(self.secret, request.headers, body, public_keys=keys)
        except Exception as exc:
            self.rejected.append(f"{type(exc).__name__}: {exc}")
            return web.Response(status=401, text="signature check failed")
        async with self.arrived:
            self.received.append(Received(dict(request.headers), body, envelope))
            self.arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else self.otherwise
        return web.Response(status=status, text=json.dumps({"status": status}))


@asynccontextmanager
async def running_receiver(port: int | None = None, **options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(port or free_port(), **options)
    app = web.Application()
    app.router.add_post("/core-bank/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port, ssl_context=receiver.tls).start()
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        await runner.cleanup()


async def delivery_settled(
    webhooks: WebhookDeliveries,
    transaction_id: str,
    states: tuple[str, ...],
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The delivery's status once it is in one of `states` (waits; never judges how long)."""
    async with asyncio.timeout(timeout):
        while True:
            status = await webhooks.status(transaction_id)
            if status is not None and status["state"] in states:
                return status
            await asyncio.sleep(0.05)
