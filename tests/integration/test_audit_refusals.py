"""Actions refused because the audit log is down leave nothing behind: the same request succeeds
once the log is back, and the log then shows the action once."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from sqlalchemy import func, select

from server.auth.principal import Role
from server.cli import _parser
from server.db.models import Archive, AuditEntry, StaffLogin, User
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_recording import _sealed
from tests.support.audit import audit_log_away
from tests.support.server import PASSWORD, ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")


async def refused(client: ApiClient, method: str, path: str, body: Any = None) -> None:
    reply = await client.call(method, path, body, expect=503)
    assert reply["error"]["code"] == "audit_unavailable", reply


async def entries(server: RunningServer, action: str) -> int:
    async with server.services.engine.connect() as connection:
        found = await connection.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
        )
    return int(found or 0)


async def archives(server: RunningServer) -> int:
    async with server.services.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(Archive)) or 0)


async def staff(server: RunningServer, username: str, role: Role) -> ApiClient:
    await server.user(username, role)
    client = server.client()
    await client.login(username)
    return client


async def invite(teller: ApiClient) -> dict[str, Any]:
    body = {"business": "wealth", "customer_name": "李女士"}
    created: dict[str, Any] = await teller.call("POST", "/api/v1/invitations", body, expect=201)
    return created


async def test_a_refused_redemption_leaves_the_link_usable(server: RunningServer) -> None:
    teller = await staff(server, "teller1", Role.TELLER)
    created = await invite(teller)
    path = "/api/v1/join/" + created["invitation_url"].rsplit("/", 1)[1]
    customer = server.client()
    async with audit_log_away(server):
        await refused(customer, "POST", path)
    assert len(customer.http.cookie_jar) == 0
    assert (await customer.call("GET", path))["status"] == "valid"

    joined = await customer.join_link(created["invitation_url"])
    assert joined["participant"]["role"] == "customer"
    assert (await customer.call("GET", "/api/v1/customer/me"))["session"]["id"] == (
        created["session"]["id"]
    )
    assert await entries(server, "invitation.redeemed") == 1
    session = await teller.call("GET", f"/api/v1/sessions/{created['session']['id']}")
    customers = [p for p in session["session"]["participants"] if p["role"] == "customer"]
    assert len(customers) == 1
    assert [e["type"] for e in session["events"]].count("invitation_redeemed") == 1
    # Still one credential per link.
    await server.client().call("POST", path, expect=409)


async def test_a_refused_expert_invitation_leaves_nothing(server: RunningServer) -> None:
    teller = await staff(server, "teller1", Role.TELLER)
    expert = await staff(server, "expert1", Role.EXPERT)
    session_id = (await invite(teller))["session"]["id"]
    path = f"/api/v1/sessions/{session_id}/experts"
    async with audit_log_away(server):
        await refused(teller, "POST", path, {"username": "expert1"})
        assert (await expert.call("GET", "/api/v1/sessions"))["sessions"] == []

    added = await teller.call("POST", path, {"username": "expert1"}, expect=201)
    assert added["participant"]["role"] == "expert"
    assert added["participant"]["state"] == "invited"
    assert [s["id"] for s in (await expert.call("GET", "/api/v1/sessions"))["sessions"]] == [
        session_id
    ]
    assert await entries(server, "expert.invited") == 1
    detail = await teller.call("GET", f"/api/v1/sessions/{session_id}")
    assert [e["type"] for e in detail["events"]].count("expert_invited") == 1


async def test_a_refused_account_creation_leaves_no_account(server: RunningServer) -> None:
    admin = await staff(server, "admin1", Role.ADMIN)
    new = {"username": "expert.wu", "password": PASSWORD, "role": "expert"}
    async with audit_log_away(server):
        await refused(admin, "POST", "/api/v1/admin/users", new)
    login = {"username": "expert.wu", "password": PASSWORD}
    await server.client().call("POST", "/api/v1/auth/login", login, expect=401)

    created = await admin.call("POST", "/api/v1/admin/users", new, expect=201)
    assert created["user"]["username"] == "expert.wu"
    assert await entries(server, "admin.user_created") == 1
    assert (await server.client().login("expert.wu"))["user"] == created["user"]


async def test_a_refused_account_creation_at_the_command_line_leaves_no_account(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _parser().parse_args(
        ["admin", "create-user", "--username", "op.li", "--role", "admin", "--password-stdin"]
    )

    async def create_user() -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        code: int = await asyncio.to_thread(args.run, args, server.settings)
        return code

    async with audit_log_away(server):
        assert await create_user() == 1
    async with server.services.engine.connect() as connection:
        assert await connection.scalar(select(User.id).where(User.username == "op.li")) is None

    assert await create_user() == 0
    assert await entries(server, "admin.user_created") == 1
    await server.client().login("op.li")


async def test_a_consent_the_log_refused_records_nothing_and_a_refusal_stands(
    server: RunningServer,
) -> None:
    teller, customer, _ = await _teller_and_customer(server)
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        await teller.send({"type": "recording_start"})
        await customer.expect("consent_request")
        async with audit_log_away(server):
            await customer.send({"type": "consent", "granted": True})
            error = await customer.expect("error")
        assert error["code"] == "audit_unavailable"
        # Nothing was recorded: no archive was started, and the customer is still asked.
        assert await entries(server, "recording.started") == 0
        assert await archives(server) == 0
        await customer.send({"type": "consent", "granted": True})
        state = await teller.expect("recording")
        while state["state"] != "recording":
            state = await teller.expect("recording")
        assert await entries(server, "recording.consent") == 1
        await teller.send({"type": "recording_stop"})
        assert (await _sealed(teller))["state"] == "sealed"

        # Asked again and declined while the log is down: the refusal is not held up by it.
        await teller.send({"type": "recording_start"})
        await customer.expect("consent_request")
        async with audit_log_away(server):
            await customer.send({"type": "consent", "granted": False})
            state = await teller.expect("recording")
            while state["state"] != "declined":
                state = await teller.expect("recording")
        assert customer.history.count("error") == 1  # only the refused consent's
    finally:
        await customer.close()
        await teller.close()


async def test_a_refused_login_leaves_no_live_login_and_a_logout_is_never_refused(
    server: RunningServer,
) -> None:
    teller = await staff(server, "wang.teller", Role.TELLER)
    user_id = (await teller.call("GET", "/api/v1/auth/me"))["user"]["id"]

    async def live_logins() -> int:
        async with server.services.engine.connect() as connection:
            found = await connection.scalar(
                select(func.count())
                .select_from(StaffLogin)
                .where(StaffLogin.user_id == user_id, StaffLogin.revoked_at.is_(None))
            )
        return int(found or 0)

    login = {"username": "wang.teller", "password": PASSWORD}
    async with audit_log_away(server):
        await refused(server.client(), "POST", "/api/v1/auth/login", login)
        # Leaving works even now; the missing entry is reported by the process instead.
        await teller.call("POST", "/api/v1/auth/logout")
    assert await live_logins() == 0  # neither the refused login nor the ended one counts
    await teller.call("GET", "/api/v1/auth/me", expect=401)
    await server.client().login("wang.teller")
    assert await live_logins() == 1
    assert await entries(server, "auth.login") == 2  # the first login and the last
