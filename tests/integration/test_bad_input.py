"""Bad input to every route of the real app and to the signaling WebSocket: each gets a 4xx whose
JSON error names the problem (or a signaling `error`), never a 500, and the server and the
session go on.

The routes come from the app's router, so that one added later is swept too. Each route gets a
fresh set of principals, and is driven by the first of them its access checks let through.
"""

from __future__ import annotations

import io
import json
import re
import typing
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from pydantic import BaseModel
from yarl import URL

from server.auth.principal import Role
from server.errors import Rule
from server.signaling.protocol import CLIENT_TYPES, ClientMessage
from server.workflow.queue.config import QueueConfig
from tests.integration.test_http_api import Reply
from tests.integration.test_signaling_errors import Raw, new_session, staff
from tests.integration.test_transactions import purchase
from tests.support import server as support
from tests.support.postgres import database_url
from tests.support.server import ApiClient, RunningServer, running_server

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

# Tried in this order; the first that gets past a route's access checks drives it.
PRINCIPALS = ("customer", "teller", "supervisor", "auditor", "expert", "admin", "queue", "anon")
REFUSED = frozenset({"not_authenticated", "forbidden", "ticket_unknown"})

# A body each JSON route accepts, so that its fields can be spoiled one at a time.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/auth/login": {"username": "nobody", "password": "not-the-password"},
    "/api/v1/admin/users": {
        "username": "newcomer",
        "password": "a-long-enough-password",
        "display_name": "New",
        "role": "teller",
    },
    "/api/v1/invitations": {"business": "wealth", "customer_name": "李女士", "ttl_minutes": 5},
    "/api/v1/sessions/{session_id}/experts": {"username": "expert"},
    "/api/v1/reviews/{review_id}": {"decision": "approved", "note": "watched it"},
    "/api/v1/auditor/search": {
        "date_from": "2020-01-01",
        "teller": "t",
        "customer_name": "c",
        "business": "wealth",
        "product": "p",
        "compliance": "pass",
        "hold": "held",
        "page": 1,
    },
    "/api/v1/auditor/archives/{archive_id}/hold": {"held": True, "reason": "court order"},
    "/api/v1/auditor/sessions/{session_id}/hold": {"held": True, "reason": "court order"},
    "/api/v1/queue/tickets": {"topic": "cards", "elderly": False},
    "/api/v1/queue/ticket/callback": {"phone": "13800138000"},
    "/api/v1/queue/me/status": {"status": "available"},
    "/api/v1/queue/tickets/{ticket_id}/assign": {"teller_id": "u_nobody"},
    "/api/v1/queue/tellers/{user_id}/skills": {"skills": ["wealth"]},
    "/api/v1/staff/accounts/{account_id}/disable": {"reason": "left the bank"},
    "/api/v1/sessions/{session_id}/transactions": purchase(100),
    "/api/v1/transactions/{transaction_id}/override": {"reason": "checked by phone"},
    "/api/v1/transactions/{transaction_id}/reject": {"reason": "wrong amount"},
}

JSON = "application/json"
# (label, body, Content-Type, the error code a JSON route answers)
BAD_BODIES: list[tuple[str, bytes | None, str | None, str]] = [
    ("no body", None, None, "bad_json"),
    ("empty", b"", JSON, "bad_json"),
    ("truncated", b'{"a": ', JSON, "bad_json"),
    ("single quotes", b"{'a': 1}", JSON, "bad_json"),
    ("not UTF-8", b'{"a": "\xff"}', JSON, "bad_json"),
    ("unknown charset", b"{}", f"{JSON}; charset=klingon", "bad_json"),
    ("a form", b"a=1&b=2", "application/x-www-form-urlencoded", "bad_json"),
    ("a PNG", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png", "bad_json"),
    ("nested too deeply", b"[" * 30_000, JSON, "bad_json"),
    ("a 5000-digit number", b'{"a": ' + b"1" * 5000 + b"}", JSON, "bad_json"),
    ("an array", b"[]", JSON, "invalid_request"),
    ("a string", b'"body"', JSON, "invalid_request"),
    ("null", b"null", JSON, "invalid_request"),
    ("NaN", b'{"a": NaN}', JSON, "invalid_request"),
    ("an unknown field", b'{"zzz": 1}', JSON, "invalid_request"),
    ("text/plain", b'{"zzz": 1}', "text/plain", "invalid_request"),
    ("over 64 KiB", b'{"a": "' + b"x" * (65 * 1024) + b'"}', JSON, "payload_too_large"),
]

# Path variables no row can have; `%00` is refused by name before any lookup.
NUL_SEGMENT = "a%00b"
BAD_SEGMENTS = [
    "not-a-uuid",
    "0",
    "-1",
    "99999999999999999999999",
    "x" * 2000,
    "..",
    "%2F",
    "%FF%FE",
    "%ED%A0%80",  # a lone surrogate, UTF-8 encoded
    "%F0%9F%98%80",
    "%20",
    "null",
    "'%20OR%201=1--",
]
ABSURD_QUERIES = [
    "limit=99999999999999999999999",
    "limit=-1",
    "limit=1e3",
    "limit=" + "9" * 5000,
    "state=%00",
    "state=%FF",
    "state=open&state=all",
    "role=admin",
    "page=-1",
    "script=..%2F..%2Fetc%2Fpasswd",
    "script=%00",
    "script=" + "a" * 3000,
    "&".join(f"p{i}=1" for i in range(500)),
]


@pytest.fixture
async def server(tmp_path: Path, database: str) -> AsyncIterator[RunningServer]:
    # Every route's principals include a queue ticket from 127.0.0.1: more than the public
    # queue's per-address limits allow; the signaling part sends over 50 messages a second, and
    # the sweep opens more sessions than a worker carries calls (worker_max_sessions).
    queue = QueueConfig(tickets_per_address=10_000, requests_per_address=100_000)
    async with database_url(database) as url:
        settings = support.test_settings(
            tmp_path,
            database_url=url,
            queue=queue,
            ws_max_messages_per_second=10_000,
            worker_max_sessions=0,
        )
        async with running_server(settings) as running:
            yield running


@dataclass
class Principals:
    clients: dict[str, ApiClient]
    # A value for each path variable that names something these principals may reach.
    path_values: dict[str, str]

    def path(self, canonical: str, **bad: str) -> str:
        values = {name: self.path_values.get(name, "unknown") for name in variables(canonical)}
        return canonical.format(**(values | bad))


def variables(canonical: str) -> list[str]:
    return [part.split("}")[0] for part in canonical.split("{")[1:]]


async def principals(server: RunningServer, n: int) -> Principals:
    clients = {
        role.value: await staff(server, f"{role.value}{n}", role)
        for role in (Role.TELLER, Role.EXPERT, Role.SUPERVISOR, Role.AUDITOR, Role.ADMIN)
    }
    teller = clients["teller"]
    invited = await teller.call("POST", "/api/v1/invitations", {"business": "wealth"}, expect=201)
    session_id = invited["session"]["id"]
    clients["customer"] = server.client()
    await clients["customer"].join_link(invited["invitation_url"])
    expert = {"username": f"expert{n}"}
    await teller.call("POST", f"/api/v1/sessions/{session_id}/experts", expert, expect=201)
    created = await teller.call(
        "POST", f"/api/v1/sessions/{session_id}/transactions", purchase(100), expect=201
    )
    clients["queue"] = server.client()
    ticket = await clients["queue"].call(
        "POST", "/api/v1/queue/tickets", {"topic": "cards"}, expect=201
    )
    clients["queue"].csrf = ticket["csrf_token"]
    clients["anon"] = server.client()
    me = await teller.call("GET", "/api/v1/auth/me")
    return Principals(
        clients,
        {
            "session_id": session_id,
            "transaction_id": created["transaction"]["id"],
            "user_id": me["user"]["id"],
            "account_id": me["user"]["id"],
            "token": invited["invitation_url"].rsplit("/", 1)[1],
        },
    )


async def request(
    client: ApiClient,
    method: str,
    path: str,
    data: bytes | None = None,
    content_type: str | None = None,
) -> Reply:
    """`path` sent as it is written (its escapes included), with the client's CSRF token."""
    headers = {"X-CSRF-Token": client.csrf} if client.csrf else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    url = URL(client.base + path, encoded=True)
    async with client.http.request(method, url, data=data, headers=headers) as response:
        try:
            parsed = await response.json(content_type=None)
        except ValueError:
            parsed = await response.text(errors="replace")
        return Reply(response.status, parsed, response.headers)


def as_json(body: Any) -> bytes:
    return json.dumps(body).encode()


def explained(reply: Reply, path: str, what: str = "") -> Reply:
    """No server error; an API's refusal is the documented JSON error with a message."""
    what = what or path
    assert reply.status < 500, (what, reply.status, reply.body)
    if reply.status >= 400 and path.startswith("/api/"):
        assert isinstance(reply.body, dict), (what, reply.status, reply.body)
        error = reply.body.get("error")
        assert isinstance(error, dict) and isinstance(error.get("code"), str), (what, reply.body)
        assert isinstance(error.get("message"), str) and error["message"], (what, reply.body)
        named(error, what)
    return reply


def named(error: dict[str, Any], what: str) -> None:
    """A refused field is named, with a rule of the closed set (docs/protocol.md)."""
    if error["code"] == "invalid_request":
        assert isinstance(error.get("field"), str) and error["field"], (what, error)
        assert error.get("rule") in {rule.value for rule in Rule}, (what, error)


def refused(reply: Reply, status: int, code: str, what: str) -> str:
    """The refusal expected, in the documented JSON error shape; its message."""
    assert (reply.status, reply.code) == (status, code), (what, reply.status, reply.body)
    message = reply.body["error"]["message"]
    assert isinstance(message, str) and message, (what, reply.body)
    named(reply.body["error"], what)
    return message


def leaves(value: Any, where: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every scalar and array of a JSON body, with its location."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaves(child, (*where, key))
    else:
        yield where, value


def replaced(body: Any, where: tuple[str, ...], value: Any) -> Any:
    if not where:
        return value
    return body | {where[0]: replaced(body[where[0]], where[1:], value)}


def wrong_types(value: Any) -> list[Any]:
    """Values of another JSON type than `value`'s (or holding NUL), which the field must refuse."""
    if isinstance(value, list):
        return [{"nested": [1]}, "text"]
    wrong: list[Any] = [{"nested": [1]}, ["list"]]
    if isinstance(value, bool):
        wrong += ["true", 1]
    elif isinstance(value, int):
        wrong += ["1", 1.5, True]
    elif isinstance(value, str):
        wrong += [value + "\x00"]
    return wrong


def routes(server: RunningServer) -> list[tuple[str, str]]:
    """(method, path template) of every route; a static directory's files as `{filename}`."""
    found = set()
    for route in server.app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        canonical = route.resource.canonical
        if isinstance(route.resource, web.StaticResource):
            canonical += "/{filename}"
        found.add((route.method, canonical))
    return sorted(found)


async def sweep_route(server: RunningServer, n: int, method: str, canonical: str) -> str | None:
    """Send the route its bad input; what body it reads ("json", "upload") or None."""
    world = await principals(server, n)
    path = world.path(canonical)
    post = method == "POST"
    first = (b"{", JSON) if post else (None, None)
    for name in PRINCIPALS:
        client = world.clients[name]
        reply = explained(await request(client, method, path, *first), path, f"{method} {path}")
        if reply.code not in REFUSED:
            break
    else:
        raise AssertionError(f"no principal gets past the access checks of {method} {canonical}")
    reads = {"bad_json": "json", "signature_not_png": "upload"}.get(reply.code or "")
    valid = VALID_BODIES.get(canonical) if post else None
    assert (reads == "json") == (valid is not None), (canonical, name, reply.status, reply.body)

    if post:
        for label, data, content_type, code in BAD_BODIES:
            what = f"{method} {path} with {label} as {name}"
            reply = explained(await request(client, method, path, data, content_type), path, what)
            if reads == "json":
                refused(reply, 413 if code == "payload_too_large" else 400, code, what)
    if valid is not None:
        await _spoil_fields(client, method, path, valid, name)
    if reads == "upload":
        await _bad_uploads(client, method, path)

    data = as_json(valid) if valid is not None else None
    for variable in variables(canonical):
        bad_path = world.path(canonical, **{variable: NUL_SEGMENT})
        reply = await request(client, method, bad_path, data, JSON)
        message = refused(reply, 400, "invalid_request", f"{method} {bad_path}")
        assert message.startswith(f"{variable}: ") and "NUL" in message, (bad_path, message)
        assert (reply.body["error"]["field"], reply.body["error"]["rule"]) == (variable, "format")
        for segment in BAD_SEGMENTS:
            bad_path = world.path(canonical, **{variable: segment})
            reply = await request(client, method, bad_path, data, JSON)
            explained(reply, bad_path, f"{method} {bad_path} as {name}")
    if not post:
        for query in ABSURD_QUERIES:
            reply = await request(client, method, f"{path}?{query}")
            explained(reply, path, f"{method} {path}?{query} as {name}")
    return reads


async def _spoil_fields(
    client: ApiClient, method: str, path: str, valid: dict[str, Any], name: str
) -> None:
    """Each field of an accepted body in turn of a wrong type, or holding NUL: refused by name."""
    for where, value in leaves(valid):
        for wrong in wrong_types(value):
            body = replaced(valid, where, wrong)
            what = f"{method} {path} with {'.'.join(where)}={wrong!r} as {name}"
            reply = await request(client, method, path, as_json(body), JSON)
            message = refused(reply, 400, "invalid_request", what)
            # The field, or the object holding it (a union names its member too:
            # transaction.purchase.amount.minor; a wrong `kind` fails the whole transaction).
            field = message.split(": ", 1)[0].split(".")
            assert field[0] == where[0] and field[-1] in where, (what, message)
            # `field` is where the body has it (no member name; the tag `kind` itself).
            assert reply.body["error"]["field"] == ".".join(where), (what, reply.body)


def _image(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 120), "white").save(out, kind)
    return out.getvalue()


async def _bad_uploads(client: ApiClient, method: str, path: str) -> None:
    png = _image("PNG")
    uploads = [
        (_image("JPEG"), "image/png"),
        (_image("GIF"), "image/png"),
        (png[:40], "image/png"),
        (b"", "image/png"),
        (b"<svg/>", "image/png"),
        (png, "image/jpeg"),
        (png, None),
        (b"\x89PNG" + bytes(3 * 1024 * 1024), "image/png"),
    ]
    for data, content_type in uploads:
        what = f"{method} {path} with {len(data)} bytes as {content_type}"
        reply = explained(await request(client, method, path, data, content_type), path, what)
        assert 400 <= reply.status < 500, (what, reply.status, reply.body)


async def test_every_route_refuses_bad_input_by_name(server: RunningServer) -> None:
    found = routes(server)
    api = [(method, canonical) for method, canonical in found if canonical.startswith("/api/")]
    reading: dict[str, set[str]] = {"json": set(), "upload": set()}
    for n, (method, canonical) in enumerate(api):
        reads = await sweep_route(server, n, method, canonical)
        if reads is not None:
            reading[reads].add(canonical)
    # Every body route was reached past its access checks, and no sample body is left over.
    assert reading["json"] == set(VALID_BODIES)
    assert reading["upload"] == {"/api/v1/transactions/{transaction_id}/signature"}

    # Pages, signaling and static files: no server error, and no NUL in a path variable.
    anon = server.client()
    for method, canonical in found:
        if canonical.startswith("/api/") or "{" not in canonical:
            continue
        (variable,) = variables(canonical)
        path = canonical.replace(f"{{{variable}}}", NUL_SEGMENT)
        message = refused(await request(anon, method, path), 400, "invalid_request", path)
        assert message.startswith(f"{variable}: "), message
        for segment in BAD_SEGMENTS:
            bad_path = canonical.replace(f"{{{variable}}}", segment)
            explained(await request(anon, method, bad_path), bad_path, f"{method} {bad_path}")
    health = await request(anon, "GET", "/healthz")
    assert (health.status, health.body["status"]) == (200, "ok")


# -- signaling -------------------------------------------------------------------------------


def message_models() -> dict[str, type[BaseModel]]:
    """Each client message type's model, from the protocol's own union."""
    union = typing.get_args(typing.get_args(ClientMessage)[0])
    models = {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in union}
    assert set(models) == set(CLIENT_TYPES)
    return models


def malformed_messages() -> Iterator[tuple[dict[str, Any], str | None]]:
    """Messages of every type that must not validate, and the field each names: an unknown field;
    each field of a wrong type, the others left out (a missing one may be named first)."""
    for message_type, model in message_models().items():
        fields = [name for name in model.model_fields if name not in ("v", "type")]
        required = any(model.model_fields[name].is_required() for name in fields)
        yield {"type": message_type, "zzz": 1}, None if required else "zzz"
        for field in fields:
            yield {"type": message_type, field: {"nested": [1]}}, None


async def answered(raw: Raw) -> None:
    """The connection still serves: a ping gets its pong (other pushes are skipped)."""
    await raw.send(type="ping")
    await raw.expect("pong")


async def refused_frame(raw: Raw, code: str, ref: str | None = None) -> str:
    error = await raw.expect("error")
    assert (error["code"], error["ref"]) == (code, ref), error
    assert isinstance(error["message"], str) and error["message"], error
    await answered(raw)
    message: str = error["message"]
    return message


async def test_signaling_refuses_bad_messages_and_the_session_goes_on(
    server: RunningServer,
) -> None:
    teller_http = await staff(server, "teller1")
    session_id, customer_http = await new_session(server, teller_http)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    try:
        joined: list[Raw] = []
        for client in (teller_http, customer_http):
            ws = await client.http.ws_connect(client.ws_url(session_id))
            sockets.append(ws)
            raw = Raw(ws)
            # Before the join: everything but join (and ping) is out of order.
            await raw.send(type="chat", text="too early")
            await refused_frame(raw, "out_of_order", "chat")
            await raw.send(type="join")
            await raw.expect("joined")
            joined.append(raw)
        customer = joined[1]
        for raw in joined:
            for frame in ("{oops", "", "[]", "null", '"join"', "[" * 30_000):
                await raw.ws.send_str(frame)
                await refused_frame(raw, "bad_json")
            await raw.ws.send_bytes(b'{"v": 1, "type": "ping"}')
            await refused_frame(raw, "bad_json")
            await raw.send(type="chat", text="x" * (65 * 1024))
            await refused_frame(raw, "message_too_large")
            await raw.send(type="warp")
            assert "warp" in await refused_frame(raw, "invalid_message", "warp")
            for message, field in malformed_messages():
                await raw.send(**message)
                named = await refused_frame(raw, "invalid_message", message["type"])
                assert re.match(rf"{field or '[a-z_.]+'}: .", named), (message, named)
            with_nul: list[tuple[dict[str, Any], str]] = [
                ({"type": "chat", "text": "a\x00b"}, "text"),
                ({"type": "answer", "sdp": "v=0\r\n\x00"}, "sdp"),
                ({"type": "identity_manual", "decision": "pass", "reason": "seen\x00"}, "reason"),
                ({"type": "recording_start", "values": {"product": "\x00"}}, "values.product"),
            ]
            for message, named_field in with_nul:
                await raw.send(**message)
                named = await refused_frame(raw, "invalid_message", message["type"])
                assert named.startswith(f"{named_field}: ") and "NUL" in named, named
            await raw.send(type="join")
            await refused_frame(raw, "out_of_order", "join")
            await raw.send(type="answer", sdp="this is not sdp")
            await refused_frame(raw, "invalid_sdp", "answer")
            await raw.send(type="identity_upload", side="front", bytes=64 * 1024 * 1024)
            await refused_frame(raw, "message_too_large", "identity_upload")

        # The session works for both: a chat goes round, and only it was stored.
        await customer.send(type="chat", text="还在吗")
        for raw in joined:
            assert (await raw.expect("chat"))["message"]["text"] == "还在吗"
        detail = await teller_http.call("GET", f"/api/v1/sessions/{session_id}")
        assert [m["text"] for m in detail["chat"]] == ["还在吗"]
        assert detail["session"]["state"] != "ended"
        assert all(p["state"] == "connected" for p in detail["session"]["participants"])
        health = await request(server.client(), "GET", "/healthz")
        assert (health.status, health.body["status"]) == (200, "ok")
    finally:
        for ws in sockets:
            await ws.close()
