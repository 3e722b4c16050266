"""The HTTP API of docs/protocol.md section 1, against a real server with its own database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import create_async_engine
from yarl import URL

from server import __version__
from server.auth.principal import Role
from server.auth.service import CUSTOMER_COOKIE, DEVICE_COOKIE, STAFF_COOKIE
from server.db.engine import session_factory
from server.db.models import AuditEntry, Invitation, User, utcnow
from tests.support import server as support
from tests.support.server import PASSWORD, ApiClient, RunningServer, running_server

EVIL = "https://evil.example"


pytestmark = pytest.mark.usefixtures("cheap_password_hashing")


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error["code"] if error else None

    def set_cookies(self) -> dict[str, Any]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.getall("Set-Cookie", []):
            jar.load(header)
        return dict(jar)


async def send(
    client: ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    csrf: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | str | None = None,
) -> Reply:
    """A request with exactly the CSRF token given (none by default), unlike ApiClient.call."""
    sent = dict(headers or {})
    if csrf is not None:
        sent["X-CSRF-Token"] = csrf
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    async with client.http.request(
        method, client.base + path, json=body, data=data, headers=sent
    ) as response:
        try:
            parsed = await response.json(content_type=None)
        except ValueError:
            parsed = await response.text()
        return Reply(response.status, parsed, response.headers)


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert reply.body["error"]["code"] == code
    assert isinstance(reply.body["error"]["message"], str) and reply.body["error"]["message"]
    assert set(reply.body) == {"error"}


async def staff(server: RunningServer, username: str, role: Role = Role.TELLER) -> ApiClient:
    await server.user(username, role, f"{username} name")
    client = server.client()
    await client.login(username)
    return client


async def invite(teller: ApiClient, **fields: Any) -> dict[str, Any]:
    body = {"business": "wealth", "customer_name": "李女士"} | fields
    created: dict[str, Any] = await teller.call("POST", "/api/v1/invitations", body, expect=201)
    return created


def token_of(created: dict[str, Any]) -> str:
    url: str = created["invitation_url"]
    return url.rsplit("/", 1)[1]


async def customer_of(server: RunningServer, created: dict[str, Any]) -> ApiClient:
    customer = server.client()
    await customer.join_link(created["invitation_url"])
    return customer


async def user_exists(server: RunningServer, username: str) -> bool:
    async with server.services.engine.connect() as connection:
        found = await connection.scalar(select(User.id).where(User.username == username))
    return found is not None


async def expire(server: RunningServer, session_id: str) -> None:
    """Move the session's invitation expiry into the past, as if its TTL had run out."""
    async with server.services.engine.begin() as connection:
        await connection.execute(
            update(Invitation)
            .where(Invitation.session_id == session_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


# -- health and error shape ------------------------------------------------------------------


async def test_healthz_tells_load_balancers_the_state_and_nobody_the_version(
    server: RunningServer,
) -> None:
    reply = await send(server.client(), "GET", "/healthz")
    assert reply.status == 200
    assert reply.body == {"status": "ok", "database": "ok"}
    # The version is for the operator's monitoring, behind the scrape token.
    token = (server.settings.data_dir / "metrics.token").read_text().strip()
    http = server.client().http
    async with http.get(server.url + "/metrics") as anonymous:
        assert anonymous.status == 401 and __version__ not in await anonymous.text()
    async with http.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    ) as scraped:
        assert f'vteller_build_info{{version="{__version__}"}} 1.0' in await scraped.text()


async def test_healthz_reports_a_dead_database(server: RunningServer, tmp_path: Any) -> None:
    broken = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    real, server.services.engine = server.services.engine, broken
    try:
        reply = await send(server.client(), "GET", "/healthz")
    finally:
        server.services.engine = real
        await broken.dispose()
    assert reply.status == 503
    assert reply.body["status"] == "degraded"
    assert reply.body["database"] == "unavailable"  # the driver's exception only in the log


async def test_unknown_api_route_has_the_error_shape(server: RunningServer) -> None:
    assert_error(await send(server.client(), "GET", "/api/v1/nothing-here"), 404, "not_found")
    assert_error(
        await send(server.client(), "PUT", "/api/v1/auth/login"), 405, "method_not_allowed"
    )


# -- login, cookies, logout ------------------------------------------------------------------


async def test_login_sets_an_httponly_strict_cookie(server: RunningServer) -> None:
    user_id = await server.user("teller1", Role.TELLER, "王柜员")
    client = server.client()
    reply = await send(
        client, "POST", "/api/v1/auth/login", {"username": "teller1", "password": PASSWORD}
    )
    assert reply.status == 200
    assert reply.body["user"] == {
        "id": user_id,
        "username": "teller1",
        "display_name": "王柜员",
        "role": "teller",
    }
    assert len(reply.body["csrf_token"]) >= 43

    cookies = reply.set_cookies()
    assert set(cookies) == {STAFF_COOKIE, DEVICE_COOKIE}
    # The browser's device cookie: sent to the login only, never readable by scripts.
    device = cookies[DEVICE_COOKIE]
    assert (device["httponly"], device["samesite"], device["path"]) == (
        True,
        "Strict",
        "/api/v1/auth/login",
    )
    assert int(device["max-age"]) == 90 * 24 * 3600
    assert len(device.value) >= 43 and device.value != cookies[STAFF_COOKIE].value
    cookie = cookies[STAFF_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert not cookie["secure"]  # VTELLER_COOKIE_SECURE is off in the tests
    assert int(cookie["max-age"]) == 10 * 3600
    assert len(cookie.value) >= 43 and cookie.value != reply.body["csrf_token"]
    raw_header = reply.headers.getone("Set-Cookie")
    assert "HttpOnly" in raw_header and "SameSite=Strict" in raw_header

    me = await send(client, "GET", "/api/v1/auth/me")
    assert me.status == 200
    assert me.body == {"user": reply.body["user"], "csrf_token": reply.body["csrf_token"]}


async def test_login_failures_do_not_say_which_part_was_wrong(server: RunningServer) -> None:
    await server.user("teller1", Role.TELLER)
    client = server.client()
    wrong_password = await send(
        client, "POST", "/api/v1/auth/login", {"username": "teller1", "password": "nope-nope-nope"}
    )
    unknown_user = await send(
        client, "POST", "/api/v1/auth/login", {"username": "nobody", "password": PASSWORD}
    )
    assert_error(wrong_password, 401, "invalid_credentials")
    assert_error(unknown_user, 401, "invalid_credentials")
    assert wrong_password.body == unknown_user.body
    assert not wrong_password.set_cookies() and not unknown_user.set_cookies()
    assert_error(await send(client, "GET", "/api/v1/auth/me"), 401, "not_authenticated")


async def test_login_is_throttled_after_five_failures(server: RunningServer) -> None:
    await server.user("teller1", Role.TELLER)
    await server.user("teller2", Role.TELLER)
    client = server.client()
    wrong = {"username": "teller1", "password": "wrong-password-123"}
    for _ in range(5):
        assert_error(
            await send(client, "POST", "/api/v1/auth/login", wrong), 401, "invalid_credentials"
        )

    # Now even the right password is refused, with a Retry-After within the 15-minute window.
    right = {"username": "teller1", "password": PASSWORD}
    limited = await send(client, "POST", "/api/v1/auth/login", right)
    assert_error(limited, 429, "rate_limited")
    retry_after = int(limited.headers["Retry-After"])
    assert 0 < retry_after <= 900
    assert str(retry_after) in limited.body["error"]["message"]
    assert not limited.set_cookies()
    # Case does not get around it.
    upper = await send(client, "POST", "/api/v1/auth/login", right | {"username": "TELLER1"})
    assert_error(upper, 429, "rate_limited")
    # The per-address limit (20) is not reached: another account still logs in from here.
    other = await send(
        client, "POST", "/api/v1/auth/login", {"username": "teller2", "password": PASSWORD}
    )
    assert other.status == 200


async def test_cookies_are_secure_when_the_public_url_is_https(tmp_path: Path) -> None:
    """Browsers reach an https:// public URL through TLS: the credentials must never be sent
    over plain HTTP, even where cookie_secure was forgotten."""
    settings = support.test_settings(tmp_path, public_url="https://video.bank.example")
    assert not settings.cookie_secure
    async with running_server(settings) as server:
        await server.user("teller1", Role.TELLER)
        # Through the loopback port (no TLS there): the proxy in front is left out.
        loopback = f"http://{settings.host}:{settings.port}"
        client, customer = ApiClient(loopback), ApiClient(loopback)
        server.clients += [client, customer]
        right = {"username": "teller1", "password": PASSWORD}
        login = await send(client, "POST", "/api/v1/auth/login", right)
        assert login.status == 200, login
        # A Secure cookie is not sent over http://, by aiohttp as by browsers: sent by hand.
        staff_cookie = f"{STAFF_COOKIE}={login.set_cookies()[STAFF_COOKIE].value}"
        created = await send(
            client,
            "POST",
            "/api/v1/invitations",
            {"business": "wealth"},
            csrf=login.body["csrf_token"],
            headers={"Cookie": staff_cookie},
        )
        assert created.status == 201, created
        token = created.body["invitation_url"].rsplit("/", 1)[1]
        joined = await send(customer, "POST", f"/api/v1/join/{token}")
        assert joined.status == 200, joined
        cookies = login.set_cookies() | joined.set_cookies()
    assert set(cookies) == {STAFF_COOKIE, DEVICE_COOKIE, CUSTOMER_COOKIE}
    assert all(cookie["secure"] for cookie in cookies.values()), cookies


async def test_guesses_from_elsewhere_never_lock_a_teller_out_of_their_own_browser(
    server: RunningServer,
) -> None:
    """Anyone can send a teller's name with wrong passwords until the account is throttled,
    and go on doing so; the browser the teller logged in with before is throttled apart."""
    await server.user("teller1", Role.TELLER)
    await server.user("teller2", Role.TELLER)
    right = {"username": "teller1", "password": PASSWORD}
    browser = server.client()
    first = await send(browser, "POST", "/api/v1/auth/login", right)
    assert first.status == 200 and DEVICE_COOKIE in first.set_cookies()
    out = await send(browser, "POST", "/api/v1/auth/logout", csrf=first.body["csrf_token"])
    assert out.status == 200  # a logout leaves the device cookie: it is no login

    attacker = server.client()
    wrong = {"username": "teller1", "password": "wrong-password-123"}
    for _ in range(5):
        assert_error(
            await send(attacker, "POST", "/api/v1/auth/login", wrong), 401, "invalid_credentials"
        )
    assert_error(await send(attacker, "POST", "/api/v1/auth/login", right), 429, "rate_limited")
    # Neither a made-up device cookie nor a colleague's (a shared computer) is a way around it.
    forged = server.client()
    forged.http.cookie_jar.update_cookies(
        {DEVICE_COOKIE: "x" * 43}, URL(server.url + "/api/v1/auth/login")
    )
    assert_error(await send(forged, "POST", "/api/v1/auth/login", right), 429, "rate_limited")
    colleague = server.client()
    theirs = {"username": "teller2", "password": PASSWORD}
    assert (await send(colleague, "POST", "/api/v1/auth/login", theirs)).status == 200
    assert_error(await send(colleague, "POST", "/api/v1/auth/login", right), 429, "rate_limited")

    # The teller's own browser still logs in, keeps its device cookie, and is audited so.
    again = await send(browser, "POST", "/api/v1/auth/login", right)
    assert again.status == 200, again
    assert DEVICE_COOKIE not in again.set_cookies()
    async with session_factory(server.services.engine)() as db:
        logins = await db.scalars(
            select(AuditEntry.detail)
            .where(AuditEntry.action == "auth.login", AuditEntry.target == "teller1")
            .order_by(AuditEntry.seq)
        )
        assert list(logins) == [{"device": "new"}, {"device": "known"}]
    # ...without lifting the lock on everyone else.
    assert_error(await send(attacker, "POST", "/api/v1/auth/login", right), 429, "rate_limited")

    # The device's own guesses are limited like the account's.
    for _ in range(5):
        assert_error(
            await send(browser, "POST", "/api/v1/auth/login", wrong), 401, "invalid_credentials"
        )
    assert_error(await send(browser, "POST", "/api/v1/auth/login", right), 429, "rate_limited")


async def test_passwords_are_taken_verbatim(server: RunningServer) -> None:
    """Whitespace is part of a password: `vteller admin create-user` stores it as typed."""
    padded = "  correct horse battery  "
    auth = server.services.auth
    await auth.add_user(await auth.new_user("spacey", padded, "", Role.TELLER))
    client = server.client()
    ok = await send(
        client, "POST", "/api/v1/auth/login", {"username": "spacey", "password": padded}
    )
    assert ok.status == 200, ok
    trimmed = {"username": "spacey", "password": padded.strip()}
    assert_error(
        await send(client, "POST", "/api/v1/auth/login", trimmed), 401, "invalid_credentials"
    )

    admin = await staff(server, "admin1", Role.ADMIN)
    new = {"username": "spacey2", "password": padded, "role": "teller"}
    assert (await send(admin, "POST", "/api/v1/admin/users", new, csrf=admin.csrf)).status == 201
    again = await send(
        client, "POST", "/api/v1/auth/login", {"username": "spacey2", "password": padded}
    )
    assert again.status == 200, again


async def test_logout_revokes_the_cookie_on_the_server(server: RunningServer) -> None:
    client = await staff(server, "teller1")
    token = client.http.cookie_jar.filter_cookies(URL(server.url))[STAFF_COOKIE]
    stolen_value = token.value

    out = await send(client, "POST", "/api/v1/auth/logout", csrf=client.csrf)
    assert out.status == 200 and out.body == {"ok": True}
    cleared = out.set_cookies()[STAFF_COOKIE]
    assert cleared.value == "" and cleared["max-age"] == "0"
    assert_error(await send(client, "GET", "/api/v1/auth/me"), 401, "not_authenticated")

    # A copy of the cookie taken before logout is worthless afterwards.
    async with aiohttp.ClientSession(headers={"Cookie": f"{STAFF_COOKIE}={stolen_value}"}) as http:
        async with http.get(f"{server.url}/api/v1/auth/me") as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "not_authenticated"
        async with http.post(
            f"{server.url}/api/v1/invitations",
            json={"business": "general"},
            headers={"X-CSRF-Token": client.csrf, "Origin": server.url},
        ) as response:
            assert response.status == 401


async def test_logout_needs_a_login(server: RunningServer) -> None:
    assert_error(
        await send(server.client(), "POST", "/api/v1/auth/logout"), 401, "not_authenticated"
    )


# -- CSRF and Origin -------------------------------------------------------------------------


async def test_state_changing_calls_need_the_csrf_token(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    body = {"business": "wealth"}
    for token in (None, "", "forged-token", teller.csrf + "x"):
        reply = await send(teller, "POST", "/api/v1/invitations", body, csrf=token)
        assert_error(reply, 403, "csrf_failed")
    logout = await send(teller, "POST", "/api/v1/auth/logout", csrf="forged-token")
    assert_error(logout, 403, "csrf_failed")
    # Nothing happened: no session was created and the login still works.
    assert (await teller.call("GET", "/api/v1/sessions"))["sessions"] == []
    assert (await send(teller, "GET", "/api/v1/auth/me")).status == 200
    # With the right token it works.
    assert (await send(teller, "POST", "/api/v1/invitations", body, csrf=teller.csrf)).status == 201


async def test_customer_calls_need_the_csrf_token_too(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    created = await invite(teller)
    session_id = created["session"]["id"]
    customer = await customer_of(server, created)
    path = f"/api/v1/sessions/{session_id}/end"
    assert_error(await send(customer, "POST", path), 403, "csrf_failed")
    # A staff member's token is not the customer's.
    assert_error(await send(customer, "POST", path, csrf=teller.csrf), 403, "csrf_failed")
    assert (await teller.call("GET", f"/api/v1/sessions/{session_id}"))["session"]["state"] == (
        "waiting"
    )
    me = await customer.call("GET", "/api/v1/customer/me")
    assert me["csrf_token"] == customer.csrf
    ended = await send(customer, "POST", path, csrf=customer.csrf)
    assert ended.status == 200 and ended.body["session"]["state"] == "ended"


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1", "http://localhost"])
async def test_login_from_another_origin_is_refused(server: RunningServer, origin: str) -> None:
    await server.user("teller1", Role.TELLER)
    client = server.client()
    reply = await send(
        client,
        "POST",
        "/api/v1/auth/login",
        {"username": "teller1", "password": PASSWORD},
        headers={"Origin": origin},
    )
    assert_error(reply, 403, "bad_origin")
    assert not reply.set_cookies()


async def test_login_without_origin_or_with_our_own_is_accepted(server: RunningServer) -> None:
    await server.user("teller1", Role.TELLER)
    credentials = {"username": "teller1", "password": PASSWORD}
    # No Origin header at all (curl, old browsers).
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/api/v1/auth/login", json=credentials) as response,
    ):
        assert response.status == 200
    client = server.client()
    own = await send(
        client, "POST", "/api/v1/auth/login", credentials, headers={"Origin": server.url + "/"}
    )
    assert own.status == 200


async def test_join_from_another_origin_is_refused(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    created = await invite(teller)
    stranger = server.client()
    path = f"/api/v1/join/{token_of(created)}"
    reply = await send(stranger, "POST", path, headers={"Origin": EVIL})
    assert_error(reply, 403, "bad_origin")
    assert not reply.set_cookies()
    # The link was not used up by the refused attempt.
    assert (await send(stranger, "GET", path)).body["status"] == "valid"
    assert (await send(stranger, "POST", path)).status == 200


# -- request bodies --------------------------------------------------------------------------


async def test_malformed_json_is_bad_json(server: RunningServer) -> None:
    client = server.client()
    for data in ('{"username": "a", "password": ', "", "\xff", "{'username': 'a'}"):
        reply = await send(client, "POST", "/api/v1/auth/login", data=data)
        assert_error(reply, 400, "bad_json")
    teller = await staff(server, "teller1")
    reply = await send(teller, "POST", "/api/v1/invitations", data="{business:", csrf=teller.csrf)
    assert_error(reply, 400, "bad_json")


async def test_invalid_utf8_body_is_bad_json(server: RunningServer) -> None:
    reply = await send(server.client(), "POST", "/api/v1/auth/login", data=b'{"username": "\xff"}')
    assert_error(reply, 400, "bad_json")


@pytest.mark.parametrize(
    ("data", "content_type", "why"),
    [
        (b'{"username": "a"}', "application/json; charset=foo", "charset 'foo' is unknown"),
        (b"[" * 30_000, "application/json", "nested too deeply"),
        (b'{"username": ' + b"1" * 5000 + b"}", "application/json", "too many digits"),
    ],
)
async def test_json_python_cannot_read_is_bad_json_not_a_crash(
    server: RunningServer, data: bytes, content_type: str, why: str
) -> None:
    reply = await send(
        server.client(),
        "POST",
        "/api/v1/auth/login",
        data=data,
        headers={"Content-Type": content_type},
    )
    assert_error(reply, 400, "bad_json")
    assert why in reply.body["error"]["message"]


async def _raw_status(server: RunningServer, head: bytes) -> int:
    """The status of a request sent byte for byte: clients refuse to send non-UTF-8 headers."""
    reader, writer = await asyncio.open_connection(server.settings.host, server.settings.port)
    try:
        writer.write(head + b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_undecodable_credentials_are_wrong_ones_not_errors(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    token = next(c.value for c in teller.http.cookie_jar if c.key == STAFF_COOKIE)
    host = f"Host: {server.settings.host}\r\n".encode()
    for cookie in (STAFF_COOKIE, CUSTOMER_COOKIE):
        head = b"GET /api/v1/auth/me HTTP/1.1\r\n" + host + f"Cookie: {cookie}=".encode()
        assert await _raw_status(server, head + b"\xff\xfe\r\n") == 401
    head = (
        b"POST /api/v1/auth/logout HTTP/1.1\r\n"
        + host
        + f"Cookie: {STAFF_COOKIE}={token}\r\n".encode()
        + b"X-CSRF-Token: \xff\xfe\r\n"
    )
    assert await _raw_status(server, head) == 403
    head = b"GET /metrics HTTP/1.1\r\n" + host + b"Authorization: Bearer \xff\r\n"
    assert await _raw_status(server, head) == 401
    await teller.call("GET", "/api/v1/auth/me")  # the CSRF failure did not log the teller out


async def test_ids_no_row_can_have_are_unknown(server: RunningServer) -> None:
    supervisor = await staff(server, "boss", Role.SUPERVISOR)
    decision = {"decision": "approved", "note": "已回看录像"}
    for review_id in ("99999999999999999999999", str(2**63), "0", "-1", "1e3", "١", "9" * 5000):
        reply = await send(
            supervisor, "POST", f"/api/v1/reviews/{review_id}", decision, csrf=supervisor.csrf
        )
        assert_error(reply, 404, "unknown_review")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "business"),
        ({"business": "loans"}, "business"),
        ({"business": "wealth", "ttl_minutes": 0}, "ttl_minutes"),
        ({"business": "wealth", "ttl_minutes": 1441}, "ttl_minutes"),
        ({"business": "wealth", "ttl_minutes": "soon"}, "ttl_minutes"),
        ({"business": "wealth", "customer_name": "名" * 65}, "customer_name"),
        ({"business": "wealth", "vip": True}, "vip"),
        (["wealth"], "body"),
    ],
)
async def test_invitation_schema_violations_name_the_field(
    server: RunningServer, body: Any, field: str
) -> None:
    teller = await staff(server, "teller1")
    reply = await send(teller, "POST", "/api/v1/invitations", body, csrf=teller.csrf)
    assert_error(reply, 400, "invalid_request")
    assert reply.body["error"]["message"].startswith(f"{field}:")


async def test_login_schema_violations_name_the_field(server: RunningServer) -> None:
    client = server.client()
    missing = await send(client, "POST", "/api/v1/auth/login", {"username": "teller1"})
    assert_error(missing, 400, "invalid_request")
    assert missing.body["error"]["message"].startswith("password:")
    long_name = await send(
        client, "POST", "/api/v1/auth/login", {"username": "u" * 65, "password": PASSWORD}
    )
    assert_error(long_name, 400, "invalid_request")
    assert long_name.body["error"]["message"].startswith("username:")


async def test_body_over_64_kib_is_refused(server: RunningServer) -> None:
    big = '{"username": "teller1", "password": "' + "x" * (65 * 1024) + '"}'
    client = server.client()
    assert_error(
        await send(client, "POST", "/api/v1/auth/login", data=big), 413, "payload_too_large"
    )
    teller = await staff(server, "teller1")
    huge_name = '{"business": "wealth", "customer_name": "' + "x" * (70 * 1024) + '"}'
    reply = await send(teller, "POST", "/api/v1/invitations", data=huge_name, csrf=teller.csrf)
    assert_error(reply, 413, "payload_too_large")
    # Just under the limit is parsed (and then fails validation on its merits).
    near = '{"username": "teller1", "password": "' + "x" * (60 * 1024) + '"}'
    assert_error(
        await send(client, "POST", "/api/v1/auth/login", data=near), 400, "invalid_request"
    )


# -- invitations -----------------------------------------------------------------------------


async def test_teller_creates_an_invitation(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    before = utcnow()
    created = await invite(teller, business="insurance", customer_name="张先生")
    session = created["session"]
    assert created["invitation_url"].startswith(f"{server.url}/join/")
    assert len(token_of(created)) >= 43
    assert session["business"] == "insurance" and session["state"] == "waiting"
    assert session["customer_name"] == "张先生"
    assert session["teller"]["username"] == "teller1"
    assert session["ws_url"].endswith(f"/ws/v1/sessions/{session['id']}")
    assert [p["role"] for p in session["participants"]] == ["teller"]
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(minutes=29) < expires - before < timedelta(minutes=31)  # the default TTL

    short = await invite(teller, ttl_minutes=5)
    expires = datetime.fromisoformat(short["expires_at"])
    assert timedelta(minutes=4) < expires - before < timedelta(minutes=6)
    assert token_of(short) != token_of(created)

    # The token is shown only once: the session views do not contain it.
    detail = await teller.call("GET", f"/api/v1/sessions/{session['id']}")
    assert token_of(created) not in str(detail)
    assert [e["type"] for e in detail["events"]] == ["invitation_created"]


@pytest.mark.parametrize("role", [Role.EXPERT, Role.SUPERVISOR, Role.AUDITOR, Role.ADMIN])
async def test_only_tellers_create_invitations(server: RunningServer, role: Role) -> None:
    other = await staff(server, f"{role.value}1", role)
    reply = await send(
        other, "POST", "/api/v1/invitations", {"business": "wealth"}, csrf=other.csrf
    )
    assert_error(reply, 403, "forbidden")


async def test_customers_and_anonymous_cannot_create_invitations(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    customer = await customer_of(server, await invite(teller))
    body = {"business": "wealth"}
    reply = await send(customer, "POST", "/api/v1/invitations", body, csrf=customer.csrf)
    assert_error(reply, 403, "forbidden")
    anonymous = await send(server.client(), "POST", "/api/v1/invitations", body)
    assert_error(anonymous, 401, "not_authenticated")


async def test_link_status_valid_used_unknown_expired(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    await teller.call("GET", "/api/v1/auth/me")
    created = await invite(teller, business="general")
    anyone = server.client()
    path = f"/api/v1/join/{token_of(created)}"

    valid = await send(anyone, "GET", path)
    assert valid.status == 200
    assert valid.body == {"status": "valid", "business": "general", "teller_name": "teller1 name"}
    # Checking does not use the link up.
    assert (await send(anyone, "GET", path)).body["status"] == "valid"

    await customer_of(server, created)
    used = await send(anyone, "GET", path)
    assert used.body == {"status": "used", "business": None, "teller_name": None}

    forged = await send(anyone, "GET", "/api/v1/join/forged-token")
    assert forged.status == 200
    assert forged.body == {"status": "unknown", "business": None, "teller_name": None}

    stale = await invite(teller)
    await expire(server, stale["session"]["id"])
    expired = await send(anyone, "GET", f"/api/v1/join/{token_of(stale)}")
    assert expired.body == {"status": "expired", "business": None, "teller_name": None}


async def test_redeem_a_link(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    created = await invite(teller)
    browser = server.client()
    reply = await send(browser, "POST", f"/api/v1/join/{token_of(created)}")
    assert reply.status == 200
    assert reply.body["session"]["id"] == created["session"]["id"]
    participant = reply.body["participant"]
    assert participant["role"] == "customer" and participant["display_name"] == "李女士"
    assert participant["state"] == "invited"
    cookie = reply.set_cookies()[CUSTOMER_COOKIE]
    assert cookie["httponly"] is True and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert cookie.value != token_of(created)

    me = await send(browser, "GET", "/api/v1/customer/me")
    assert me.status == 200
    assert me.body["participant"]["id"] == participant["id"]
    assert me.body["csrf_token"] == reply.body["csrf_token"]
    # The customer learns the teller's name, never the staff login (or the user id).
    for seen in (reply.body["session"], me.body["session"]):
        assert seen["teller"] == {"display_name": created["session"]["teller"]["display_name"]}

    detail = await teller.call("GET", f"/api/v1/sessions/{created['session']['id']}")
    assert [e["type"] for e in detail["events"]] == ["invitation_created", "invitation_redeemed"]
    assert {p["role"] for p in detail["session"]["participants"]} == {"teller", "customer"}


async def test_redeem_forged_and_expired_links(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    browser = server.client()
    forged = await send(browser, "POST", "/api/v1/join/forged-token")
    assert_error(forged, 404, "invitation_unknown")
    assert not forged.set_cookies()

    created = await invite(teller)
    await expire(server, created["session"]["id"])
    expired = await send(browser, "POST", f"/api/v1/join/{token_of(created)}")
    assert_error(expired, 410, "invitation_expired")
    assert not expired.set_cookies()
    assert_error(await send(browser, "GET", "/api/v1/customer/me"), 401, "not_authenticated")


async def test_a_used_link_belongs_to_the_browser_that_used_it(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    created = await invite(teller)
    path = f"/api/v1/join/{token_of(created)}"
    first = server.client()
    original = await first.join_link(created["invitation_url"])

    second = server.client()
    reused = await send(second, "POST", path)
    assert_error(reused, 409, "invitation_used")
    assert not reused.set_cookies()
    assert_error(await send(second, "GET", "/api/v1/customer/me"), 401, "not_authenticated")

    # The same browser reloading the page gets its place back, without a new credential.
    reload = await send(first, "POST", path)
    assert reload.status == 200
    assert reload.body["participant"]["id"] == original["participant"]["id"]
    assert reload.body["csrf_token"] == original["csrf_token"]
    assert not reload.set_cookies()
    # Even after the link's own expiry.
    await expire(server, created["session"]["id"])
    again = await send(first, "POST", path)
    assert again.status == 200
    assert again.body["participant"]["id"] == original["participant"]["id"]

    detail = await teller.call("GET", f"/api/v1/sessions/{created['session']['id']}")
    assert [p["role"] for p in detail["session"]["participants"]].count("customer") == 1


async def test_a_link_redeemed_concurrently_admits_one_browser(server: RunningServer) -> None:
    """A leaked link raced by several browsers (or a link-preview bot) still has one owner."""
    teller = await staff(server, "teller1")
    for _ in range(3):
        created = await invite(teller)
        path = f"/api/v1/join/{token_of(created)}"
        browsers = [server.client() for _ in range(4)]
        replies = await asyncio.gather(*(send(browser, "POST", path) for browser in browsers))
        assert sorted(reply.status for reply in replies) == [200, 409, 409, 409], replies
        assert {reply.code for reply in replies if reply.status != 200} == {"invitation_used"}
        winner = next(reply for reply in replies if reply.status == 200)
        detail = await teller.call("GET", f"/api/v1/sessions/{created['session']['id']}")
        customers = [p for p in detail["session"]["participants"] if p["role"] == "customer"]
        assert [p["id"] for p in customers] == [winner.body["participant"]["id"]]
        assert [e["type"] for e in detail["events"]].count("invitation_redeemed") == 1


async def test_redeem_after_the_session_ended(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    unused = await invite(teller)
    used = await invite(teller)
    customer = await customer_of(server, used)
    for created in (unused, used):
        session_id = created["session"]["id"]
        ended = await teller.call("POST", f"/api/v1/sessions/{session_id}/end")
        assert ended["session"]["state"] == "ended"
        again = await send(teller, "POST", f"/api/v1/sessions/{session_id}/end", csrf=teller.csrf)
        assert_error(again, 410, "session_ended")

    fresh_browser = server.client()
    late = await send(fresh_browser, "POST", f"/api/v1/join/{token_of(unused)}")
    assert_error(late, 410, "session_ended")
    assert not late.set_cookies()
    reload = await send(customer, "POST", f"/api/v1/join/{token_of(used)}")
    assert_error(reload, 410, "session_ended")


# -- who sees what ---------------------------------------------------------------------------


async def test_a_customer_is_confined_to_its_own_session(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    own = await invite(teller)
    other = await invite(teller)
    customer = await customer_of(server, own)
    other_id = other["session"]["id"]
    own_id = own["session"]["id"]

    for path in (
        f"/api/v1/sessions/{other_id}",
        f"/api/v1/sessions/{own_id}",
        "/api/v1/sessions",
        "/api/v1/staff?role=expert",
        "/api/v1/auth/me",
    ):
        reply = await send(customer, "GET", path)
        assert reply.status in (401, 403), (path, reply)
        assert reply.code in ("not_authenticated", "forbidden")
        assert other_id not in str(reply.body)

    for path, body in (
        (f"/api/v1/sessions/{other_id}/end", None),
        (f"/api/v1/sessions/{other_id}/experts", {"username": "teller1"}),
        ("/api/v1/invitations", {"business": "wealth"}),
        ("/api/v1/admin/users", {"username": "x", "password": PASSWORD * 2, "role": "admin"}),
        ("/api/v1/auth/logout", None),
    ):
        reply = await send(customer, "POST", path, body, csrf=customer.csrf)
        assert_error(reply, 403, "forbidden")

    other_detail = await teller.call("GET", f"/api/v1/sessions/{other_id}")
    assert other_detail["session"]["state"] == "waiting"
    assert [p["role"] for p in other_detail["session"]["participants"]] == ["teller"]
    me = await customer.call("GET", "/api/v1/customer/me")
    assert me["session"]["id"] == own_id


async def test_anonymous_gets_401_on_every_protected_route(server: RunningServer) -> None:
    anonymous = server.client()
    for method, path in (
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/sessions/s_123"),
        ("GET", "/api/v1/staff"),
        ("GET", "/api/v1/customer/me"),
        ("POST", "/api/v1/sessions/s_123/end"),
        ("POST", "/api/v1/sessions/s_123/experts"),
        ("POST", "/api/v1/admin/users"),
    ):
        assert_error(await send(anonymous, method, path), 401, "not_authenticated")


async def test_a_teller_cannot_touch_another_tellers_session(server: RunningServer) -> None:
    owner = await staff(server, "teller1")
    intruder = await staff(server, "teller2")
    await server.user("expert1", Role.EXPERT)
    created = await invite(owner)
    session_id = created["session"]["id"]

    assert_error(await send(intruder, "GET", f"/api/v1/sessions/{session_id}"), 403, "forbidden")
    invited = await send(
        intruder,
        "POST",
        f"/api/v1/sessions/{session_id}/experts",
        {"username": "expert1"},
        csrf=intruder.csrf,
    )
    assert_error(invited, 403, "forbidden")
    end = await send(intruder, "POST", f"/api/v1/sessions/{session_id}/end", csrf=intruder.csrf)
    assert_error(end, 403, "forbidden")
    assert (await intruder.call("GET", "/api/v1/sessions"))["sessions"] == []

    detail = await owner.call("GET", f"/api/v1/sessions/{session_id}")
    assert detail["session"]["state"] == "waiting"
    assert [p["role"] for p in detail["session"]["participants"]] == ["teller"]
    missing = await send(owner, "GET", "/api/v1/sessions/s_does_not_exist")
    assert_error(missing, 404, "unknown_session")


async def test_an_expert_sees_only_sessions_they_are_invited_to(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    expert = await staff(server, "expert1", Role.EXPERT)
    await server.user("expert2", Role.EXPERT, "另一位专家")
    invited = await invite(teller)
    elsewhere = await invite(teller)
    invited_id, elsewhere_id = invited["session"]["id"], elsewhere["session"]["id"]

    assert (await expert.call("GET", "/api/v1/sessions"))["sessions"] == []
    assert_error(await send(expert, "GET", f"/api/v1/sessions/{invited_id}"), 403, "forbidden")

    staff_list = await teller.call("GET", "/api/v1/staff?role=expert")
    assert sorted(u["username"] for u in staff_list["staff"]) == ["expert1", "expert2"]
    assert_error(await send(teller, "GET", "/api/v1/staff?role=admin"), 400, "invalid_request")

    added = await teller.call(
        "POST", f"/api/v1/sessions/{invited_id}/experts", {"username": "expert1"}, expect=201
    )
    assert added["participant"]["role"] == "expert"
    assert added["participant"]["state"] == "invited"

    listed = await expert.call("GET", "/api/v1/sessions")
    assert [s["id"] for s in listed["sessions"]] == [invited_id]
    detail = await expert.call("GET", f"/api/v1/sessions/{invited_id}")
    assert "expert_invited" in [e["type"] for e in detail["events"]]
    assert_error(await send(expert, "GET", f"/api/v1/sessions/{elsewhere_id}"), 403, "forbidden")
    # Experts neither end sessions nor invite.
    end = await send(expert, "POST", f"/api/v1/sessions/{invited_id}/end", csrf=expert.csrf)
    assert_error(end, 403, "forbidden")

    path = f"/api/v1/sessions/{invited_id}/experts"
    again = await send(teller, "POST", path, {"username": "expert1"}, csrf=teller.csrf)
    assert_error(again, 409, "already_invited")
    not_expert = await send(teller, "POST", path, {"username": "teller1"}, csrf=teller.csrf)
    assert_error(not_expert, 404, "unknown_user")
    nobody = await send(teller, "POST", path, {"username": "ghost"}, csrf=teller.csrf)
    assert_error(nobody, 404, "unknown_user")


async def test_a_supervisor_sees_every_open_session(server: RunningServer) -> None:
    teller1 = await staff(server, "teller1")
    teller2 = await staff(server, "teller2")
    supervisor = await staff(server, "super1", Role.SUPERVISOR)
    first = await invite(teller1)
    second = await invite(teller2)
    finished = await invite(teller1)
    await teller1.call("POST", f"/api/v1/sessions/{finished['session']['id']}/end")

    listed = await supervisor.call("GET", "/api/v1/sessions")
    assert [s["id"] for s in listed["sessions"]] == [
        second["session"]["id"],
        first["session"]["id"],
    ]
    detail = await supervisor.call("GET", f"/api/v1/sessions/{second['session']['id']}")
    assert detail["session"]["teller"]["username"] == "teller2"
    # Viewing does not make the supervisor a participant.
    assert [p["role"] for p in detail["session"]["participants"]] == ["teller"]


async def test_teller_sees_own_sessions_newest_first(server: RunningServer) -> None:
    teller = await staff(server, "teller1")
    other = await staff(server, "teller2")
    ids = [(await invite(teller))["session"]["id"] for _ in range(3)]
    await invite(other)
    listed = await teller.call("GET", "/api/v1/sessions")
    assert [s["id"] for s in listed["sessions"]] == list(reversed(ids))


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.ADMIN])
async def test_auditors_and_admins_do_not_list_sessions(server: RunningServer, role: Role) -> None:
    client = await staff(server, f"{role.value}1", role)
    assert_error(await send(client, "GET", "/api/v1/sessions"), 403, "forbidden")


# -- accounts --------------------------------------------------------------------------------


async def test_admin_creates_users(server: RunningServer) -> None:
    admin = await staff(server, "admin1", Role.ADMIN)
    new = {
        "username": "expert.wu",
        "password": "a-long-enough-password",
        "display_name": "吴专家",
        "role": "expert",
    }
    reply = await send(admin, "POST", "/api/v1/admin/users", new, csrf=admin.csrf)
    assert reply.status == 201
    user = reply.body["user"]
    assert user == user | {"username": "expert.wu", "display_name": "吴专家", "role": "expert"}
    assert set(user) == {"id", "username", "display_name", "role"}
    assert user["id"]

    newcomer = server.client()
    logged_in = await newcomer.login("expert.wu", "a-long-enough-password")
    assert logged_in["user"] == user

    duplicate = await send(admin, "POST", "/api/v1/admin/users", new, csrf=admin.csrf)
    assert_error(duplicate, 409, "user_exists")
    no_csrf = await send(admin, "POST", "/api/v1/admin/users", new | {"username": "x2"})
    assert_error(no_csrf, 403, "csrf_failed")


@pytest.mark.parametrize(
    ("changes", "status", "code", "field"),
    [
        ({"password": "short-11-ch"}, 400, "invalid_request", "password"),
        ({"password": ""}, 400, "invalid_request", "password"),
        ({"role": "customer"}, 400, "invalid_role", None),
        ({"role": "root"}, 400, "invalid_request", "role"),
        ({"username": "has space"}, 400, "invalid_request", "username"),
        ({"username": "x"}, 400, "invalid_request", "username"),
    ],
)
async def test_admin_user_validation(
    server: RunningServer, changes: dict[str, str], status: int, code: str, field: str | None
) -> None:
    admin = await staff(server, "admin1", Role.ADMIN)
    body = {"username": "newbie", "password": "a-long-enough-password", "role": "teller"}
    reply = await send(admin, "POST", "/api/v1/admin/users", body | changes, csrf=admin.csrf)
    assert_error(reply, status, code)
    if field is not None:
        assert reply.body["error"]["message"].startswith(f"{field}:")
    assert not await user_exists(server, (body | changes)["username"])


@pytest.mark.parametrize("role", [Role.TELLER, Role.EXPERT, Role.SUPERVISOR, Role.AUDITOR])
async def test_only_admins_create_users(server: RunningServer, role: Role) -> None:
    client = await staff(server, f"{role.value}1", role)
    body = {"username": "sneaky", "password": "a-long-enough-password", "role": "admin"}
    reply = await send(client, "POST", "/api/v1/admin/users", body, csrf=client.csrf)
    assert_error(reply, 403, "forbidden")
    assert not await user_exists(server, "sneaky")
