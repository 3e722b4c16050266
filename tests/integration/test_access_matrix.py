"""Who may call what: every route of the app's router and the signaling WebSocket, tried by every
kind of principal, against one table of decisions.

The routes come from the router, so a route added without a decision here fails the test. Each
route gets fresh principals (its calls may end a session or log someone out). The objects in
its path (session, transaction, teller) belong to `teller`; `customer` and `expert` are in that
session, `other_*` are the same roles outside it: a role allowed the route but not the object
must be refused too. Refusals are exact: 401 for no credential, 403 for the wrong role or
object, never a 500 or a 200. Every HTTP answer carries the security headers. Tokens of one
kind in another's place are tried at the end.
test_roles.py tries each role's forbidden actions with real objects in more detail.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select
from yarl import URL

from server.api.queue_routes import QUEUE_COOKIE
from server.audit.denials import OTHER, Denials
from server.auth.principal import Principal, Role
from server.auth.service import CUSTOMER_COOKIE, DEVICE_COOKIE, STAFF_COOKIE
from server.db.models import AuditEntry
from server.workflow.queue.config import QueueConfig
from tests.integration.test_bad_input import VALID_BODIES, routes, variables
from tests.integration.test_http_api import Reply
from tests.integration.test_signaling_errors import new_session, staff
from tests.integration.test_transactions import purchase
from tests.support import server as support
from tests.support.postgres import database_url
from tests.support.server import ApiClient, RunningServer, running_server

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")

CUSTOMER, OTHER_CUSTOMER = "customer", "other_customer"
TELLER, OTHER_TELLER = "teller", "other_teller"
EXPERT, OTHER_EXPERT = "expert", "other_expert"
SUPERVISOR, AUDITOR, ADMIN = "supervisor", "auditor", "admin"
QUEUE, ANON = "queue", "anon"  # a queue ticket's holder (its own cookie); no credential at all
# Customers and the session's staff last: a customer's credential dies with the session a
# teller's call may end, and a logout ends the staff member's own login only.
ORDER = (
    ANON,
    QUEUE,
    OTHER_CUSTOMER,
    OTHER_TELLER,
    OTHER_EXPERT,
    ADMIN,
    AUDITOR,
    SUPERVISOR,
    EXPERT,
    CUSTOMER,
    TELLER,
)
STAFF = frozenset({TELLER, OTHER_TELLER, EXPERT, OTHER_EXPERT, SUPERVISOR, AUDITOR, ADMIN})
ROLES = {
    CUSTOMER: "customer",
    OTHER_CUSTOMER: "customer",
    TELLER: "teller",
    OTHER_TELLER: "teller",
    EXPERT: "expert",
    OTHER_EXPERT: "expert",
    SUPERVISOR: "supervisor",
    AUDITOR: "auditor",
    ADMIN: "admin",
}
EVERYONE = frozenset(ORDER)
TELLERS = frozenset({TELLER, OTHER_TELLER})


@dataclass(frozen=True)
class Decision:
    """Who may call a route; everyone else gets `refusal` (None: 401 without a login or link,
    403 with one)."""

    allowed: frozenset[str]
    refusal: tuple[int, str] | None = None


def only(*names: str) -> Decision:
    return Decision(frozenset(names))


PUBLIC = Decision(EVERYONE)
# The queue's ticket endpoints: the ticket's cookie is the credential; without it the ticket is
# simply not found (docs/workflow-queue.md).
TICKET = Decision(frozenset({QUEUE}), (404, "ticket_unknown"))

MATRIX: dict[tuple[str, str], Decision] = {
    # pages, health, static files: no data
    ("GET", "/"): PUBLIC,
    ("GET", "/staff/"): PUBLIC,
    ("GET", "/staff/call.html"): PUBLIC,
    ("GET", "/auditor/"): PUBLIC,
    ("GET", "/join/{token}"): PUBLIC,
    ("GET", "/visit/"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/static/{filename}"): PUBLIC,
    # a bearer token of its own, never a cookie
    ("GET", "/metrics"): Decision(frozenset(), (401, "")),
    # staff logins and accounts
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): Decision(STAFF),
    ("GET", "/api/v1/auth/me"): Decision(STAFF),
    ("POST", "/api/v1/admin/users"): only(ADMIN),
    # customers' links
    ("GET", "/api/v1/join/{token}"): PUBLIC,
    ("POST", "/api/v1/join/{token}"): PUBLIC,
    ("GET", "/api/v1/customer/me"): only(CUSTOMER, OTHER_CUSTOMER),
    # sessions
    ("POST", "/api/v1/invitations"): Decision(TELLERS),
    ("GET", "/api/v1/sessions"): only(TELLER, OTHER_TELLER, EXPERT, OTHER_EXPERT, SUPERVISOR),
    ("GET", "/api/v1/sessions/{session_id}"): only(TELLER, EXPERT, SUPERVISOR),
    ("GET", "/api/v1/sessions/{session_id}/script"): only(TELLER, EXPERT, SUPERVISOR),
    ("POST", "/api/v1/sessions/{session_id}/experts"): only(TELLER),
    ("POST", "/api/v1/sessions/{session_id}/end"): only(CUSTOMER, TELLER),
    ("GET", "/api/v1/staff"): Decision(TELLERS),
    ("GET", "/ws/v1/sessions/{session_id}"): only(CUSTOMER, TELLER, EXPERT, SUPERVISOR),
    # transactions
    ("POST", "/api/v1/sessions/{session_id}/transactions"): only(TELLER),
    ("GET", "/api/v1/sessions/{session_id}/transactions"): only(
        CUSTOMER, TELLER, EXPERT, SUPERVISOR, AUDITOR
    ),
    ("GET", "/api/v1/transactions"): only(SUPERVISOR),
    ("GET", "/api/v1/transactions/{transaction_id}"): only(
        CUSTOMER, TELLER, EXPERT, SUPERVISOR, AUDITOR
    ),
    ("GET", "/api/v1/transactions/{transaction_id}/signature.png"): only(
        TELLER, SUPERVISOR, AUDITOR
    ),
    ("POST", "/api/v1/transactions/{transaction_id}/signature"): only(CUSTOMER),
    ("POST", "/api/v1/transactions/{transaction_id}/approve"): only(TELLER, SUPERVISOR),
    ("POST", "/api/v1/transactions/{transaction_id}/reject"): only(TELLER, SUPERVISOR),
    ("POST", "/api/v1/transactions/{transaction_id}/override"): only(SUPERVISOR),
    # compliance analysis (the archive named does not exist: the role check comes first)
    ("GET", "/api/v1/sessions/{session_id}/compliance"): only(TELLER, SUPERVISOR, AUDITOR),
    ("GET", "/api/v1/archives/{archive_id}/report"): only(
        TELLER, OTHER_TELLER, SUPERVISOR, AUDITOR
    ),
    ("GET", "/api/v1/archives/{archive_id}/report.html"): only(
        TELLER, OTHER_TELLER, SUPERVISOR, AUDITOR
    ),
    ("GET", "/api/v1/reviews"): only(SUPERVISOR, AUDITOR),
    ("POST", "/api/v1/reviews/{review_id}"): only(SUPERVISOR),
    # the auditor portal
    ("POST", "/api/v1/auditor/search"): only(SUPERVISOR, AUDITOR),
    ("GET", "/api/v1/auditor/archives/{archive_id}"): only(SUPERVISOR, AUDITOR),
    ("POST", "/api/v1/auditor/archives/{archive_id}/playback"): only(SUPERVISOR, AUDITOR),
    ("GET", "/api/v1/auditor/archives/{archive_id}/media/{view}.webm"): only(SUPERVISOR, AUDITOR),
    ("GET", "/api/v1/auditor/archives/{archive_id}/signatures/{transaction_id}.png"): only(
        SUPERVISOR, AUDITOR
    ),
    ("POST", "/api/v1/auditor/archives/{archive_id}/export"): only(AUDITOR),
    # an export by GET exports nothing, for anyone (a link on another site could follow it)
    ("GET", "/api/v1/auditor/archives/{archive_id}/export"): Decision(
        frozenset(), (405, "method_not_allowed")
    ),
    ("GET", "/api/v1/auditor/downloads/{token}"): only(AUDITOR),
    ("POST", "/api/v1/auditor/archives/{archive_id}/hold"): only(AUDITOR),
    ("GET", "/api/v1/auditor/sessions"): only(AUDITOR),
    ("GET", "/api/v1/auditor/sessions/{session_id}"): only(AUDITOR),
    ("POST", "/api/v1/auditor/sessions/{session_id}/hold"): only(AUDITOR),
    # webhooks to the core bank
    ("GET", "/api/v1/webhooks/deliveries"): only(SUPERVISOR, AUDITOR),
    ("GET", "/api/v1/webhooks/deliveries/{key}"): only(SUPERVISOR, AUDITOR),
    ("POST", "/api/v1/webhooks/deliveries/{key}/retry"): only(SUPERVISOR),
    # the queue
    ("POST", "/api/v1/queue/tickets"): PUBLIC,
    ("GET", "/api/v1/queue/ticket"): TICKET,
    ("POST", "/api/v1/queue/ticket/cancel"): TICKET,
    ("POST", "/api/v1/queue/ticket/callback"): TICKET,
    ("GET", "/api/v1/queue/me"): Decision(TELLERS),
    ("POST", "/api/v1/queue/me/status"): Decision(TELLERS),
    ("POST", "/api/v1/queue/take"): Decision(TELLERS),
    ("POST", "/api/v1/queue/callbacks/{callback_id}/claim"): Decision(TELLERS),
    ("POST", "/api/v1/queue/callbacks/{callback_id}/done"): Decision(TELLERS),
    ("GET", "/api/v1/queue/dashboard"): only(SUPERVISOR),
    ("POST", "/api/v1/queue/tickets/{ticket_id}/assign"): only(SUPERVISOR),
    ("GET", "/api/v1/queue/tellers"): only(SUPERVISOR, ADMIN),
    ("POST", "/api/v1/queue/tellers/{user_id}/skills"): only(SUPERVISOR, ADMIN),
    # staff accounts on the supervisor's page (an operator's are `vteller admin`)
    ("GET", "/api/v1/staff/accounts"): only(SUPERVISOR),
    ("POST", "/api/v1/staff/accounts/{account_id}/unlock"): only(SUPERVISOR),
    ("POST", "/api/v1/staff/accounts/{account_id}/disable"): only(SUPERVISOR),
    ("POST", "/api/v1/staff/accounts/{account_id}/enable"): only(SUPERVISOR),
}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# A body each JSON route accepts, so that an object-level refusal is not hidden behind a refusal
# of the body. Not the login's: its wrong password is a 401 by design.
BODIES = {path: body for path, body in VALID_BODIES.items() if path != "/api/v1/auth/login"}
ARCHIVE = "00000000-0000-4000-8000-000000000000"
# WebSocket close codes of the HTTP refusals (server/signaling/handler.py).
WS_CLOSE = {401: 4401, 403: 4403}


@pytest.fixture
async def server(tmp_path: Path, database: str) -> AsyncIterator[RunningServer]:
    # Every route's principals take a queue ticket from 127.0.0.1 and open two sessions.
    queue = QueueConfig(tickets_per_address=10_000, requests_per_address=100_000)
    async with database_url(database) as url:
        settings = support.test_settings(
            tmp_path, database_url=url, queue=queue, worker_max_sessions=0
        )
        async with running_server(settings) as running:
            yield running


@dataclass
class World:
    clients: dict[str, ApiClient]
    path_values: dict[str, str]

    def path(self, canonical: str) -> str:
        return canonical.format(**{name: self.path_values[name] for name in variables(canonical)})


async def world(server: RunningServer, n: int) -> World:
    clients = {
        name: await staff(server, f"{name}{n}", role)
        for name, role in (
            (TELLER, Role.TELLER),
            (OTHER_TELLER, Role.TELLER),
            (EXPERT, Role.EXPERT),
            (OTHER_EXPERT, Role.EXPERT),
            (SUPERVISOR, Role.SUPERVISOR),
            (AUDITOR, Role.AUDITOR),
            (ADMIN, Role.ADMIN),
        )
    }
    teller = clients[TELLER]
    session_id, clients[CUSTOMER] = await new_session(server, teller)
    _, clients[OTHER_CUSTOMER] = await new_session(server, clients[OTHER_TELLER])
    await teller.call(
        "POST", f"/api/v1/sessions/{session_id}/experts", {"username": f"{EXPERT}{n}"}, expect=201
    )
    created = await teller.call(
        "POST", f"/api/v1/sessions/{session_id}/transactions", purchase(100), expect=201
    )
    clients[QUEUE] = server.client()
    ticket = await clients[QUEUE].call(
        "POST", "/api/v1/queue/tickets", {"topic": "cards"}, expect=201
    )
    clients[QUEUE].csrf = ticket["csrf_token"]
    clients[ANON] = server.client()
    me = await teller.call("GET", "/api/v1/auth/me")
    # The account the supervisor disables: not `teller`'s, whose login must outlast the route.
    other = await clients[OTHER_TELLER].call("GET", "/api/v1/auth/me")
    return World(
        clients,
        {
            "session_id": session_id,
            "transaction_id": created["transaction"]["id"],
            "user_id": me["user"]["id"],
            "account_id": other["user"]["id"],
            "token": "not-a-link",
            "archive_id": ARCHIVE,
            "view": "customer",
            "key": "unknown",
            "review_id": "1",
            "callback_id": "unknown",
            "ticket_id": "unknown",
            "filename": "README.md",
        },
    )


async def http(client: ApiClient, method: str, path: str, canonical: str) -> Reply:
    """The route's body for a POST (an empty object by default), with the client's CSRF token;
    redirects not followed."""
    headers = {"X-CSRF-Token": client.csrf} if client.csrf else {}
    body = BODIES.get(canonical, {}) if method == "POST" else None
    async with client.http.request(
        method,
        URL(client.base + path, encoded=True),
        json=body,
        headers=headers,
        allow_redirects=False,
    ) as response:
        try:
            parsed = await response.json(content_type=None)
        except ValueError:
            parsed = await response.text(errors="replace")
        return Reply(response.status, parsed, response.headers)


async def websocket(client: ApiClient, path: str) -> int | None:
    """The close code the connection is refused with, or None when it is admitted (a ping is
    answered)."""
    async with client.http.ws_connect(client.base.replace("http", "ws", 1) + path) as ws:
        await ws.send_json({"v": 1, "type": "ping"})
        while True:
            frame = await ws.receive(timeout=10)
            if frame.type == aiohttp.WSMsgType.TEXT:
                if frame.json()["type"] == "pong":
                    return None
                continue
            return ws.close_code


async def denied_entries(server: RunningServer) -> list[AuditEntry]:
    query = select(AuditEntry).where(AuditEntry.action == "access.denied")
    async with server.services.sessions._db() as db:
        return list(await db.scalars(query.order_by(AuditEntry.seq)))


def refusal(decision: Decision, name: str) -> tuple[int, str]:
    if decision.refusal is not None:
        return decision.refusal
    # A queue ticket proves nothing outside the queue's ticket endpoints.
    return (401, "not_authenticated") if name in (ANON, QUEUE) else (403, "forbidden")


def wrong_http(decision: Decision, name: str, method: str, path: str, reply: Reply) -> list[str]:
    what = f"{name}: {method} {path} -> {reply.status} {reply.body!r:.200}"
    wrong = [
        f"{what}: {header} is {reply.headers.get(header)!r}, not {value!r}"
        for header, value in SECURITY_HEADERS.items()
        if reply.headers.get(header) != value
    ]
    policy = reply.headers.get("Content-Security-Policy", "")
    if "frame-ancestors 'none'" not in policy:
        wrong.append(f"{what}: no Content-Security-Policy with frame-ancestors 'none'")
    if "'unsafe-inline'" in policy:
        wrong.append(f"{what}: the Content-Security-Policy allows inline styles or scripts")
    if reply.status >= 500:
        return [*wrong, what]
    if name in decision.allowed:
        if reply.status in (401, 403):
            wrong.append(f"{what}: allowed, but refused")
        return wrong
    status, code = refusal(decision, name)
    if reply.status != status or (code and path.startswith("/api/") and reply.code != code):
        wrong.append(f"{what}: expected {status} {code}")
    return wrong


async def test_every_route_answers_each_principal_as_the_matrix_says(
    server: RunningServer,
) -> None:
    found = set(routes(server))
    assert found == set(MATRIX), (
        f"routes without a decision: {sorted(found - set(MATRIX))}; "
        f"decisions without a route: {sorted(set(MATRIX) - found)}"
    )
    wrong: list[str] = []
    forbidden: Counter[tuple[str, str, str]] = Counter()
    for n, (method, canonical) in enumerate(sorted(found)):
        decision = MATRIX[method, canonical]
        here = await world(server, n)
        path = here.path(canonical)
        for name in ORDER:
            client = here.clients[name]
            if name not in decision.allowed and refusal(decision, name) == (403, "forbidden"):
                forbidden[ROLES[name], method, canonical] += 1
            if canonical.startswith("/ws/"):
                code = await websocket(client, path)
                expected = (
                    None if name in decision.allowed else WS_CLOSE[refusal(decision, name)[0]]
                )
                if code != expected:
                    wrong.append(f"{name}: WebSocket {path} -> {code}, expected {expected}")
                continue
            wrong += wrong_http(
                decision, name, method, path, await http(client, method, path, canonical)
            )
    # A path no route has: refused, and with the same headers.
    wrong += wrong_http(
        PUBLIC, ANON, "GET", "/nowhere", await http(server.client(), "GET", "/nowhere", "/nowhere")
    )
    assert not wrong, "\n".join(wrong)
    # Each principal tried each route once: every authorization refusal is in the audit log,
    # under the route's pattern, and nothing else is (no 401: anyone can make those).
    audited = Counter(
        (e.actor_role, e.detail["method"], e.target) for e in await denied_entries(server)
    )
    assert audited == forbidden, (
        f"refused, not audited: {sorted(forbidden - audited)}; "
        f"audited, not refused: {sorted(audited - forbidden)}"
    )


async def test_no_credential_stands_in_for_another_kind(server: RunningServer) -> None:
    """Each kind of token is looked up only among its own kind: a staff login, a device, a
    customer credential, an invitation link or a queue ticket in another's cookie proves
    nothing."""
    teller = await staff(server, "teller1", Role.TELLER)
    created = await teller.call("POST", "/api/v1/invitations", {"business": "wealth"}, expect=201)
    link = created["invitation_url"].rsplit("/", 1)[1]
    customer = server.client()
    await customer.join_link(created["invitation_url"])
    ticket = server.client()
    await ticket.call("POST", "/api/v1/queue/tickets", {"topic": "cards"}, expect=201)
    tokens = {"invitation": link}
    for client in (teller, customer, ticket):
        tokens |= {cookie.key: cookie.value for cookie in client.http.cookie_jar}
    assert set(tokens) == {
        "invitation",
        STAFF_COOKIE,
        DEVICE_COOKIE,
        CUSTOMER_COOKIE,
        QUEUE_COOKIE,
    }
    checks = {STAFF_COOKIE: "/api/v1/auth/me", CUSTOMER_COOKIE: "/api/v1/customer/me"}
    wrong = []
    for cookie, path in checks.items():
        for kind, token in tokens.items():
            if kind == cookie:
                continue
            client = server.client()
            async with client.http.get(
                server.url + path, headers={"Cookie": f"{cookie}={token}"}
            ) as reply:
                if reply.status != 401:
                    wrong.append(f"{kind} as {cookie}: {reply.status}")
    assert not wrong, wrong


async def test_a_flood_of_refusals_leaves_one_entry_per_route_and_is_counted(
    server: RunningServer,
) -> None:
    """A teller probing the auditor's API and another teller's session, over HTTP and the
    WebSocket: one entry per route, naming the object asked for; every refusal on /metrics.
    Refusals without a credential are counted, never logged."""
    prober = await staff(server, "prober", Role.TELLER)
    session_id, _ = await new_session(server, await staff(server, "owner", Role.TELLER))
    session = f"/api/v1/sessions/{session_id}"
    for _ in range(20):
        await prober.call("GET", "/api/v1/reviews", expect=403)
        await prober.call("GET", session, expect=403)
    for _ in range(3):
        assert await websocket(prober, f"/ws/v1/sessions/{session_id}") == WS_CLOSE[403]
    for _ in range(5):
        await server.client().call("GET", "/api/v1/reviews", expect=401)

    me = (await prober.call("GET", "/api/v1/auth/me"))["user"]["id"]
    entries = await denied_entries(server)
    assert [(e.actor, e.actor_role, e.target, e.address) for e in entries] == [
        (me, "teller", "/api/v1/reviews", "127.0.0.1"),
        (me, "teller", "/api/v1/sessions/{session_id}", "127.0.0.1"),
        (me, "teller", "/ws/v1/sessions/{session_id}", "127.0.0.1"),
    ]
    assert [e.detail["ids"] for e in entries] == [{}, *[{"session_id": session_id}] * 2]
    assert all(e.detail["method"] == "GET" and e.detail["suppressed"] == 0 for e in entries)
    assert all(e.detail["reason"] for e in entries)

    token = (server.settings.data_dir / "metrics.token").read_text().strip()
    async with prober.http.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        scraped = await response.text()
    assert 'vteller_access_refused_total{audited="true",code="forbidden",status="403"} 3.0' in (
        scraped
    )
    assert 'vteller_access_refused_total{audited="false",code="forbidden",status="403"} 40.0' in (
        scraped
    )
    assert (
        'vteller_access_refused_total{audited="false",code="not_authenticated",status="401"} 5.0'
        in scraped
    )


async def test_the_entry_after_a_quiet_minute_counts_the_refusals_left_out(
    server: RunningServer,
) -> None:
    now = 0.0
    denials = Denials(server.services.audit, clock=lambda: now)
    teller = Principal(Role.TELLER, "Teller", "csrf", user_id="u_1", username="teller")

    async def refuse(ids: dict[str, str]) -> None:
        await denials.refused(
            teller,
            method="GET",
            route="/api/v1/sessions/{session_id}",
            path_ids=ids,
            reason="Your role may not view this session.",
            address=None,
        )

    for _ in range(5):
        await refuse({"session_id": "s_1"})
    now = 59.0
    await refuse({"session_id": "s_2"})
    now = 60.0
    # Text that is not an id is not written into the log, nor a path variable other than an id.
    await refuse({"session_id": "s_3 <script>", "token": "an-invitation-link"})
    entries = await denied_entries(server)
    assert [e.detail for e in entries] == [
        {
            "method": "GET",
            "ids": {"session_id": "s_1"},
            "reason": "Your role may not view this session.",
            "suppressed": 0,
        },
        {
            "method": "GET",
            "ids": {"session_id": OTHER},
            "reason": "Your role may not view this session.",
            "suppressed": 5,
        },
    ]
