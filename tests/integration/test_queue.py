"""The public queue against a real server: tickets, take-next, routing, callbacks, roles, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from server.api.queue_routes import QUEUE_COOKIE
from server.auth.principal import Role
from server.db.models import (
    AuditEntry,
    CallSession,
    QueueCallback,
    QueueTicket,
    SessionEvent,
    utcnow,
)
from server.workflow.queue.config import QueueConfig
from tests.integration.test_http_api import Reply, assert_error, send, staff
from tests.support import server as support
from tests.support.audit import audit_log_away
from tests.support.server import ApiClient, RunningServer, running_server

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = support.test_settings(tmp_path, queue=QueueConfig(tickets_per_address=2))
    async with running_server(settings) as running:
        yield running


async def join(server: RunningServer, topic: str = "cards", elderly: bool = False) -> ApiClient:
    customer = server.client()
    data = await customer.call(
        "POST", "/api/v1/queue/tickets", {"topic": topic, "elderly": elderly}, expect=201
    )
    customer.csrf = data["csrf_token"]
    return customer


async def ticket(customer: ApiClient) -> dict[str, Any]:
    data = await customer.call("GET", "/api/v1/queue/ticket")
    found: dict[str, Any] = data["ticket"]
    return found


async def on_duty(
    server: RunningServer, name: str, skills: list[str], supervisor: ApiClient
) -> tuple[ApiClient, str]:
    teller = await staff(server, name)
    me = await teller.call("GET", "/api/v1/queue/me")
    user_id: str = me["teller"]["user"]["id"]
    await supervisor.call("POST", f"/api/v1/queue/tellers/{user_id}/skills", {"skills": skills})
    await teller.call("POST", "/api/v1/queue/me/status", {"status": "available"})
    return teller, user_id


async def audit_actions(server: RunningServer, prefix: str) -> list[AuditEntry]:
    async with server.services.engine.connect() as connection:
        rows = await connection.execute(
            select(AuditEntry).where(AuditEntry.action.like(f"{prefix}%")).order_by(AuditEntry.seq)
        )
        return list(rows.all())  # type: ignore[arg-type]


async def set_ticket(server: RunningServer, ticket_id: str, **values: Any) -> None:
    async with server.services.engine.begin() as connection:
        await connection.execute(
            update(QueueTicket).where(QueueTicket.id == ticket_id).values(**values)
        )


# -- joining, position, estimate --------------------------------------------------------------


async def test_joining_gives_an_httponly_ticket_with_position_and_estimate(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    customer = server.client()
    reply = await send(
        customer, "POST", "/api/v1/queue/tickets", {"topic": "cards", "elderly": False}
    )
    assert reply.status == 201, reply
    cookie = reply.set_cookies()["vteller_queue"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/api/v1/queue"
    view = reply.body["ticket"]
    assert view["state"] == "waiting" and view["business"] == "general"
    assert view["position"] == 1 and view["join_url"] is None
    # Nobody serving general business is on duty: no estimate, and the page says so.
    assert view["estimate"]["seconds"] is None and view["estimate"]["tellers"] == 0

    await on_duty(server, "wang", ["general"], supervisor)
    view = await ticket(customer)
    # No ended sessions yet: the configured default handling time, one teller, position 1.
    assert view["estimate"] == {
        "seconds": 300,
        "tellers": 1,
        "handling": {"seconds": 300, "samples": 0},
    }
    async with server.services.engine.connect() as connection:
        stored = (await connection.execute(select(QueueTicket))).one()
    assert stored.token_hash != cookie.value and len(stored.token_hash) == 64
    [joined] = await audit_actions(server, "queue.joined")
    assert joined.actor == view["id"] and joined.detail == {
        "topic": "cards",
        "business": "general",
        "elderly": False,
    }


async def test_estimate_is_the_median_handling_time_per_teller_round(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    _, teller_id = await on_duty(server, "wang", ["wealth"], supervisor)
    await on_duty(server, "li", ["wealth"], supervisor)
    now = utcnow()
    async with server.services.engine.begin() as connection:
        for index, seconds in enumerate((120, 180, 600)):
            await connection.execute(
                insert(CallSession).values(
                    id=f"s_ended{index}",
                    business="wealth",
                    state="ended",
                    teller_id=teller_id,
                    customer_name="",
                    created_at=now - timedelta(seconds=seconds + 60),
                    started_at=now - timedelta(seconds=seconds + 30),
                    ended_at=now - timedelta(seconds=30),
                )
            )
    customers = [await join(server, "wealth") for _ in range(3)]
    third = await ticket(customers[2])
    # Position 3 with two tellers: two rounds of the median (180 s) call.
    assert third["position"] == 3
    assert third["estimate"] == {
        "seconds": 360,
        "tellers": 2,
        "handling": {"seconds": 180, "samples": 3},
    }


async def test_joining_again_with_a_live_ticket_keeps_the_place(server: RunningServer) -> None:
    customer = await join(server)
    first = await ticket(customer)
    again = await customer.call(
        "POST", "/api/v1/queue/tickets", {"topic": "wealth", "elderly": True}, expect=200
    )
    assert again["ticket"]["id"] == first["id"] and again["ticket"]["topic"] == "cards"


async def test_elderly_lane_is_served_first(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, _ = await on_duty(server, "wang", ["general"], supervisor)
    early = await join(server, "cards")
    elderly = await join(server, "other", elderly=True)
    assert (await ticket(elderly))["position"] == 1
    assert (await ticket(early))["position"] == 2

    taken = await teller.call("POST", "/api/v1/queue/take", expect=201)
    assert taken["ticket"]["id"] == (await ticket(elderly))["id"]
    assert taken["ticket"]["elderly"] is True
    assert (await ticket(early))["position"] == 1


# -- taking a customer -------------------------------------------------------------------------


async def test_taking_creates_a_session_the_customer_enters_by_their_ticket(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["wealth"], supervisor)
    customer = await join(server, "wealth")
    taken = await teller.call("POST", "/api/v1/queue/take", expect=201)
    session = taken["session"]
    assert session["business"] == "wealth" and session["teller"]["id"] == teller_id
    assert "invitation_url" not in taken  # the link is the customer's alone

    view = await ticket(customer)
    assert view["state"] == "taken" and view["position"] is None
    join_url: str = view["join_url"]
    assert join_url.startswith(f"{server.url}/join/")
    # The existing customer flow of an invitation link: credential cookie, then the call.
    entered = await customer.join_link(join_url)
    assert entered["session"]["id"] == session["id"]
    assert entered["participant"]["role"] == "customer"
    me = await customer.call("GET", "/api/v1/customer/me")
    assert me["session"]["id"] == session["id"]
    # The link is single-use: another browser cannot take the customer's place.
    stranger = server.client()
    token = join_url.rsplit("/", 1)[1]
    assert_error(await send(stranger, "POST", f"/api/v1/join/{token}"), 409, "invitation_used")

    async with server.services.engine.connect() as connection:
        event = (
            await connection.execute(
                select(SessionEvent).where(SessionEvent.session_id == session["id"])
            )
        ).first()
    assert event is not None and event.detail["via"] == "queue"
    [entry] = await audit_actions(server, "queue.taken")
    assert entry.actor == teller_id and entry.target == view["id"]
    assert entry.detail["session_id"] == session["id"] and entry.detail["assigned"] is False

    # In a call until it ends: no second customer meanwhile.
    state = await teller.call("GET", "/api/v1/queue/me")
    assert state["teller"]["status"] == "in_call"
    assert state["teller"]["current_session_id"] == session["id"]
    await join(server, "wealth")
    assert_error(
        await send(teller, "POST", "/api/v1/queue/take", csrf=teller.csrf), 409, "teller_in_call"
    )
    await teller.call("POST", f"/api/v1/sessions/{session['id']}/end")
    assert (await teller.call("GET", "/api/v1/queue/me"))["teller"]["status"] == "available"
    await teller.call("POST", "/api/v1/queue/take", expect=201)


async def test_take_next_respects_skills_and_status(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["general"], supervisor)
    await join(server, "insurance")
    assert_error(
        await send(teller, "POST", "/api/v1/queue/take", csrf=teller.csrf), 404, "queue_empty"
    )
    me = await teller.call("GET", "/api/v1/queue/me")
    assert me["waiting"] == {}

    await supervisor.call(
        "POST", f"/api/v1/queue/tellers/{teller_id}/skills", {"skills": ["general", "insurance"]}
    )
    assert (await teller.call("GET", "/api/v1/queue/me"))["waiting"] == {"insurance": 1}
    await teller.call("POST", "/api/v1/queue/me/status", {"status": "away"})
    assert_error(
        await send(teller, "POST", "/api/v1/queue/take", csrf=teller.csrf), 409, "teller_away"
    )
    await teller.call("POST", "/api/v1/queue/me/status", {"status": "available"})
    taken = await teller.call("POST", "/api/v1/queue/take", expect=201)
    assert taken["session"]["business"] == "insurance"

    statuses = [e.detail for e in await audit_actions(server, "teller.status_changed")]
    assert statuses[-2:] == [
        {"status": "away", "previous": "available"},
        {"status": "available", "previous": "away"},
    ]
    skills = [e.detail for e in await audit_actions(server, "teller.skills_changed")]
    assert skills[-1] == {"skills": ["general", "insurance"], "previous": ["general"]}


async def test_new_tellers_serve_only_the_default_skills_and_start_away(
    server: RunningServer,
) -> None:
    teller = await staff(server, "wang")
    me = await teller.call("GET", "/api/v1/queue/me")
    assert me["teller"]["skills"] == ["general"] and me["teller"]["status"] == "away"


async def test_two_tellers_taking_at_once_never_get_the_same_customer(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    tellers = [(await on_duty(server, f"t{i}", ["general"], supervisor))[0] for i in range(4)]
    for _ in range(3):
        await join(server, "cards")
    replies = await asyncio.gather(
        *(send(t, "POST", "/api/v1/queue/take", csrf=t.csrf) for t in tellers)
    )
    won = [r for r in replies if r.status == 201]
    assert len(won) == 3
    assert len({r.body["ticket"]["id"] for r in won}) == 3
    assert len({r.body["session"]["id"] for r in won}) == 3
    [lost] = [r for r in replies if r.status != 201]
    assert_error(lost, 404, "queue_empty")
    async with server.services.engine.connect() as connection:
        taken = (
            await connection.execute(select(QueueTicket).where(QueueTicket.state == "taken"))
        ).all()
    assert len(taken) == 3 and len({t.taken_by for t in taken}) == 3


# -- leaving the queue ---------------------------------------------------------------------------


async def test_cancel_removes_the_ticket_and_needs_its_csrf_token(server: RunningServer) -> None:
    customer = await join(server)
    view = await ticket(customer)
    assert_error(await send(customer, "POST", "/api/v1/queue/ticket/cancel"), 403, "csrf_failed")
    assert_error(
        await send(customer, "POST", "/api/v1/queue/ticket/cancel", csrf="wrong"),
        403,
        "csrf_failed",
    )
    await customer.call("POST", "/api/v1/queue/ticket/cancel")
    # The cookie is gone, so the ticket is unknown to this browser now.
    assert_error(await send(customer, "GET", "/api/v1/queue/ticket"), 404, "ticket_unknown")
    [left] = await audit_actions(server, "queue.left")
    assert left.target == view["id"] and left.detail == {"reason": "cancelled"}


async def test_a_page_that_stops_asking_loses_its_place(server: RunningServer) -> None:
    customer = await join(server)
    other = await join(server)
    view = await ticket(customer)
    assert (await ticket(other))["position"] == 2
    await set_ticket(server, view["id"], seen_at=utcnow() - timedelta(minutes=5))
    assert (await ticket(other))["position"] == 1
    assert_error(await send(customer, "GET", "/api/v1/queue/ticket"), 410, "ticket_expired")
    [left] = await audit_actions(server, "queue.left")
    assert left.actor == "system" and left.detail == {"reason": "abandoned"}


async def test_expired_and_unknown_tickets(server: RunningServer) -> None:
    assert_error(await send(server.client(), "GET", "/api/v1/queue/ticket"), 404, "ticket_unknown")
    forged = server.client()
    forged.http.cookie_jar.update_cookies({"vteller_queue": "not-a-ticket"})
    assert_error(await send(forged, "GET", "/api/v1/queue/ticket"), 404, "ticket_unknown")

    customer = await join(server)
    view = await ticket(customer)
    await set_ticket(server, view["id"], created_at=utcnow() - timedelta(hours=3))
    assert_error(await send(customer, "GET", "/api/v1/queue/ticket"), 410, "ticket_expired")
    reply = await send(customer, "POST", "/api/v1/queue/ticket/cancel", csrf=customer.csrf)
    assert_error(reply, 410, "ticket_expired")
    [left] = await audit_actions(server, "queue.left")
    assert left.detail == {"reason": "expired"}


# -- callbacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    ["12345678901", "1380013800", "138001380001", "+1 138 0013 8000", "1380013800a", "０"],
)
async def test_callback_numbers_must_be_chinese_mobiles(server: RunningServer, phone: str) -> None:
    customer = await join(server)
    reply = await send(
        customer, "POST", "/api/v1/queue/ticket/callback", {"phone": phone}, csrf=customer.csrf
    )
    assert_error(reply, 400, "invalid_phone")
    assert (await ticket(customer))["state"] == "waiting"


async def test_callback_is_sealed_masked_claimed_and_erased(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["general"], supervisor)
    other, _ = await on_duty(server, "li", ["wealth"], supervisor)
    customer = await join(server, "cards", elderly=True)
    reply = await customer.call(
        "POST", "/api/v1/queue/ticket/callback", {"phone": "+86 138-0013-8000"}, expect=201
    )
    assert reply["ticket"]["state"] == "callback"
    assert reply["ticket"]["callback_phone"] == "*******8000"
    assert (await ticket(customer))["callback_phone"] == "*******8000"
    # The number is not in the clear anywhere in the database nor in the audit log.
    async with server.services.engine.connect() as connection:
        row = (await connection.execute(select(QueueCallback))).one()
    assert b"13800138000" not in row.sealed and row.phone_hint == "8000"
    entries = await audit_actions(server, "queue.")
    assert all("13800138000" not in str(e.detail) for e in entries)

    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    assert [c["phone"] for c in board["callbacks"]] == ["*******8000"]
    assert board["queue"] == []
    mine = await teller.call("GET", "/api/v1/queue/me")
    assert [c["id"] for c in mine["callbacks"]] == [row.id]

    wrong_skill = await send(
        other, "POST", f"/api/v1/queue/callbacks/{row.id}/claim", csrf=other.csrf
    )
    assert_error(wrong_skill, 403, "forbidden")
    claimed = await teller.call("POST", f"/api/v1/queue/callbacks/{row.id}/claim")
    assert claimed["callback"]["phone"] == "13800138000"
    assert claimed["callback"]["claimed_by"] == teller_id
    await teller.call("POST", f"/api/v1/queue/callbacks/{row.id}/done")
    async with server.services.engine.connect() as connection:
        done = (await connection.execute(select(QueueCallback))).one()
    assert done.state == "done" and done.sealed is None and done.wrapped_key is None
    again = await send(teller, "POST", f"/api/v1/queue/callbacks/{row.id}/claim", csrf=teller.csrf)
    assert_error(again, 410, "callback_done")
    actions = [e.action for e in await audit_actions(server, "queue.callback")]
    assert actions == ["queue.callback_requested", "queue.callback_claimed", "queue.callback_done"]


# -- routing by a supervisor ---------------------------------------------------------------------


async def test_supervisor_reassigns_a_waiting_customer(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    first, _ = await on_duty(server, "wang", ["wealth"], supervisor)
    second, second_id = await on_duty(server, "li", ["wealth"], supervisor)
    _, general_id = await on_duty(server, "zhou", ["general"], supervisor)
    customer = await join(server, "wealth")
    view = await ticket(customer)

    assert_error(await _assign(supervisor, view["id"], general_id), 409, "skill_missing")
    moved = await supervisor.call(
        "POST", f"/api/v1/queue/tickets/{view['id']}/assign", {"teller_id": second_id}
    )
    assert moved["ticket"]["assigned_to"] == second_id
    assert moved["ticket"]["assigned_name"] == "li name"

    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    assert [t["assigned_to"] for t in board["queue"]] == [second_id]
    statuses = {t["user"]["username"]: t["status"] for t in board["tellers"]}
    assert statuses == {"wang": "available", "li": "available", "zhou": "available"}

    assert_error(
        await send(first, "POST", "/api/v1/queue/take", csrf=first.csrf), 404, "queue_empty"
    )
    taken = await second.call("POST", "/api/v1/queue/take", expect=201)
    assert taken["ticket"]["id"] == view["id"]
    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    assert [s["id"] for s in board["sessions"]] == [taken["session"]["id"]]
    by_name = {t["user"]["username"]: t for t in board["tellers"]}
    assert by_name["li"]["status"] == "in_call"
    assert by_name["li"]["current_session_id"] == taken["session"]["id"]
    [entry] = await audit_actions(server, "queue.reassigned")
    assert entry.detail == {"teller_id": second_id, "previous": None}
    [took] = await audit_actions(server, "queue.taken")
    assert took.detail["assigned"] is True

    assert_error(await _assign(supervisor, view["id"], second_id), 409, "ticket_not_waiting")
    assert_error(await _assign(supervisor, "q_nope", second_id), 404, "ticket_unknown")


async def test_without_the_audit_log_queue_changes_are_not_made(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["wealth"], supervisor)
    _, other_id = await on_duty(server, "li", ["wealth"], supervisor)
    customer = await join(server, "wealth")
    view = await ticket(customer)
    async with audit_log_away(server):
        refused = [
            await send(
                teller, "POST", "/api/v1/queue/me/status", {"status": "away"}, csrf=teller.csrf
            ),
            await send(
                supervisor,
                "POST",
                f"/api/v1/queue/tellers/{teller_id}/skills",
                {"skills": ["general"]},
                csrf=supervisor.csrf,
            ),
            await _assign(supervisor, view["id"], other_id),
            await send(teller, "POST", "/api/v1/queue/take", csrf=teller.csrf),
        ]
    for reply in refused:
        assert_error(reply, 503, "audit_unavailable")
    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    wang = next(t for t in board["tellers"] if t["user"]["id"] == teller_id)
    assert (wang["status"], wang["skills"]) == ("available", ["wealth"])
    assert [(t["id"], t["assigned_to"]) for t in board["queue"]] == [(view["id"], None)]
    assert (await ticket(customer))["join_url"] is None

    # Nothing was left behind: with the log back, the same customer is taken, into the one
    # session the teller has (a session opened by the refused take would hold the ticket's link).
    taken = await teller.call("POST", "/api/v1/queue/take", expect=201)
    assert taken["ticket"]["id"] == view["id"]
    sessions = (await teller.call("GET", "/api/v1/sessions"))["sessions"]
    assert [s["id"] for s in sessions] == [taken["session"]["id"]]
    assert (await ticket(customer))["join_url"]


async def test_a_take_whose_last_write_failed_keeps_its_session_and_the_queue_works(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["general"], supervisor)
    other, _ = await on_duty(server, "li", ["general"], supervisor)
    customer = await join(server, "cards")
    queue = server.services.queue
    profile = queue._profile

    async def database_fails(*args: Any) -> Any:
        raise ConnectionError("the database went away")

    # The session is created, then the write naming it on the ticket fails.
    monkeypatch.setattr(queue, "_profile", database_fails)
    failed = await send(teller, "POST", "/api/v1/queue/take", csrf=teller.csrf)
    assert failed.status == 500
    monkeypatch.setattr(queue, "_profile", profile)
    [created] = (await teller.call("GET", "/api/v1/sessions"))["sessions"]

    # A minute later the sweep finds the interrupted take: it finishes it rather than giving the
    # ticket back (a new take of it would collide with the link the session holds).
    async with server.services.engine.begin() as connection:
        await connection.execute(
            update(QueueTicket).values(closed_at=utcnow() - timedelta(minutes=2))
        )
    await queue.sweep()
    view = await ticket(customer)
    assert view["state"] == "taken" and view["join_url"]
    entered = await customer.join_link(view["join_url"])
    assert entered["session"]["id"] == created["id"]
    nothing = await send(other, "POST", "/api/v1/queue/take", csrf=other.csrf)
    assert_error(nothing, 404, "queue_empty")
    [entry] = await audit_actions(server, "queue.taken")
    assert entry.actor == teller_id and entry.detail["session_id"] == created["id"]


async def test_a_join_or_callback_claim_the_log_refused_leaves_nothing_behind(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["general"], supervisor)
    other, other_id = await on_duty(server, "li", ["general"], supervisor)
    customer = await join(server, "cards")
    await customer.call(
        "POST", "/api/v1/queue/ticket/callback", {"phone": "13800138000"}, expect=201
    )
    async with server.services.engine.connect() as connection:
        callback_id = (await connection.execute(select(QueueCallback.id))).scalar_one()
    latecomer = server.client()
    async with audit_log_away(server):
        joined = await send(latecomer, "POST", "/api/v1/queue/tickets", {"topic": "cards"})
        claimed = await send(
            teller, "POST", f"/api/v1/queue/callbacks/{callback_id}/claim", csrf=teller.csrf
        )
    assert_error(joined, 503, "audit_unavailable")
    assert_error(claimed, 503, "audit_unavailable")
    # No ticket nobody holds (a teller would take it into a session nobody joins), and the
    # callback is not shown as claimed: another teller may call the customer.
    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    assert board["queue"] == []
    assert [(c["id"], c["claimed_by"]) for c in board["callbacks"]] == [(callback_id, None)]
    taken = await other.call("POST", f"/api/v1/queue/callbacks/{callback_id}/claim")
    assert taken["callback"]["claimed_by"] == other_id != teller_id
    [entry] = await audit_actions(server, "queue.callback_claimed")
    assert entry.actor == other_id


async def test_a_callback_request_or_completion_the_log_refused_is_undone(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, _ = await on_duty(server, "wang", ["general"], supervisor)
    customer = await join(server, "cards")
    async with audit_log_away(server):
        requested = await send(
            customer,
            "POST",
            "/api/v1/queue/ticket/callback",
            {"phone": "13800138000"},
            csrf=customer.csrf,
        )
    assert_error(requested, 503, "audit_unavailable")
    # No number kept, and the customer's place is still waiting: asking again works.
    async with server.services.engine.connect() as connection:
        assert (await connection.execute(select(QueueCallback.id))).all() == []
    assert (await ticket(customer))["state"] == "waiting"
    await customer.call(
        "POST", "/api/v1/queue/ticket/callback", {"phone": "13800138000"}, expect=201
    )
    async with server.services.engine.connect() as connection:
        callback_id = (await connection.execute(select(QueueCallback.id))).scalar_one()
    await teller.call("POST", f"/api/v1/queue/callbacks/{callback_id}/claim")

    async with audit_log_away(server):
        done = await send(
            teller, "POST", f"/api/v1/queue/callbacks/{callback_id}/done", csrf=teller.csrf
        )
    assert_error(done, 503, "audit_unavailable")
    # Still the teller's, number and all: the call can be made, then completed once.
    again = await teller.call("POST", f"/api/v1/queue/callbacks/{callback_id}/claim")
    assert again["callback"]["phone"] == "13800138000"
    await teller.call("POST", f"/api/v1/queue/callbacks/{callback_id}/done")
    actions = [e.action for e in await audit_actions(server, "queue.callback")]
    assert actions == [
        "queue.callback_requested",
        "queue.callback_claimed",
        "queue.callback_claimed",
        "queue.callback_done",
    ]


async def _assign(supervisor: ApiClient, ticket_id: str, teller_id: str) -> Reply:
    """The raw answer to a reassignment, for the refusals."""
    return await send(
        supervisor,
        "POST",
        f"/api/v1/queue/tickets/{ticket_id}/assign",
        {"teller_id": teller_id},
        csrf=supervisor.csrf,
    )


# -- roles -----------------------------------------------------------------------------------------


async def test_roles_that_may_not_use_the_queue_are_refused(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["general"], supervisor)
    customer = await join(server)
    ticket_id = (await ticket(customer))["id"]
    assign = f"/api/v1/queue/tickets/{ticket_id}/assign"
    skills = f"/api/v1/queue/tellers/{teller_id}/skills"

    for role in (Role.AUDITOR, Role.ADMIN, Role.EXPERT):
        other = await staff(server, f"user-{role.value}", role)
        for method, path, body in (
            ("POST", "/api/v1/queue/take", None),
            ("GET", "/api/v1/queue/me", None),
            ("POST", "/api/v1/queue/me/status", {"status": "available"}),
            ("GET", "/api/v1/queue/dashboard", None),
            ("POST", assign, {"teller_id": teller_id}),
        ):
            reply = await send(other, method, path, body, csrf=other.csrf)
            assert_error(reply, 403, "forbidden")
    # Tellers route themselves only through take-next.
    supervisor_only: tuple[tuple[str, str, Any], ...] = (
        ("GET", "/api/v1/queue/dashboard", None),
        ("POST", assign, {"teller_id": teller_id}),
        ("POST", skills, {"skills": ["wealth", "insurance", "general"]}),
        ("GET", "/api/v1/queue/tellers", None),
    )
    for method, path, body in supervisor_only:
        assert_error(await send(teller, method, path, body, csrf=teller.csrf), 403, "forbidden")
    # A ticket holder, or a customer in a call, is no staff member.
    for path in ("/api/v1/queue/take", assign):
        assert_error(
            await send(customer, "POST", path, {}, csrf=customer.csrf), 401, "not_authenticated"
        )
    # Admins manage accounts, and so skills; they never see who is waiting.
    admin = await staff(server, "root", Role.ADMIN)
    changed = await admin.call("POST", skills, {"skills": ["wealth"]})
    assert changed["teller"]["skills"] == ["wealth"]
    assert len((await admin.call("GET", "/api/v1/queue/tellers"))["tellers"]) == 1
    assert_error(
        await send(
            supervisor,
            "POST",
            "/api/v1/queue/tellers/u_nobody/skills",
            {"skills": []},
            csrf=supervisor.csrf,
        ),
        404,
        "unknown_teller",
    )
    # Still waiting: nothing above took or moved the customer.
    assert (await ticket(customer))["state"] == "waiting"


async def test_bad_bodies_get_clear_errors(server: RunningServer) -> None:
    client = server.client()
    for body in (
        {"topic": "loans"},
        {"topic": "cards", "elderly": "maybe"},
        {"topic": "cards", "x": 1},
    ):
        assert_error(
            await send(client, "POST", "/api/v1/queue/tickets", body), 400, "invalid_request"
        )
    assert_error(await send(client, "POST", "/api/v1/queue/tickets", data="{"), 400, "bad_json")


async def test_the_public_endpoints_check_the_origin(server: RunningServer) -> None:
    reply = await send(
        server.client(),
        "POST",
        "/api/v1/queue/tickets",
        {"topic": "cards"},
        headers={"Origin": "https://evil.example"},
    )
    assert_error(reply, 403, "bad_origin")


async def test_new_tickets_are_rate_limited_per_address(limited: RunningServer) -> None:
    for _ in range(2):
        await join(limited)
    reply = await send(limited.client(), "POST", "/api/v1/queue/tickets", {"topic": "cards"})
    assert_error(reply, 429, "rate_limited")
    assert int(reply.headers["Retry-After"]) > 0


async def test_polls_with_a_ticket_are_not_counted_but_guesses_are(tmp_path: Path) -> None:
    settings = support.test_settings(tmp_path, queue=QueueConfig(requests_per_address=3))
    async with running_server(settings) as server:
        customer = await join(server)
        # Customers behind one address (a branch's Wi-Fi, a carrier's NAT) keep their places.
        for _ in range(6):
            assert (await ticket(customer))["state"] == "waiting"
        guesser = server.client()
        guesser.http.cookie_jar.update_cookies({QUEUE_COOKIE: "guessed-token"})
        replies = [await send(guesser, "GET", "/api/v1/queue/ticket") for _ in range(4)]
        # The join counted (a change), the six polls did not: two guesses fill the limit of 3.
        assert [r.status for r in replies] == [404, 404, 429, 429]


async def test_a_teller_who_logged_out_counts_as_away(server: RunningServer) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, _ = await on_duty(server, "wang", ["general"], supervisor)
    customer = await join(server)
    assert (await ticket(customer))["estimate"]["tellers"] == 1
    await teller.call("POST", "/api/v1/auth/logout")
    assert (await ticket(customer))["estimate"]["tellers"] == 0
    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    assert [t["status"] for t in board["tellers"]] == ["away"]
    # Their choice is kept: logging in again makes them available again.
    await teller.login("wang")
    assert (await teller.call("GET", "/api/v1/queue/me"))["teller"]["status"] == "available"


async def test_an_interrupted_take_gives_the_customer_their_place_back(
    server: RunningServer,
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    teller, teller_id = await on_duty(server, "wang", ["general"], supervisor)
    customer = await join(server)
    view = await ticket(customer)
    # As if the worker died after claiming the ticket and before creating the session.
    await set_ticket(server, view["id"], state="taken", taken_by=teller_id, closed_at=utcnow())
    taking = await ticket(customer)
    assert taking["state"] == "taken" and taking["join_url"] is None
    await set_ticket(server, view["id"], closed_at=utcnow() - timedelta(minutes=2))
    back = await ticket(customer)
    assert back["state"] == "waiting" and back["position"] == 1
    taken = await teller.call("POST", "/api/v1/queue/take", expect=201)
    assert taken["ticket"]["id"] == view["id"]
    assert (await ticket(customer))["join_url"].startswith(f"{server.url}/join/")
