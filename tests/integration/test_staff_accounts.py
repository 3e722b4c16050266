"""The supervisor's staff accounts API (server/api/account_routes.py): a supervisor lists, unlocks,
disables and enables the accounts of tellers and experts, with what `vteller admin` does and
logs; nobody else may, and no supervisor may act on their own account, a peer's or an
auditor's."""

from __future__ import annotations

from typing import Any

import pytest

from server.auth.principal import Role
from tests.integration.test_account_admin import entries, login_refused
from tests.integration.test_http_api import (
    Reply,
    assert_error,
    invite,
    send,
    staff,
    token_of,
)
from tests.integration.test_queue import join, on_duty, ticket
from tests.support.audit import audit_log_away
from tests.support.server import PASSWORD, ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing")
ACCOUNTS = "/api/v1/staff/accounts"


async def supervisor(server: RunningServer) -> tuple[ApiClient, str]:
    """The supervisor chen, logged in, and their user id (the audit log's actor)."""
    chen = await staff(server, "chen", Role.SUPERVISOR)
    return chen, (await chen.call("GET", "/api/v1/auth/me"))["user"]["id"]


async def accounts(supervisor: ApiClient) -> dict[str, dict[str, Any]]:
    listed = await supervisor.call("GET", ACCOUNTS)
    return {a["username"]: a for a in listed["accounts"]}


async def act(client: ApiClient, path: str, body: Any = None) -> Reply:
    """A POST with the client's own CSRF token, whatever the answer."""
    return await send(client, "POST", path, body, csrf=client.csrf)


async def locked_out(server: RunningServer, username: str) -> None:
    for n in range(server.settings.login_max_failures_per_user):
        await login_refused(server, username, f"wrong-guess-{n}")
    error = await login_refused(server, username, PASSWORD)
    assert error["code"] == "rate_limited"


async def test_the_list_shows_tellers_and_experts_with_their_state_and_nothing_secret(
    server: RunningServer,
) -> None:
    chen = await staff(server, "chen", Role.SUPERVISOR)
    await staff(server, "wang")
    await server.user("zhao", Role.EXPERT, "赵专家")
    for other, role in (("liu", Role.SUPERVISOR), ("sun", Role.AUDITOR), ("root", Role.ADMIN)):
        await server.user(other, role)
    await locked_out(server, "zhao")

    listed = await accounts(chen)
    assert sorted(listed) == ["wang", "zhao"]  # not chen, no peer, auditor or admin
    wang, zhao = listed["wang"], listed["zhao"]
    assert (wang["role"], wang["display_name"], wang["disabled"]) == ("teller", "wang name", False)
    assert (wang["locked_out_seconds"], wang["locked_out_until"]) == (0, None)
    assert wang["last_login_at"] is not None
    assert (zhao["role"], zhao["display_name"]) == ("expert", "赵专家")
    assert 0 < zhao["locked_out_seconds"] <= server.settings.login_window_seconds
    assert zhao["locked_out_until"] > zhao["created_at"]
    assert not {key for key in wang if "password" in key or "token" in key or "hash" in key}


async def test_a_supervisor_unlocks_a_locked_out_teller_and_it_is_logged_as_theirs(
    server: RunningServer,
) -> None:
    chen, chen_id = await supervisor(server)
    wang_id = await server.user("wang", Role.TELLER)
    await locked_out(server, "wang")
    assert (await accounts(chen))["wang"]["locked_out_seconds"] > 0

    cleared = await chen.call("POST", f"{ACCOUNTS}/{wang_id}/unlock")
    assert cleared == {"cleared": server.settings.login_max_failures_per_user}
    assert (await accounts(chen))["wang"]["locked_out_seconds"] == 0
    await server.client().login("wang")
    [unlocked] = await entries(server, "admin.user_unlocked")
    assert (unlocked.actor, unlocked.actor_role, unlocked.target) == (chen_id, "supervisor", "wang")
    assert unlocked.detail == {"user_id": wang_id}
    assert unlocked.address == "127.0.0.1"


async def test_a_supervisor_disables_and_enables_a_teller(server: RunningServer) -> None:
    chen, chen_id = await supervisor(server)
    wang = await staff(server, "wang")
    wang_id = (await wang.call("GET", "/api/v1/auth/me"))["user"]["id"]

    short = await act(chen, f"{ACCOUNTS}/{wang_id}/disable", {"reason": " ab "})
    assert_error(short, 400, "invalid_request")
    assert (short.body["error"]["field"], short.body["error"]["rule"]) == ("reason", "too_short")
    done = await chen.call("POST", f"{ACCOUNTS}/{wang_id}/disable", {"reason": "离职 left"})
    assert done["logins_ended"] == 1 and done["logged"] is True
    assert (await wang.call("GET", "/api/v1/auth/me", expect=401))["error"]["code"] == (
        "not_authenticated"
    )
    assert (await login_refused(server, "wang", PASSWORD))["code"] == "account_disabled"
    listed = (await accounts(chen))["wang"]
    assert (listed["disabled"], listed["disabled_reason"]) == (True, "离职 left")
    assert listed["disabled_at"] is not None
    again = await act(chen, f"{ACCOUNTS}/{wang_id}/disable", {"reason": "left twice"})
    assert_error(again, 409, "already_disabled")

    assert await chen.call("POST", f"{ACCOUNTS}/{wang_id}/enable") == {"enabled": True}
    assert not (await accounts(chen))["wang"]["disabled"]
    await server.client().login("wang")
    assert_error(await act(chen, f"{ACCOUNTS}/{wang_id}/enable"), 409, "not_disabled")

    [disabled] = await entries(server, "admin.user_disabled")
    [enabled] = await entries(server, "admin.user_enabled")
    assert (disabled.actor, disabled.actor_role, disabled.target) == (chen_id, "supervisor", "wang")
    assert disabled.detail == {"user_id": wang_id, "reason": "离职 left", "logins_ended": 1}
    assert (enabled.actor, enabled.actor_role, enabled.target) == (chen_id, "supervisor", "wang")
    assert enabled.detail == {"user_id": wang_id, "disabled_reason": "离职 left"}


async def test_a_disabled_tellers_waiting_customers_are_given_back_as_with_the_cli(
    server: RunningServer,
) -> None:
    chen, chen_id = await supervisor(server)
    wang, wang_id = await on_duty(server, "wang", ["wealth"], chen)
    invited = await invite(wang)  # the customer has not opened the link yet
    customer = await join(server, "wealth")
    taken = await wang.call("POST", "/api/v1/queue/take", expect=201)

    done = await chen.call("POST", f"{ACCOUNTS}/{wang_id}/disable", {"reason": "left the bank"})
    queued = (await ticket(customer))["id"]
    assert sorted(done["released"]["cancelled"]) == sorted(
        [invited["session"]["id"], taken["session"]["id"]]
    )
    assert done["released"] == done["released"] | {"requeued": [queued], "unassigned": []}
    assert done["open_sessions"] == []

    reply = await send(server.client(), "POST", f"/api/v1/join/{token_of(invited)}")
    assert_error(reply, 410, "session_cancelled")
    back = await ticket(customer)
    assert (back["state"], back["position"], back["join_url"]) == ("waiting", 1, None)
    ended = await entries(server, "session.ended")
    assert {(e.target, e.actor, e.actor_role, e.detail["reason"]) for e in ended} == {
        (s, chen_id, "supervisor", "teller_disabled")
        for s in (invited["session"]["id"], taken["session"]["id"])
    }
    [requeued] = await entries(server, "queue.reassigned")
    assert (requeued.target, requeued.actor, requeued.detail["previous"]) == (
        queued,
        chen_id,
        wang_id,
    )


@pytest.mark.parametrize("role", [Role.TELLER, Role.EXPERT, Role.AUDITOR, Role.ADMIN])
async def test_no_other_role_may_list_or_act_and_each_refusal_is_audited(
    server: RunningServer, role: Role
) -> None:
    other = await staff(server, "other", role)
    wang_id = await server.user("wang", Role.TELLER)
    await locked_out(server, "wang")
    for method, path, body in (
        ("GET", ACCOUNTS, None),
        ("POST", f"{ACCOUNTS}/{wang_id}/unlock", None),
        ("POST", f"{ACCOUNTS}/{wang_id}/disable", {"reason": "left the bank"}),
        ("POST", f"{ACCOUNTS}/{wang_id}/enable", None),
    ):
        reply = await send(other, method, path, body, csrf=other.csrf)
        assert_error(reply, 403, "forbidden")
    denied = await entries(server, "access.denied")
    assert {(e.actor_role, e.detail["method"], e.target) for e in denied} == {
        (role.value, "GET", "/api/v1/staff/accounts"),
        *(
            (role.value, "POST", f"/api/v1/staff/accounts/{{account_id}}/{action}")
            for action in ("unlock", "disable", "enable")
        ),
    }
    assert not [e for e in await server.services.audit.tail(200) if e.action.startswith("admin.")]
    error = await login_refused(server, "wang", PASSWORD)
    assert error["code"] == "rate_limited"  # still locked out


async def test_a_supervisor_may_not_act_on_themselves_a_peer_or_an_auditor(
    server: RunningServer,
) -> None:
    chen, chen_id = await supervisor(server)
    liu_id = await server.user("liu", Role.SUPERVISOR)
    sun_id = await server.user("sun", Role.AUDITOR)
    # Each account refused each action; a route's first refusal is the one logged (at most
    # one a minute per principal and route), so each route's first names another reason.
    targets = [chen_id, liu_id, sun_id]
    for n, (action, body) in enumerate(
        (("disable", {"reason": "left the bank"}), ("unlock", None), ("enable", None))
    ):
        for target in targets[n:] + targets[:n]:
            reply = await act(chen, f"{ACCOUNTS}/{target}/{action}", body)
            assert_error(reply, 403, "forbidden")
    assert_error(await act(chen, f"{ACCOUNTS}/u_nobody/unlock"), 404, "unknown_user")

    await chen.call("GET", "/api/v1/auth/me")  # chen is not disabled: still logged in
    for username in ("liu", "sun"):
        await server.client().login(username)
    denied = await entries(server, "access.denied")
    assert {(e.actor, e.actor_role) for e in denied} == {(chen_id, "supervisor")}
    assert {e.target.rsplit("/", 1)[1]: e.detail["reason"] for e in denied} == {
        "disable": "Your role may not manage your own account here; an operator does "
        "(`vteller admin`).",
        "unlock": "Your role may not manage supervisor accounts; an operator does "
        "(`vteller admin`).",
        "enable": "Your role may not manage auditor accounts; an operator does (`vteller admin`).",
    }
    assert not [e for e in await server.services.audit.tail(200) if e.action.startswith("admin.")]


async def test_a_state_changing_call_needs_the_pages_csrf_token(server: RunningServer) -> None:
    chen = await staff(server, "chen", Role.SUPERVISOR)
    wang_id = await server.user("wang", Role.TELLER)
    body = {"reason": "left the bank"}
    reply = await send(chen, "POST", f"{ACCOUNTS}/{wang_id}/disable", body, csrf="stale")
    assert_error(reply, 403, "csrf_failed")
    await server.client().login("wang")


async def test_without_the_audit_log_an_unlock_is_refused_but_a_disable_stands(
    server: RunningServer,
) -> None:
    """As with `vteller admin`: what grants access waits for its entry; taking it away never."""
    chen, _ = await supervisor(server)
    wang = await staff(server, "wang")
    wang_id = (await wang.call("GET", "/api/v1/auth/me"))["user"]["id"]
    li_id = await server.user("li", Role.TELLER)
    await locked_out(server, "li")
    async with audit_log_away(server):
        refused = await act(chen, f"{ACCOUNTS}/{li_id}/unlock")
        done = await act(chen, f"{ACCOUNTS}/{wang_id}/disable", {"reason": "left the bank"})
    assert_error(refused, 503, "audit_unavailable")
    assert (await login_refused(server, "li", PASSWORD))["code"] == "rate_limited"
    assert (done.status, done.body["logged"], done.body["logins_ended"]) == (200, False, 1)
    await wang.call("GET", "/api/v1/auth/me", expect=401)
    assert (await accounts(chen))["wang"]["disabled"]
