"""`vteller admin list-users | disable-user | enable-user | unlock-user | reset-password` against
a running server's database: what each does to logins, cookies and open calls, and what the audit
log keeps of it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from server.audit.chain import Entry
from server.auth.principal import Role
from server.cli import _parser
from server.commands import operator
from server.db.models import Archive, CallSession, utcnow
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_http_api import assert_error, invite, send, staff, token_of
from tests.integration.test_queue import join, on_duty, ticket
from tests.integration.test_recording import _record, _stored
from tests.support import server as support
from tests.support.bot import Bot
from tests.support.server import PASSWORD, ApiClient, RunningServer

pytestmark = pytest.mark.usefixtures("cheap_password_hashing", "no_sudo")
NEW_PASSWORD = "a-new-password-for-wang"


@pytest.fixture
def no_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)


def me() -> str:
    """The audit log's actor for a command run here, not through sudo."""
    return f"os:{pwd.getpwuid(os.geteuid()).pw_name}@{socket.gethostname()}"


async def vteller(
    server: RunningServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    """Run `vteller argv` on the server's database: exit status, standard output and error."""
    args = _parser().parse_args(list(argv))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    code: int = await asyncio.to_thread(args.run, args, server.settings)
    out, err = capsys.readouterr()
    return code, out, err


async def logged_in(server: RunningServer, username: str, role: Role = Role.TELLER) -> ApiClient:
    await server.user(username, role)
    client = server.client()
    await client.login(username)
    return client


async def entries(server: RunningServer, action: str) -> list[Entry]:
    return [e for e in await server.services.audit.tail(1000) if e.action == action]


async def login_refused(server: RunningServer, username: str, password: str) -> dict[str, Any]:
    body = {"username": username, "password": password}
    reply = await server.client().call("POST", "/api/v1/auth/login", body, expect=None)
    error: dict[str, Any] = reply["error"]
    return error


async def test_list_users_shows_role_state_lock_out_and_last_login(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await logged_in(server, "wang")
    await server.user("zhao", Role.EXPERT, "赵专家")
    await server.user("li", Role.TELLER)
    for n in range(server.settings.login_max_failures_per_user):
        await login_refused(server, "zhao", f"wrong-guess-{n}")
    run = (server, capsys, monkeypatch)
    code, _, err = await vteller(
        *run, "admin", "disable-user", "--username", "li", "--reason", "left"
    )
    assert code == 0, err

    code, out, err = await vteller(*run, "admin", "list-users", "--json")
    assert code == 0, err
    users = {u["username"]: u for u in json.loads(out)["users"]}
    assert sorted(users) == ["li", "wang", "zhao"]
    assert users["wang"]["role"] == "teller" and users["wang"]["last_login_at"] is not None
    assert not users["wang"]["disabled"] and users["wang"]["locked_out_seconds"] == 0
    assert users["zhao"]["display_name"] == "赵专家" and users["zhao"]["last_login_at"] is None
    assert 0 < users["zhao"]["locked_out_seconds"] <= server.settings.login_window_seconds
    assert users["li"]["disabled"] and users["li"]["disabled_reason"] == "left"

    code, out, _ = await vteller(*run, "admin", "list-users")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "active" in lines["wang"] and "never" not in lines["wang"]
    assert "locked out for" in lines["zhao"] and lines["zhao"].endswith("never")
    assert "disabled since" in lines["li"]


@pytest.mark.parametrize(
    "argv",
    [
        ["disable-user", "--reason", "left the bank"],
        ["enable-user"],
        ["unlock-user"],
        ["reset-password", "--password-stdin"],
    ],
)
async def test_an_unknown_account_is_refused_naming_where_the_names_are(
    server: RunningServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    await server.user("wang", Role.TELLER)
    code, _, err = await vteller(
        server, capsys, monkeypatch, "admin", *argv, "--username", "Wang", stdin=NEW_PASSWORD
    )
    assert code == 1
    assert "error: There is no staff account named 'Wang'" in err
    assert "`vteller admin list-users` lists them" in err
    assert not [e for e in await server.services.audit.tail(100) if e.action.startswith("admin.")]


async def test_a_disabled_account_cannot_log_in_and_its_cookie_stops_at_once(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    teller = await logged_in(server, "wang")
    other_browser = server.client()
    await other_browser.login("wang")
    run = (server, capsys, monkeypatch)

    code, out, err = await vteller(
        *run, "admin", "disable-user", "--username", "wang", "--reason", "left the bank"
    )
    assert code == 0, err
    assert "disabled 'wang'; 2 login(s) ended" in out
    for browser in (teller, other_browser):
        refused = await browser.call("GET", "/api/v1/auth/me", expect=401)
        assert refused["error"]["code"] == "not_authenticated"
    error = await login_refused(server, "wang", PASSWORD)
    assert error["code"] == "account_disabled"
    assert "ask your administrator to enable it" in error["message"]
    # A wrong password is told nothing about the account.
    assert (await login_refused(server, "wang", "not-the-password"))["code"] == (
        "invalid_credentials"
    )
    [disabled] = await entries(server, "admin.user_disabled")
    assert (disabled.actor, disabled.actor_role, disabled.target) == (me(), "system", "wang")
    assert disabled.detail["reason"] == "left the bank" and disabled.detail["logins_ended"] == 2
    failed = await entries(server, "auth.login_failed")
    assert [e.detail["reason"] for e in failed] == ["account_disabled", "invalid_credentials"]

    code, _, err = await vteller(
        *run, "admin", "disable-user", "--username", "wang", "--reason", "left the bank"
    )
    assert code == 1 and "'wang' is already disabled" in err and "left the bank" in err
    code, _, err = await vteller(
        *run, "admin", "disable-user", "--username", "wang", "--reason", ""
    )
    assert code == 1 and "The reason needs 4 to 500 characters" in err

    code, out, err = await vteller(*run, "admin", "enable-user", "--username", "wang")
    assert code == 0, err
    [enabled] = await entries(server, "admin.user_enabled")
    assert (enabled.actor, enabled.target) == (me(), "wang")
    assert enabled.detail["disabled_reason"] == "left the bank"
    # The logins the disable ended stay ended; a new one works.
    await teller.call("GET", "/api/v1/auth/me", expect=401)
    await server.client().login("wang")
    code, _, err = await vteller(*run, "admin", "enable-user", "--username", "wang")
    assert code == 1 and "'wang' is not disabled" in err


async def test_reset_password_ends_the_logins_and_the_old_password(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    teller = await logged_in(server, "wang")
    run = (server, capsys, monkeypatch)
    code, _, err = await vteller(
        *run, "admin", "reset-password", "--username", "wang", "--password-stdin", stdin="short"
    )
    assert code == 1 and "error: --password: String should have at least 12 characters" in err
    await teller.call("GET", "/api/v1/auth/me")  # nothing changed

    code, out, err = await vteller(
        *run,
        "admin",
        "reset-password",
        "--username",
        "wang",
        "--password-stdin",
        stdin=NEW_PASSWORD + "\n",
    )
    assert code == 0, err
    assert "1 login(s) ended" in out
    await teller.call("GET", "/api/v1/auth/me", expect=401)
    assert (await login_refused(server, "wang", PASSWORD))["code"] == "invalid_credentials"
    await server.client().login("wang", NEW_PASSWORD)
    [reset] = await entries(server, "admin.password_reset")
    assert (reset.actor, reset.actor_role, reset.target) == (me(), "system", "wang")
    assert NEW_PASSWORD not in json.dumps(reset.detail)


async def test_unlock_lets_a_locked_out_account_log_in_from_anywhere(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    own_browser = await logged_in(server, "wang")  # now a known device of wang's
    await own_browser.call("POST", "/api/v1/auth/logout")
    new_browser = server.client()
    limit = server.settings.login_max_failures_per_user
    for browser in (own_browser, new_browser):  # the device's own limit, then the account's
        for n in range(limit):
            body = {"username": "wang", "password": f"wrong-guess-{n}"}
            await browser.call("POST", "/api/v1/auth/login", body, expect=401)
        body = {"username": "wang", "password": PASSWORD}
        assert (await browser.call("POST", "/api/v1/auth/login", body, expect=429))["error"][
            "code"
        ] == "rate_limited"

    code, out, err = await vteller(
        server, capsys, monkeypatch, "admin", "unlock-user", "--username", "wang"
    )
    assert code == 0, err
    assert f"unlocked 'wang'; {2 * limit} failed login(s) cleared" in out
    await own_browser.login("wang")
    await new_browser.login("wang")
    [unlocked] = await entries(server, "admin.user_unlocked")
    assert (unlocked.actor, unlocked.actor_role, unlocked.target) == (me(), "system", "wang")


def test_the_actor_names_who_ran_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    account = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.setenv("SUDO_USER", "alice")
    assert operator() == f"os:alice@{socket.gethostname()} as {account}"
    monkeypatch.setattr("server.commands.socket.gethostname", lambda: "h" * 100)
    assert len(operator()) == 64 and operator().endswith(f"h as {account}")


async def test_a_disabled_teller_leaves_the_call_as_after_a_drop_and_the_recording_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = support.test_settings(tmp_path, ws_login_check_seconds=0.3, rejoin_grace_seconds=1)
    async with support.running_server(settings) as server:
        teller, customer, session_id = await _teller_and_customer(server)
        try:
            await teller.join()
            await customer.join()
            await teller.wait_for_media(customer.participant_id, "camera")
            archive_id = str((await _record(server, teller, customer))["archive_id"])

            code, _, err = await vteller(
                server, capsys, monkeypatch,
                "admin", "disable-user", "--username", "teller1", "--reason", "left the bank",
            )  # fmt: skip
            assert code == 0
            assert f"'teller1' is in sessions in progress {session_id}" in err
            assert (await teller.expect("error", timeout=5))["code"] == "not_authenticated"
            assert (await teller.expect("closed"))["code"] == 4401
            left = await customer.expect("participant_left")
            assert (left["participant_id"], left["reason"]) == (
                teller.participant_id,
                "disconnected",
            )
            # The teller cannot come back; the call goes on and the recording with it.
            again = Bot(teller.client, session_id)
            await again.connect()
            assert (await again.expect("error"))["code"] == "not_authenticated"
            assert (await again.expect("closed"))["code"] == 4401
            assert (await customer.expect("participant_left", timeout=5))["reason"] == "timeout"
            await asyncio.sleep(1)
        finally:
            await customer.close(leave=True)
            await teller.close()
        # The customer was the last one out: the recording is sealed whole and stored.
        for _ in range(150):  # the seal follows the customer's leave within seconds
            if (status := await _archive_status(server, archive_id)) != "recording":
                break
            await asyncio.sleep(0.2)
        assert status == "sealed"
        await _stored(server, archive_id)


async def _archive_status(server: RunningServer, archive_id: str) -> str | None:
    async with server.services.engine.connect() as connection:
        status: str | None = await connection.scalar(
            select(Archive.status).where(Archive.id == archive_id)
        )
    return status


async def test_a_disabled_tellers_waiting_customers_are_told_or_served_by_another_teller(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = await staff(server, "chen", Role.SUPERVISOR)
    wang, wang_id = await on_duty(server, "wang", ["wealth"], supervisor)
    li, _ = await on_duty(server, "li", ["wealth"], supervisor)
    invited = await invite(wang)  # the customer has not opened the link yet
    in_call = await invite(wang)
    async with server.services.engine.begin() as connection:
        await connection.execute(
            update(CallSession)
            .where(CallSession.id == in_call["session"]["id"])
            .values(state="active", started_at=utcnow())
        )
    taken_customer = await join(server, "wealth")  # taken by wang, link not opened yet
    taken = await wang.call("POST", "/api/v1/queue/take", expect=201)
    routed_customer = await join(server, "wealth")  # routed to wang by the supervisor
    routed = await ticket(routed_customer)
    await supervisor.call(
        "POST", f"/api/v1/queue/tickets/{routed['id']}/assign", {"teller_id": wang_id}
    )

    code, out, err = await vteller(
        server, capsys, monkeypatch,
        "admin", "disable-user", "--username", "wang", "--reason", "left the bank",
    )  # fmt: skip
    assert code == 0, err
    assert (
        "2 session(s) not yet started cancelled (their links now say so), 1 of them queue "
        "customers put back in their place in the queue; 1 waiting queue customer(s) routed to "
        "them moved to the general queue"
    ) in out
    # The call in progress goes on as documented: only it is named.
    assert f"is in sessions in progress {in_call['session']['id']}:" in err

    # The invited customer's link says the appointment was cancelled, and what to do.
    reply = await send(server.client(), "POST", f"/api/v1/join/{token_of(invited)}")
    assert_error(reply, 410, "session_cancelled")
    assert "Please call the bank or contact your branch" in reply.body["error"]["message"]
    # The queue customers wait again, first the one taken before; another teller takes them.
    first = await ticket(taken_customer)
    assert (first["state"], first["position"], first["join_url"]) == ("waiting", 1, None)
    second = await ticket(routed_customer)
    assert (second["state"], second["position"]) == ("waiting", 2)
    board = await supervisor.call("GET", "/api/v1/queue/dashboard")
    assert [t["assigned_to"] for t in board["queue"]] == [None, None]
    served = await li.call("POST", "/api/v1/queue/take", expect=201)
    assert served["ticket"]["id"] == first["id"]
    entered = await taken_customer.join_link((await ticket(taken_customer))["join_url"])
    assert entered["session"]["id"] == served["session"]["id"] != taken["session"]["id"]

    cancelled = {invited["session"]["id"], taken["session"]["id"]}
    ended = await entries(server, "session.ended")
    assert {e.target for e in ended} == cancelled
    assert {(e.actor, e.actor_role, e.detail["reason"]) for e in ended} == {
        (me(), "system", "teller_disabled")
    }
    back = {e.target: e for e in await entries(server, "queue.reassigned") if e.actor == me()}
    assert set(back) == {first["id"], routed["id"]}
    assert back[first["id"]].detail == {
        "teller_id": None,
        "previous": wang_id,
        "reason": "teller_disabled",
        "session_id": taken["session"]["id"],
    }
    assert back[routed["id"]].detail == {
        "teller_id": None,
        "previous": wang_id,
        "reason": "teller_disabled",
    }
