"""Identity verification in a call: real engines, media from the customer's own track.

The customer bot's camera shows what a customer would hold up: the card's sides, then their face
turning as asked (tests/fixtures/liveness.py, synthetic turns of a real photo), or a still photo.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from recorder.store.s3 import ArchiveBucket, S3Archive
from server.auth.principal import Role
from server.db.models import Archive, AuditEntry
from server.identity.config import IdentityConfig
from server.identity.idcard import mask_id_number
from server.identity.liveness import Challenge
from tests.fixtures.idcards import (
    VALID_SPECS,
    encode_jpeg,
    load_face,
    on_table,
    render_back,
    render_front,
    vectron_image,
)
from tests.fixtures.liveness import (
    TURN_DEGREES,
    static_sequence,
    turn_sequence,
    turned,
    webcam_frame,
)
from tests.integration.test_call import _expert_bot, _teller_and_customer
from tests.support import server as support
from tests.support.bot import Bot, FramesTrack

SPEC = VALID_SPECS[2]  # its portrait is obama2.jpg; the live face is obama.jpg: same person
FPS = 15


def _card(side: str) -> np.ndarray:
    card = render_front(SPEC) if side == "front" else render_back(SPEC)
    return on_table(card, (1280, 720))


def _face() -> list[np.ndarray]:
    # Turns held for 1.2 s, as people do when asked: judged frames stay enough on a busy machine.
    return turn_sequence(load_face("obama.jpg"), FPS, hold_s=1.2)


def _answers(turning: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
    """What the customer shows for each challenge: facing the camera, then the turn asked for,
    held (looped: a customer who is slow to turn is seen turning again the same way). With
    `turning`, the frontal face is the holder's photo and that other face does the turns."""
    frontal = webcam_frame(load_face("obama.jpg"))
    mover = frontal if turning is None else webcam_frame(turning)
    return {
        challenge: [frontal] * FPS + [turned(mover, degrees)] * round(1.2 * FPS)
        for challenge, degrees in (("turn_left", TURN_DEGREES), ("turn_right", -TURN_DEGREES))
    }


async def _follow_prompts(
    customer: Bot, camera: FramesTrack, answers: dict[str, list[np.ndarray]] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The customer turns as each liveness challenge asks, until the step ends: the challenges
    asked and the customer's `identity` message with the result."""
    answers = answers or _answers()
    asked: list[str] = []
    while True:
        message = await customer.expect("identity", timeout=60)
        challenge = message["challenge"]
        if challenge is not None and challenge["index"] == len(asked):
            asked.append(challenge["challenge"])
            camera.show(answers[challenge["challenge"]])
        if message["steps"]["liveness"]["status"] in ("passed", "failed"):
            return asked, message


def _config(**overrides: Any) -> IdentityConfig:
    # Turns only: the default engine (YuNet) gives 5 landmarks, which judge turns, not blinks.
    values: dict[str, Any] = {
        "liveness_challenges": (Challenge.TURN_LEFT, Challenge.TURN_RIGHT),
    } | overrides
    return IdentityConfig(**values)


@pytest.fixture
async def idserver(tmp_path: Path) -> AsyncIterator[support.RunningServer]:
    settings = support.test_settings(
        tmp_path, identity=_config(max_attempts=2, challenge_seconds=4.0)
    )
    async with support.running_server(settings) as running:
        yield running


async def _in_call(server: support.RunningServer) -> tuple[Bot, Bot, FramesTrack, str]:
    teller, customer, session_id = await _teller_and_customer(server)
    camera = FramesTrack([_card("front")], fps=FPS)
    customer.video = camera
    await teller.join()
    await customer.join()
    await teller.wait_for_media(customer.participant_id, "camera")
    return teller, customer, camera, session_id


async def _identity(
    bot: Bot, until: set[str] | None = None, step: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    """The next `identity` message in one of the states `until`, or with `step` finished."""
    while True:
        message = await bot.expect("identity", timeout=timeout)
        if until is not None and message["state"] in until:
            return message
        if step is not None and message["steps"][step]["status"] in ("passed", "failed"):
            return message


async def _consented(teller: Bot, customer: Bot) -> None:
    await teller.send({"type": "identity_start"})
    await customer.expect("identity_consent_request")
    await customer.send({"type": "identity_consent", "granted": True})
    await _identity(teller, until={"in_progress"})


async def _step(teller: Bot, step: str) -> dict[str, Any]:
    await teller.send({"type": "identity_step", "step": step})
    return await _identity(teller, step=step)


async def _audit(server: support.RunningServer) -> list[AuditEntry]:
    async with server.services.sessions._db() as db:  # the store's session factory
        return list(await db.scalars(select(AuditEntry).order_by(AuditEntry.seq)))


@pytest.fixture
async def patient(tmp_path: Path) -> AsyncIterator[support.RunningServer]:
    # A recording runs alongside (live checks decode both cameras too): on a 2-core CI machine
    # give each challenge room for a slow start of the decoder and a second try at the turn.
    settings = support.test_settings(tmp_path, identity=_config(challenge_seconds=14.0))
    async with support.running_server(settings) as running:
        yield running


async def test_automatic_verification_passes_and_reaches_the_archive(
    patient: support.RunningServer,
) -> None:
    server = patient
    teller, customer, camera, session_id = await _in_call(server)
    try:
        # Recording first, so the identity moment lands in this archive's manifest.
        await teller.send({"type": "recording_start"})
        await customer.expect("consent_request")
        await customer.send({"type": "consent", "granted": True})
        await _consented(teller, customer)

        front = await _step(teller, "card_front")
        assert front["steps"]["card_front"]["status"] == "passed", front
        assert front["fields"]["front"]["id_number"] == mask_id_number(SPEC.id_number)
        assert front["fields"]["front"]["name"] == SPEC.name

        camera.show([_card("back")])
        back = await _step(teller, "card_back")
        assert back["steps"]["card_back"]["status"] == "passed", back
        assert back["fields"]["back"]["issuing_authority"] == SPEC.authority

        camera.show(_face())
        face = await _step(teller, "face")
        assert face["steps"]["face"]["status"] == "passed", face

        follow = asyncio.ensure_future(_follow_prompts(customer, camera))
        await teller.send({"type": "identity_step", "step": "liveness"})
        done = await _identity(teller, step="liveness")
        asked, seen = await follow
        assert done["state"] == "passed", done
        assert all(s["status"] == "passed" for s in done["steps"].values())
        assert 2 <= len(asked) <= 3 and set(asked) <= {"turn_left", "turn_right"}

        # The customer's copy: outcomes only, no card fields, no attempts, no scores anywhere.
        assert seen["state"] == "passed"
        assert "fields" not in seen and "attempts" not in seen["steps"]["face"]
        assert "score" not in json.dumps(seen) and "score" not in json.dumps(done)

        await teller.send({"type": "recording_stop"})
        while (await teller.expect("recording", timeout=30))["state"] != "sealed":
            pass
    finally:
        await customer.close()
        await teller.close()

    # Stored encrypted: the name is nowhere in the clear, and the record opens with the key.
    records = server.services.identity.records
    rows = await records.for_session(session_id)
    assert [r.step for r in rows] == ["card_front", "card_back", "face", "liveness"]
    assert all(r.outcome == "pass" for r in rows)
    assert all(SPEC.name.encode() not in r.sealed for r in rows)
    assert all(SPEC.id_number.encode() not in r.sealed for r in rows)
    opened = await records.open(rows[0].id)
    assert opened.detail["fields"]["id_number"] == SPEC.id_number
    assert set(opened.evidence) == {"card_front.jpg"}
    face_record = await records.open(rows[2].id)
    assert face_record.detail["decision"] == "pass" and face_record.detail["score"] > 0.5

    actions = [e.action for e in await _audit(server) if e.target == session_id]
    for action in ("identity.requested", "identity.consent", "identity.checked", "identity.result"):
        assert action in actions

    # The archive's manifest carries the identity moment: scores as decimals, evidence hashes.
    manifest = await _manifest(server, session_id)
    identity = manifest["identity"]
    assert identity["decision"] == "pass" and identity["method"] == "automatic"
    assert identity["steps"]["face"]["threshold"] == "0.5000"
    assert identity["steps"]["face"]["evidence_sha256"] == rows[2].evidence_sha256
    assert SPEC.id_number not in json.dumps(manifest, ensure_ascii=False)
    names = [m["name"] for m in manifest["marks"]]
    assert "identity.start" in names and "identity.end" in names


async def _manifest(server: support.RunningServer, session_id: str) -> dict[str, Any]:
    async with server.services.sessions._db() as db:
        archive = await db.scalar(select(Archive).where(Archive.session_id == session_id))
    assert archive is not None
    await server.services.rooms._recorder.uploader.flush(timeout=30)
    stored = S3Archive(ArchiveBucket.from_settings(server.settings.store), f"archives/{archive.id}")
    data: dict[str, Any] = json.loads(await asyncio.to_thread(stored.read, "manifest.json"))
    return data


async def test_a_photo_replay_fails_liveness_then_the_teller_decides_manually(
    idserver: support.RunningServer,
) -> None:
    server = idserver
    teller, customer, camera, session_id = await _in_call(server)
    expert = await _expert_bot(server, teller, session_id)
    try:
        await expert.join()
        await _consented(teller, customer)
        # The movements prove nothing until they can be matched with the card's portrait.
        await teller.send({"type": "identity_step", "step": "liveness"})
        refused = await teller.expect("error")
        assert refused["code"] == "out_of_order" and "front of the card" in refused["message"]
        front = await _step(teller, "card_front")
        assert front["steps"]["card_front"]["status"] == "passed", front

        # Only staff may run steps; the customer is told so and nothing starts.
        await customer.send({"type": "identity_step", "step": "face"})
        refused = await customer.expect("error")
        assert refused["code"] == "forbidden" and refused["ref"] == "identity_step"

        camera.show(static_sequence(load_face("obama.jpg"), FPS, 1.0))
        for attempt in (1, 2):
            failed = await _step(teller, "liveness")
            liveness = failed["steps"]["liveness"]
            assert liveness["status"] == "failed" and liveness["attempts"] == attempt
            assert liveness["messages"][0]["reason"] == "challenge_not_completed"
        assert failed["state"] == "manual_review"

        await teller.send({"type": "identity_step", "step": "liveness"})
        assert (await teller.expect("error"))["code"] == "out_of_order"
        await teller.send(
            {"type": "identity_manual", "decision": "pass", "reason": "核对身份证原件，人证一致"}
        )
        done = await _identity(teller, until={"verified_manually"})
        assert done["manual"]["decision"] == "pass"
        seen = await _identity(customer, until={"verified_manually"})
        assert "manual" not in seen  # the teller's reason stays with staff
    finally:
        await expert.close()
        await customer.close()
        await teller.close()
    # An expert is brought in for advice: they see nothing of the customer's identity.
    assert "identity" not in expert.history
    manual = [e for e in await _audit(server) if e.action == "identity.manual"]
    assert manual and manual[0].detail["reason"] == "核对身份证原件，人证一致"
    rows = await server.services.identity.records.for_session(session_id)
    assert [r.step for r in rows] == ["card_front", "liveness", "liveness", "manual"]


async def test_a_photo_of_the_holder_then_a_helper_turning_fails_liveness(
    idserver: support.RunningServer,
) -> None:
    # The card holder's photo held up for the frontal pose (the picture matched with the card),
    # then somebody else doing the turns: the face that moved is not the face that matched.
    server = idserver
    teller, customer, camera, session_id = await _in_call(server)
    try:
        await _consented(teller, customer)
        front = await _step(teller, "card_front")
        assert front["steps"]["card_front"]["status"] == "passed", front
        follow = asyncio.ensure_future(
            _follow_prompts(customer, camera, _answers(turning=vectron_image("yaoming.jpg")))
        )
        await teller.send({"type": "identity_step", "step": "liveness"})
        failed = await _identity(teller, step="liveness")
        _, seen = await follow
    finally:
        await customer.close()
        await teller.close()
    liveness = failed["steps"]["liveness"]
    assert liveness["status"] == "failed" and liveness["attempts"] == 1, failed
    assert liveness["messages"][0]["reason"] == "face_continuity"
    assert "请同一人全程正对摄像头完成动作" in liveness["messages"][0]["message_zh"]
    assert seen["steps"]["liveness"]["messages"] == liveness["messages"]
    assert "similarity" not in json.dumps(seen) and "similarity" not in json.dumps(failed)
    row = (await server.services.identity.records.for_session(session_id))[-1]
    assert row.step == "liveness" and row.reason == "face_continuity"
    opened = await server.services.identity.records.open(row.id)
    assert opened.detail["continuity"]["break"] == "other_face"
    checked = [e.detail for e in await _audit(server) if e.action == "identity.checked"]
    assert checked[-1]["step"] == "liveness" and checked[-1]["reason"] == "face_continuity"


async def test_declined_consent_leaves_only_the_manual_check(
    idserver: support.RunningServer,
) -> None:
    teller, customer, _, session_id = await _in_call(idserver)
    try:
        await teller.send({"type": "identity_start"})
        await customer.expect("identity_consent_request")
        await customer.send({"type": "identity_consent", "granted": False})
        declined = await _identity(teller, until={"manual_required"})
        assert declined["consent"] is False
        await teller.send({"type": "identity_step", "step": "card_front"})
        refused = await teller.expect("error")
        assert refused["code"] == "out_of_order" and "manually" in refused["message"]
        await teller.send({"type": "identity_manual", "decision": "fail", "reason": "no"})
        assert (await teller.expect("error"))["code"] == "invalid_message"  # reason too short
        await teller.send(
            {"type": "identity_manual", "decision": "fail", "reason": "客户未携带身份证原件"}
        )
        done = await _identity(teller, until={"verified_manually"})
        assert done["manual"]["decision"] == "fail"
    finally:
        await customer.close()
        await teller.close()
    rows = await idserver.services.identity.records.for_session(session_id)
    assert [(r.step, r.outcome) for r in rows] == [("manual", "fail")]


async def test_card_upload_bad_images_and_a_different_face(
    idserver: support.RunningServer,
) -> None:
    server = idserver
    teller, customer, camera, session_id = await _in_call(server)
    camera.show([webcam_frame(load_face("obama.jpg"))])  # no card in view: only the upload
    try:
        await _consented(teller, customer)
        other = VALID_SPECS[1]  # a valid card whose portrait is another person

        # Not an image: refused with a reason, no attempt used.
        garbage = b"%PDF-1.4 not a photo"
        await customer.send({"type": "identity_upload", "side": "front", "bytes": len(garbage)})
        assert customer.ws is not None
        await customer.ws.send_bytes(garbage)
        bad = await customer.expect("error")
        assert bad["code"] == "bad_image" and bad["message"].startswith("not_an_image")
        # The announced size must match what comes.
        await customer.send({"type": "identity_upload", "side": "front", "bytes": 10})
        await customer.ws.send_bytes(b"12345")
        assert (await customer.expect("error"))["code"] == "invalid_message"
        # A binary frame nobody announced, and a teller trying to upload.
        await customer.ws.send_bytes(b"12345")
        assert (await customer.expect("error"))["code"] == "bad_json"
        await teller.send({"type": "identity_upload", "side": "front", "bytes": 5})
        assert (await teller.expect("error"))["code"] == "forbidden"
        assert await server.services.identity.records.attempts(session_id, "card_front") == 0

        photo = encode_jpeg(on_table(render_front(other)))
        await customer.send({"type": "identity_upload", "side": "front", "bytes": len(photo)})
        await customer.ws.send_bytes(photo)
        front = await _identity(teller, step="card_front")
        assert front["steps"]["card_front"]["status"] == "passed", front
        assert front["fields"]["front"]["id_number"] == mask_id_number(other.id_number)

        mismatch = await _step(teller, "face")
        assert mismatch["steps"]["face"]["status"] == "failed"
        assert mismatch["steps"]["face"]["messages"][0]["reason"] == "no_match"
    finally:
        await customer.close()
        await teller.close()
    rows = await server.services.identity.records.for_session(session_id)
    opened = await server.services.identity.records.open(rows[0].id)
    assert opened.detail["source"] == "upload"


async def _identity_messages(bot: Bot, step: str) -> list[dict[str, Any]]:
    """Every `identity` message `bot` gets until `step` has finished."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["steps"][step]["status"] not in ("passed", "failed"):
        seen.append(await bot.expect("identity", timeout=60))
    return seen


async def test_staff_get_the_card_number_and_address_masked(
    idserver: support.RunningServer,
) -> None:
    # PIPL's minimum necessary: the teller and a supervisor compare the card with the customer,
    # they do not copy its number. What reaches their browsers (and its network log) is masked;
    # the encrypted record keeps the card as read (and the auditor's index is given it:
    # tests/integration/test_auditor_portal.py).
    server = idserver
    teller, customer, _camera, session_id = await _in_call(server)
    await server.user("super1", Role.SUPERVISOR, "陈主管")
    supervisor_http = server.client()
    await supervisor_http.login("super1")
    supervisor = Bot(supervisor_http, session_id, publish=False)
    try:
        await supervisor.join()
        await _consented(teller, customer)
        await _identity(supervisor, until={"in_progress"})
        photo = encode_jpeg(on_table(render_front(SPEC)))
        await customer.send({"type": "identity_upload", "side": "front", "bytes": len(photo)})
        assert customer.ws is not None
        await customer.ws.send_bytes(photo)
        for bot in (teller, supervisor):
            seen = await _identity_messages(bot, "card_front")
            assert seen[-1]["steps"]["card_front"]["status"] == "passed", seen[-1]
            shown = seen[-1]["fields"]["front"]
            assert shown["id_number"] == SPEC.id_number[:6] + "********" + SPEC.id_number[-4:]
            assert shown["address"] == "广东省深圳市南山区****"
            # The hidden middle of the number is the birth date: only its year is shown.
            assert shown["birth_date"] == str(SPEC.birth.year)
            assert shown["name"] == SPEC.name
            sent = json.dumps(seen, ensure_ascii=False)
            assert SPEC.id_number not in sent and SPEC.id_number[6:14] not in sent
            assert SPEC.address not in sent and "科技园" not in sent
            assert SPEC.birth.isoformat() not in sent
    finally:
        await supervisor.close()
        await customer.close()
        await teller.close()
    rows = await server.services.identity.records.for_session(session_id)
    opened = await server.services.identity.records.open(rows[0].id)
    assert opened.detail["fields"]["id_number"] == SPEC.id_number
    assert opened.detail["fields"]["address"] == SPEC.address


async def test_no_camera_is_reported_not_waited_for(idserver: support.RunningServer) -> None:
    teller, customer, _ = await _teller_and_customer(idserver)
    customer.publish = False
    try:
        await teller.join()
        await customer.join()
        await _consented(teller, customer)
        result = await _step(teller, "card_front")
        step = result["steps"]["card_front"]
        assert step["status"] == "failed" and step["messages"][0]["reason"] == "no_video"
    finally:
        await customer.close()
        await teller.close()


async def test_a_restarted_room_resumes_the_verification(idserver: support.RunningServer) -> None:
    server = idserver
    teller, customer, camera, session_id = await _in_call(server)
    camera.show(_face())
    try:
        await _consented(teller, customer)
        # Photographed upside down: the card is read, and kept, turned upright.
        photo = encode_jpeg(cv2.rotate(on_table(render_front(SPEC)), cv2.ROTATE_180))
        await customer.send({"type": "identity_upload", "side": "front", "bytes": len(photo)})
        assert customer.ws is not None
        await customer.ws.send_bytes(photo)
        front = await _identity(teller, step="card_front")
        assert front["steps"]["card_front"]["status"] == "passed", front
        # The worker drops every room (as a restart does); everyone reconnects.
        await server.services.rooms.shutdown()
    finally:
        await customer.close()
        await teller.close()
    teller = Bot(teller.client, session_id)
    customer = Bot(customer.client, session_id, video=FramesTrack(_face(), fps=FPS))
    try:
        await teller.join()
        resumed = await teller.expect("identity")
        assert resumed["state"] == "in_progress" and resumed["consent"] is True
        assert resumed["steps"]["card_front"] == {"status": "passed", "messages": [], "attempts": 1}
        assert resumed["fields"]["front"]["id_number"] == mask_id_number(SPEC.id_number)
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        # The card's photo came back from the encrypted record, upright: the face can be matched.
        face = await _step(teller, "face")
        assert face["steps"]["face"]["status"] == "passed", face
    finally:
        await customer.close()
        await teller.close()
