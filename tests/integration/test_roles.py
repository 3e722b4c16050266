"""Every role tries what it must not do, over HTTP, in one matrix (issue 7, "Roles").

Customers reach only their own session; tellers only their sessions; auditors read archives but
never join calls or approve; supervisors approve and review but do not export or hold; admins
manage accounts and settings but cannot read archive contents, and nobody unauthenticated gets
anything. The same rules over the WebSocket are in test_signaling_errors.py (auditors, admins,
uninvited staff and other sessions' customers are closed with 4403), and each area's own tests
try its forbidden actions in more detail; this matrix is the one place that lists them together.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.auth.principal import Role
from tests.integration.test_transactions import purchase
from tests.support.server import ApiClient, RunningServer

# An archive that does not exist: the role check comes before the lookup, so the answer is
# "forbidden", never "unknown", for a role that may not look at archives at all.
# (method, path, JSON body or None)
Action = tuple[str, str, dict[str, Any] | None]
ARCHIVE = "00000000-0000-4000-8000-000000000000"

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")


async def _staff(server: RunningServer, username: str, role: Role) -> ApiClient:
    await server.user(username, role)
    client = server.client()
    await client.login(username)
    return client


async def _session_with_customer(teller: ApiClient, server: RunningServer) -> tuple[str, ApiClient]:
    created = await teller.call("POST", "/api/v1/invitations", {"business": "wealth"}, expect=201)
    customer = server.client()
    await customer.join_link(created["invitation_url"])
    return created["session"]["id"], customer


async def test_every_role_is_refused_what_it_must_not_do(server: RunningServer) -> None:
    teller = await _staff(server, "wang", Role.TELLER)
    other_teller = await _staff(server, "li", Role.TELLER)
    expert = await _staff(server, "zhao", Role.EXPERT)
    supervisor = await _staff(server, "chen", Role.SUPERVISOR)
    auditor = await _staff(server, "audit1", Role.AUDITOR)
    admin = await _staff(server, "root", Role.ADMIN)
    nobody = server.client()
    session, customer = await _session_with_customer(teller, server)
    other_session, other_customer = await _session_with_customer(other_teller, server)
    tid = (
        await teller.call(
            "POST", f"/api/v1/sessions/{session}/transactions", purchase(1_000_00), expect=201
        )
    )["transaction"]["id"]
    wang = (await teller.call("GET", "/api/v1/auth/me"))["user"]["id"]

    approve: Action = ("POST", f"/api/v1/transactions/{tid}/approve", {})
    override = ("POST", f"/api/v1/transactions/{tid}/override", {"reason": "理由足够长的一段说明"})
    search: Action = ("POST", "/api/v1/auditor/search", {})
    open_archive = ("GET", f"/api/v1/auditor/archives/{ARCHIVE}", None)
    playback: Action = ("POST", f"/api/v1/auditor/archives/{ARCHIVE}/playback", {})
    media = ("GET", f"/api/v1/auditor/archives/{ARCHIVE}/media/customer.webm", None)
    export: Action = ("POST", f"/api/v1/auditor/archives/{ARCHIVE}/export", {})
    hold = ("POST", f"/api/v1/auditor/archives/{ARCHIVE}/hold", {"held": True, "reason": "调查"})
    report = ("GET", f"/api/v1/archives/{ARCHIVE}/report", None)
    new_user = (
        "POST",
        "/api/v1/admin/users",
        {"username": "mallory", "password": "a-long-password-1", "role": "admin"},
    )
    skills = ("POST", f"/api/v1/queue/tellers/{wang}/skills", {"skills": ["wealth"]})
    review = ("POST", "/api/v1/reviews/1", {"decision": "approved", "note": "看过了"})
    retry: Action = ("POST", "/api/v1/webhooks/deliveries/x/retry", {})
    take: Action = ("POST", "/api/v1/queue/take", {})
    dashboard = ("GET", "/api/v1/queue/dashboard", None)
    invite = ("POST", "/api/v1/invitations", {"business": "wealth"})
    create_tx = ("POST", f"/api/v1/sessions/{session}/transactions", purchase(1_000_00))
    session_view = ("GET", f"/api/v1/sessions/{session}", None)

    other_session_view = ("GET", f"/api/v1/sessions/{other_session}", None)
    session_list = ("GET", "/api/v1/sessions", None)
    tx_view = ("GET", f"/api/v1/transactions/{tid}", None)
    signature = ("GET", f"/api/v1/transactions/{tid}/signature.png", None)
    compliance = ("GET", f"/api/v1/sessions/{session}/compliance", None)

    forbidden: dict[str, tuple[ApiClient, list[tuple[str, str, Any]]]] = {
        "customer": (
            customer,
            [
                approve,
                override,
                search,
                open_archive,
                export,
                report,
                dashboard,
                take,
                create_tx,
                other_session_view,
                session_list,
            ],
        ),
        "another session's customer": (other_customer, [tx_view, session_view, signature]),
        "another teller": (
            other_teller,
            [
                approve,
                override,
                session_view,
                create_tx,
                search,
                hold,
                export,
                skills,
                review,
                new_user,
                retry,
                dashboard,
                tx_view,
            ],
        ),
        "expert": (expert, [approve, override, invite, search, export, hold, skills, take]),
        "supervisor": (supervisor, [export, hold, new_user]),
        "auditor": (auditor, [invite, approve, override, create_tx, take, review, retry, skills]),
        "admin": (
            admin,
            [
                search,
                open_archive,
                playback,
                media,
                export,
                hold,
                report,
                approve,
                override,
                take,
                dashboard,
                session_view,
                compliance,
                signature,
            ],
        ),
    }
    wrong: list[str] = []
    for who, (client, actions) in forbidden.items():
        for method, path, body in actions:
            status, answer = await _try(client, method, path, body)
            if status != 403:
                wrong.append(f"{who}: {method} {path} -> {status} {answer}")
    for method, path, body in (approve, search, export, review, dashboard, session_view, take):
        status, answer = await _try(nobody, method, path, body)
        if status != 401:
            wrong.append(f"unauthenticated: {method} {path} -> {status} {answer}")
    assert not wrong, "\n".join(wrong)
    # Refused means refused: the transaction is still waiting for its signature.
    state = (await teller.call("GET", f"/api/v1/transactions/{tid}"))["transaction"]["state"]
    assert state == "awaiting_signature"


async def _try(client: ApiClient, method: str, path: str, body: Any) -> tuple[int, Any]:
    headers = {"X-CSRF-Token": client.csrf} if client.csrf else {}
    async with client.http.request(method, client.base + path, json=body, headers=headers) as r:
        answer = await r.json() if r.content_type == "application/json" else r.content_type
        return r.status, answer
