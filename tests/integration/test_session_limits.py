"""How many take part in one session: no more experts than the recording has tracks for."""

from __future__ import annotations

from recorder.container import EXPERT_SLOTS
from server.auth.principal import Role
from tests.integration.test_http_api import assert_error, invite, send, staff
from tests.support.server import RunningServer


async def test_a_session_takes_no_more_experts_than_the_recording_can_hold(
    server: RunningServer, cheap_password_hashing: None
) -> None:
    teller = await staff(server, "teller1")
    session_id = (await invite(teller))["session"]["id"]
    path = f"/api/v1/sessions/{session_id}/experts"
    for n in range(1, EXPERT_SLOTS + 2):
        await server.user(f"expert{n}", Role.EXPERT, f"专家{n}")
    for n in range(1, EXPERT_SLOTS + 1):
        await teller.call("POST", path, {"username": f"expert{n}"}, expect=201)
    # One more would be in the call, seen and heard, and missing from the dual recording.
    refused = await send(
        teller, "POST", path, {"username": f"expert{EXPERT_SLOTS + 1}"}, csrf=teller.csrf
    )
    assert_error(refused, 409, "too_many_experts")
    detail = await teller.call("GET", f"/api/v1/sessions/{session_id}")
    experts = [p for p in detail["session"]["participants"] if p["role"] == "expert"]
    assert len(experts) == EXPERT_SLOTS
    # Another session has room for the same expert.
    elsewhere = (await invite(teller))["session"]["id"]
    await teller.call(
        "POST",
        f"/api/v1/sessions/{elsewhere}/experts",
        {"username": f"expert{EXPERT_SLOTS + 1}"},
        expect=201,
    )
