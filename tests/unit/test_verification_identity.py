"""The in-call verification's own rules, with stand-in engines and video: which step may run
when, liveness answering each prompt in time, the card photo kept upright, and a room restored
from the records sealing the same manifest as the room that ran the steps; and, with the real
face engines on the liveness fixtures, that the face that moves is the face that matched."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import cv2
import numpy as np
import pytest

from server.audit import AuditLog
from server.identity.config import IdentityConfig
from server.identity.engines import FaceObservation, IdentityEngines
from server.identity.face.match import Decision, MatchReason, MatchResult
from server.identity.images import decode_image
from server.identity.liveness import MAX_SHIFT, Challenge
from server.identity.ocr import Side
from server.identity.ocr.reader import CardReading
from server.identity.records import IdentityRecords
from server.identity.verification import (
    CHALLENGE_MISSED,
    FACE_CHANGED,
    FACE_CONTINUITY,
    FACE_LOST,
    NO_CARD,
    NO_FACE,
    NO_VIDEO,
    SEVERAL_FACES,
    IdentityServices,
    IdentityVerification,
    Message,
    Step,
)
from server.sessions.store import SessionStore
from server.signaling.protocol import ProtocolError
from tests.fixtures.idcards import (
    ANNEX_BACK,
    ANNEX_FRONT,
    TODAY,
    VALID_SPECS,
    load_face,
    on_table,
    render_front,
    vectron_image,
)
from tests.fixtures.liveness import FACE_WIDTH, TURN_DEGREES, turned, webcam_frame
from tests.support.database import add_session, migrated_database

FRONT, BACK = ANNEX_FRONT, ANNEX_BACK
# The stand-in card photos: the reader below tells the sides apart by their grey level.
FRONT_PHOTO = np.full((120, 160, 3), 60, np.uint8)
BACK_PHOTO = np.full((120, 160, 3), 180, np.uint8)
TURN = 0.4  # yaw ratio of a clear turn, past YAW_TURNED


def five(yaw: float) -> np.ndarray:
    """5-point landmarks (eyes, nose, mouth corners) of a face with this yaw ratio."""
    return np.array(
        [[100.0, 100.0], [200.0, 100.0], [150.0 + 100 * yaw, 150.0], [120.0, 200.0], [180.0, 200.0]]
    )


class Engines:
    """Stand-in engines: a reader that reads whichever side it is shown perfectly, a face
    matcher with a fixed answer, and a live face whose yaw `pose` gives, picture by picture."""

    def __init__(self, config: IdentityConfig, decision: Decision = Decision.PASS) -> None:
        self.config = config
        self.decision = decision
        self.pose: Callable[[], float] = lambda: 0.0
        self.in_view = True  # False: the camera shows nobody
        self.matched: list[np.ndarray] = []  # the card photos faces were compared with

    def supported_challenges(self) -> set[Challenge]:
        return {Challenge.TURN_LEFT, Challenge.TURN_RIGHT}

    def ocr(self) -> Any:
        return SimpleNamespace(model_versions={"det": "det@1", "rec": "rec@1"})

    async def read_card_async(self, image: np.ndarray) -> CardReading:
        side: Side = "front" if image[0, 0, 0] == FRONT_PHOTO[0, 0, 0] else "back"
        return CardReading(side, FRONT if side == "front" else BACK, [], False, [], image)

    async def observe_face_async(
        self, image: np.ndarray, previous: np.ndarray | None = None, *, embed: bool = False
    ) -> FaceObservation:
        if not self.in_view:
            return FaceObservation(0, None, 0.0)
        # One person throughout: the embedding of the same face each time.
        embedding = np.ones(4) if embed else None
        similarity = 1.0 if embed and previous is not None else None
        return FaceObservation(
            1, five(self.pose()), 120.0, (90.0, 80.0, 210.0, 230.0), embedding, similarity
        )

    async def match_async(self, card: np.ndarray, live: np.ndarray) -> MatchResult:
        self.matched.append(card)
        passed = self.decision is Decision.PASS
        reason = MatchReason.MATCH if passed else MatchReason.NO_MATCH
        return MatchResult(
            self.decision, reason, 0.81234 if passed else 0.1, 0.5, "fake", {"rec": "sface@1"}
        )


class Audit:
    def __init__(self) -> None:
        self.facts: list[tuple[str, dict[str, Any]]] = []

    async def append(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def append_fact(self, action: str, **kwargs: Any) -> None:
        self.facts.append((action, kwargs.get("detail") or {}))


class Room:
    """What a session's room gives the verification, and what it gets back."""

    def __init__(self, services: IdentityServices) -> None:
        self.services = services
        self.published: list[dict[str, Any]] = []
        self.verification = self.new()

    def new(self) -> IdentityVerification:
        """The verification as a (re)created room makes it."""

        async def send(message: dict[str, Any], roles: frozenset[Any]) -> None:
            pass

        return IdentityVerification(
            "s1",
            self.services,
            send,
            lambda: None,
            lambda moment, phase: None,
            self.published.append,
        )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Any]:
    async with migrated_database(tmp_path / "db.sqlite") as factory:
        await add_session(factory)
        yield factory


@pytest.fixture
def config() -> IdentityConfig:
    return IdentityConfig(
        challenge_count=(2, 2),
        liveness_challenges=(Challenge.TURN_LEFT, Challenge.TURN_RIGHT),
        max_attempts=2,
        challenge_seconds=2.0,
    )


def services_with(db: Any, tmp_path: Path, engines: IdentityEngines | Engines) -> IdentityServices:
    """The verification's services around `engines`, on the test's database, on TODAY."""
    return IdentityServices(
        engines=cast(IdentityEngines, engines),
        records=IdentityRecords(db, tmp_path / "keys" / "identity-keyring.json"),
        store=SessionStore(db),
        audit=cast(AuditLog, Audit()),
        today=lambda: TODAY,
    )


@pytest.fixture
def services(db: Any, tmp_path: Path, config: IdentityConfig) -> IdentityServices:
    return services_with(db, tmp_path, Engines(config))


def engines_of(services: IdentityServices) -> Engines:
    return cast(Engines, services.engines)


def camera(v: IdentityVerification, monkeypatch: pytest.MonkeyPatch, pictures: int = 40) -> None:
    """A camera that shows `pictures` pictures per capture, as fast as they are asked for."""

    async def show(seconds: float, max_fps: float) -> AsyncIterator[np.ndarray]:
        for _ in range(pictures):
            yield np.zeros((120, 160, 3), np.uint8)

    monkeypatch.setattr(v, "_pictures", show)


def answering(
    v: IdentityVerification, before: Callable[[float], list[float]]
) -> Callable[[], float]:
    """A customer who, after each prompt, takes the poses `before(turn)` gives (`turn`: the
    yaw of the turn asked for), then holds the turn asked for; facing the camera when nothing
    is asked (the card's portrait is looked at too)."""
    counts: dict[int, Iterator[int]] = {}

    def pose() -> float:
        asked = v._challenge
        if asked is None:
            return 0.0
        n = next(counts.setdefault(asked["index"], itertools.count()))
        turn = TURN if asked["challenge"] == Challenge.TURN_LEFT else -TURN
        first = before(turn)
        return first[n] if n < len(first) else turn

    return pose


def following(v: IdentityVerification) -> Callable[[], float]:
    """A customer who does as asked: two frontal pictures after each prompt, then the turn."""
    return answering(v, lambda turn: [0.0, 0.0])


def wrong_way_first(v: IdentityVerification) -> Callable[[], float]:
    """Frontal, the turn the other way, frontal again, then the turn asked for."""
    return answering(v, lambda turn: [0.0, 0.0, -turn, -turn, 0.0, 0.0])


async def consented(v: IdentityVerification, granted: bool = True) -> None:
    await v.start("teller", customer_connected=True)
    await v.give_consent("customer", granted)


async def consenting_customer(
    services: IdentityServices,
    monkeypatch: pytest.MonkeyPatch,
    pose: Callable[[IdentityVerification], Callable[[], float]] = following,
) -> Room:
    """A room whose customer has consented and is in front of the camera, moving as `pose`
    says (by default doing as asked)."""
    room = Room(services)
    camera(room.verification, monkeypatch)
    engines_of(services).pose = pose(room.verification)
    await consented(room.verification)
    return room


async def run(v: IdentityVerification, step: Step) -> None:
    await v.run_step("teller", step)
    assert v._task is not None
    await v._task


async def upload(v: IdentityVerification, step: Step, photo: np.ndarray | None = None) -> None:
    """The customer uploads a photo of that side (the stand-in card photo by default)."""
    front = step is Step.CARD_FRONT
    if photo is None:
        photo = FRONT_PHOTO if front else BACK_PHOTO
    await v.upload_card("customer", "front" if front else "back", photo)
    assert v._task is not None
    await v._task


async def test_liveness_waits_for_the_card_front_and_then_matches_its_photo(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = (await consenting_customer(services, monkeypatch)).verification
    for step in (Step.LIVENESS, Step.FACE):
        with pytest.raises(ProtocolError) as refused:
            await v.run_step("teller", step)
        # The teller's page shows the server's message for a refused step.
        assert refused.value.code == "out_of_order" and refused.value.ref == "identity_step"
        assert "front of the card first" in refused.value.message
        assert v.steps[step].status == "pending"
    assert await services.records.attempts("s1", "liveness") == 0

    # A helper does the movements beside the customer's photo: they are not the card's holder.
    await upload(v, Step.CARD_FRONT)
    engines_of(services).decision = Decision.FAIL
    await run(v, Step.LIVENESS)
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed" and liveness.messages[0].reason == "face_changed"
    assert engines_of(services).matched == [FRONT_PHOTO]


async def test_turning_the_other_way_first_fails_the_challenge(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = (await consenting_customer(services, monkeypatch, wrong_way_first)).verification
    await upload(v, Step.CARD_FRONT)
    await run(v, Step.LIVENESS)
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed"
    assert liveness.messages[0].reason == "challenge_not_completed"
    # The turn asked for came, but after the other one: the first challenge is where it ended.
    assert len(liveness.manifest["challenges"]) == 1

    engines_of(services).pose = following(v)
    await run(v, Step.LIVENESS)
    assert v.steps[Step.LIVENESS].status == "passed"


async def test_a_turn_after_the_challenge_time_is_not_counted(
    db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = IdentityConfig(
        challenge_count=(1, 1),
        liveness_challenges=(Challenge.TURN_LEFT,),
        challenge_seconds=1.0,
    )
    engines = Engines(config)
    services = services_with(db, tmp_path, engines)
    v = Room(services).verification
    picture = SimpleNamespace(image=np.zeros((120, 160, 3), np.uint8))

    class View:
        async def next_picture(self, timeout: float) -> SimpleNamespace:
            await asyncio.sleep(0.02)  # 50 pictures a second
            return picture

    @contextlib.asynccontextmanager
    async def view(max_fps: float) -> AsyncIterator[View]:
        yield View()

    monkeypatch.setattr(v, "_view", view)
    await consented(v)
    await upload(v, Step.CARD_FRONT)
    # Frontal for two seconds, then the turn: too late for a one-second challenge.
    seen = itertools.count()
    engines.pose = lambda: TURN if next(seen) >= 100 else 0.0
    await run(v, Step.LIVENESS)
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed"
    assert liveness.messages[0].reason == "challenge_not_completed"
    assert next(seen) < 100  # the view was given up before the turn came

    seen = itertools.count()
    engines.pose = lambda: TURN if next(seen) >= 5 else 0.0
    await run(v, Step.LIVENESS)
    assert v.steps[Step.LIVENESS].status == "passed"


async def test_a_restored_room_seals_the_same_manifest(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await consenting_customer(services, monkeypatch)
    v = room.verification
    engines_of(services).decision = Decision.FAIL
    await upload(v, Step.CARD_FRONT)
    await run(v, Step.FACE)  # a first attempt fails: the last one is what counts
    engines_of(services).decision = Decision.PASS
    await run(v, Step.FACE)
    await upload(v, Step.CARD_BACK)
    await run(v, Step.LIVENESS)
    assert v.state == "passed"
    [sealed] = room.published

    restored = room.new()
    await restored.restore()
    assert restored.state == "passed" and restored.consent is True
    assert restored.summary("automatic", None) == sealed
    steps = sealed["steps"]
    assert steps["card_front"]["ocr_models"] == {"det": "det@1", "rec": "rec@1"}
    assert steps["face"] | {"record_id": None, "evidence_sha256": None} == {
        "outcome": "passed",
        "attempts": 2,
        "reason": None,
        "record_id": None,
        "evidence_sha256": None,
        "engine": "fake",
        "model_versions": {"rec": "sface@1"},
        "score": "0.8123",
        "threshold": "0.5000",
    }
    assert len(steps["liveness"]["challenges"]) == 2 and steps["liveness"]["mirrored"] is False


async def test_a_restart_midway_keeps_the_earlier_steps_in_the_manifest(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room(services)
    v = room.verification
    await consented(v)
    await upload(v, Step.CARD_FRONT)
    camera(v, monkeypatch)
    await run(v, Step.FACE)
    before = {step: dict(s.manifest) for step, s in v.steps.items()}

    v = room.new()  # the worker restarted
    await v.restore()
    assert v.state == "in_progress"
    assert {step: s.manifest for step, s in v.steps.items()} == before
    camera(v, monkeypatch)
    engines_of(services).pose = following(v)
    await upload(v, Step.CARD_BACK)
    await run(v, Step.LIVENESS)
    [sealed] = room.published
    assert sealed["decision"] == "pass"
    assert sealed["steps"]["face"]["threshold"] == "0.5000"
    assert "ocr_models" in sealed["steps"]["card_front"]


@pytest.mark.parametrize("decided", [True, False])
async def test_a_declined_consent_survives_a_restart(
    services: IdentityServices, decided: bool
) -> None:
    room = Room(services)
    v = room.verification
    await consented(v, granted=False)
    if decided:
        await v.manual("teller", "pass", "核对身份证原件，人证一致")
        assert room.published[0]["face_recognition_consent"] is False

    restored = room.new()
    await restored.restore()
    assert restored.consent is False
    assert restored.state == ("verified_manually" if decided else "manual_required")
    if decided:
        assert restored.summary("manual", None)["face_recognition_consent"] is False
    else:
        # The teller decides after the restart: the manifest says the customer declined.
        await restored.manual("teller", "fail", "客户未携带身份证原件")
        assert room.published[-1]["face_recognition_consent"] is False


async def test_a_room_restored_before_any_answer_starts_over(services: IdentityServices) -> None:
    v = Room(services).verification
    await v.start("teller", customer_connected=True)
    restored = Room(services).new()
    await restored.restore()
    assert restored.state == "idle" and restored.consent is None


async def test_an_upside_down_card_is_kept_upright(db: Any, tmp_path: Path) -> None:
    spec = VALID_SPECS[2]  # portrait obama2.jpg; the live face obama.jpg: the same man
    upright = on_table(render_front(spec))
    engines = IdentityEngines(IdentityConfig(preload=False))
    try:
        services = services_with(db, tmp_path, engines)
        v = Room(services).verification
        await consented(v)
        await upload(v, Step.CARD_FRONT, cv2.rotate(upright, cv2.ROTATE_180))
        assert v.steps[Step.CARD_FRONT].status == "passed", v.steps[Step.CARD_FRONT]
        assert v._front_image is not None and np.array_equal(v._front_image, upright)
        # The evidence is upright too, and it is what a restored room matches faces against.
        [row] = await services.records.for_session("s1")
        kept = decode_image((await services.records.open(row.id)).evidence["card_front.jpg"])
        live = load_face("obama.jpg")
        result = await engines.match_async(kept, live)
        assert result.decision is Decision.PASS, result
    finally:
        engines.close()


async def test_evidence_is_encoded_off_the_event_loop(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An uploaded card photo may have 25 megapixels: encoding its evidence JPEG on the loop
    # would stall the media forwarding of every room in the process.
    loop_thread = threading.get_ident()
    threads: list[int] = []
    encode = cv2.imencode

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return encode(*args, **kwargs)

    monkeypatch.setattr(cv2, "imencode", recording)
    v = (await consenting_customer(services, monkeypatch)).verification
    await upload(v, Step.CARD_FRONT)
    await run(v, Step.FACE)
    await run(v, Step.LIVENESS)
    assert v.steps[Step.LIVENESS].status == "passed"
    # The card, the live face, the frontal liveness picture and one per challenge.
    assert len(threads) == 5
    assert loop_thread not in threads


def test_every_refusal_says_what_to_do() -> None:
    # Elderly customers read the zh message: each one must say what to do next.
    for message in (
        NO_VIDEO,
        NO_CARD,
        NO_FACE,
        CHALLENGE_MISSED,
        SEVERAL_FACES,
        FACE_CHANGED,
        FACE_CONTINUITY,
        FACE_LOST,
    ):
        assert "请" in message.message_zh and ";" in message.message_en, message


async def test_two_steps_started_at_once_do_not_both_run(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The teller's step and the customer's upload arrive on two connections at the same time:
    # one runs, the other is refused as busy, or the two would run side by side (and a step
    # started twice at its last attempt would get attempts beyond the limit).
    v = (await consenting_customer(services, monkeypatch)).verification
    await upload(v, Step.CARD_FRONT)
    results = await asyncio.gather(
        v.run_step("teller", Step.FACE),
        v.upload_card("customer", "back", BACK_PHOTO),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, ProtocolError)]
    assert len(refused) == 1 and refused[0].code == "busy", results
    assert v._task is not None
    await v._task
    ran = [step for step in (Step.FACE, Step.CARD_BACK) if v.steps[step].status != "pending"]
    assert len(ran) == 1
    assert await services.records.attempts("s1", ran[0].value) == 1


async def test_a_step_cannot_start_during_the_manual_decision(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The teller fails the customer manually while the customer's upload of the last missing
    # side arrives: the upload must not run and then conclude "pass" over the decision.
    room = await consenting_customer(services, monkeypatch)
    v = room.verification
    await upload(v, Step.CARD_FRONT)
    await run(v, Step.FACE)
    await run(v, Step.LIVENESS)
    results = await asyncio.gather(
        v.manual("teller", "fail", "证件照片与本人不符，人工核验不通过"),
        v.upload_card("customer", "back", BACK_PHOTO),
        return_exceptions=True,
    )
    if v._task is not None:
        await v._task
    assert [type(r) for r in results] == [type(None), ProtocolError], results
    assert v.state == "verified_manually"
    assert [p["decision"] for p in room.published] == ["fail"]


async def test_nobody_in_view_is_not_reported_as_no_video(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The camera works but the customer has stepped out of the picture: telling them to turn
    # the camera on sends them looking for the wrong thing.
    v = (await consenting_customer(services, monkeypatch)).verification
    await upload(v, Step.CARD_FRONT)
    engines_of(services).in_view = False
    await run(v, Step.LIVENESS)
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed"
    assert liveness.messages[0].reason == "no_face_live"
    assert "正对摄像头" in liveness.messages[0].message_zh

    camera(v, monkeypatch, pictures=0)  # and with no pictures at all: no_video
    await run(v, Step.LIVENESS)
    assert v.steps[Step.LIVENESS].messages[0].reason == "no_video"


async def test_a_front_without_a_findable_portrait_can_be_retaken(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The face step would tell the customer to retake the photo side, which a passed front
    # refuses: the portrait is looked for while the front can still be taken again.
    v = (await consenting_customer(services, monkeypatch)).verification
    engines_of(services).in_view = False  # glare over the portrait: no face on the card
    await upload(v, Step.CARD_FRONT)
    front = v.steps[Step.CARD_FRONT]
    assert front.status == "failed" and front.messages[0].reason == "no_face_on_id"
    assert "重新拍摄身份证人像面" in front.messages[0].message_zh
    assert v._front_image is None
    engines_of(services).in_view = True
    await upload(v, Step.CARD_FRONT)
    assert v.steps[Step.CARD_FRONT].status == "passed"
    await run(v, Step.FACE)
    assert v.steps[Step.FACE].status == "passed"


async def test_a_back_from_another_card_fails_and_waits_for_the_front(
    services: IdentityServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The back's validity term follows the holder's age, read from the front's number: the back
    # is checked against a passed front, so it cannot be taken first.
    v = (await consenting_customer(services, monkeypatch)).verification
    with pytest.raises(ProtocolError, match="front of the card first"):
        await v.run_step("teller", Step.CARD_BACK)
    await upload(v, Step.CARD_FRONT)
    # A 20-year card issued in 2016: its holder was 26-45 then; the front's was born in 1949.
    other = replace(
        BACK,
        valid_from=date(2016, 5, 1),
        valid_until=date(2036, 5, 1),
        valid_long_term=False,
        validity_text="2016.05.01-2036.05.01",
    )
    engines = engines_of(services)

    async def read_other(image: np.ndarray) -> CardReading:
        return CardReading("back", other, [], False, [], image)

    monkeypatch.setattr(engines, "read_card_async", read_other)
    await upload(v, Step.CARD_BACK)
    back = v.steps[Step.CARD_BACK]
    assert back.status == "failed"
    assert [m.reason for m in back.messages] == ["sides_mismatch"]
    assert "同一张身份证的两面" in back.messages[0].message_zh
    monkeypatch.setattr(engines, "read_card_async", Engines.read_card_async.__get__(engines))
    await upload(v, Step.CARD_BACK)
    assert v.steps[Step.CARD_BACK].status == "passed"


# -- the face that moves is the face that matched: the real YuNet + SFace on the liveness fixtures


class FacesOnly(IdentityEngines):
    """The real face engine; the card reader reads the photo it is given as a valid front (OCR
    is tested elsewhere; the portrait is all the liveness step compares with)."""

    def ocr(self) -> Any:
        return SimpleNamespace(model_versions={"det": "det@1", "rec": "rec@1"})

    async def read_card_async(self, image: np.ndarray, side: Side | None = None) -> CardReading:
        return CardReading("front", FRONT, [], False, [], image)


@pytest.fixture(scope="module", params=["yunet", "insightface"])
def faces_only(request: pytest.FixtureRequest) -> Iterator[FacesOnly]:
    # Both engines: each has its own continuity threshold, and the production one is
    # InsightFace with 106-point landmarks.
    engines = FacesOnly(
        IdentityConfig(
            face_engine=request.param,
            preload=False,
            challenge_count=(2, 2),
            liveness_challenges=(Challenge.TURN_LEFT, Challenge.TURN_RIGHT),
            max_attempts=2,
        )
    )
    yield engines
    engines.close()


@dataclass(frozen=True)
class Scenes:
    """Camera pictures of the card holder (obama.jpg; the card's portrait is obama2.jpg, another
    photo of him) and of somebody else (yaoming.jpg), framed alike: frontal, and turned toward
    each side in the steps a head takes between two pictures at the analysis rate."""

    holder: np.ndarray
    stranger: np.ndarray
    holder_turns: dict[Challenge, list[np.ndarray]]
    stranger_turns: dict[Challenge, list[np.ndarray]]
    two_faces: np.ndarray
    nobody: np.ndarray


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    holder = webcam_frame(load_face("obama.jpg"))
    stranger = webcam_frame(vectron_image("yaoming.jpg"))

    def turns(frontal: np.ndarray) -> dict[Challenge, list[np.ndarray]]:
        # Positive degrees are the customer's left (tests/fixtures/liveness.py).
        return {
            challenge: [turned(frontal, sign * d) for d in (12, 24, TURN_DEGREES, TURN_DEGREES)]
            for challenge, sign in ((Challenge.TURN_LEFT, 1), (Challenge.TURN_RIGHT, -1))
        }

    # Both side by side, half size: two faces of the same size, both count.
    two = np.full_like(holder, 110)
    half = (holder.shape[1] // 2, holder.shape[0] // 2)
    top = holder.shape[0] // 4
    two[top : top + half[1], : half[0]] = cv2.resize(holder, half, interpolation=cv2.INTER_AREA)
    two[top : top + half[1], half[0] :] = cv2.resize(stranger, half, interpolation=cv2.INTER_AREA)
    nobody = np.full_like(holder, 110)  # the customer leaned out of the picture
    return Scenes(holder, stranger, turns(holder), turns(stranger), two, nobody)


# What the camera shows for a challenge.
Answer = Callable[[Challenge], list[np.ndarray]]


def scripted(
    v: IdentityVerification,
    monkeypatch: pytest.MonkeyPatch,
    answer: Answer,
) -> None:
    """A camera that shows, for each challenge, the pictures `answer` gives for it."""

    async def show(seconds: float, max_fps: float) -> AsyncIterator[np.ndarray]:
        assert v._challenge is not None
        for image in answer(Challenge(v._challenge["challenge"])):
            yield image

    monkeypatch.setattr(v, "_pictures", show)


LivenessWith = Callable[[Answer], Awaitable[tuple[IdentityVerification, IdentityServices]]]


@pytest.fixture
def liveness_with(
    db: Any, tmp_path: Path, faces_only: FacesOnly, monkeypatch: pytest.MonkeyPatch
) -> LivenessWith:
    """Runs the liveness step with the real face engine, after a front whose portrait is the
    holder's, on a camera that shows what `answer` gives for each challenge."""

    async def with_answer(answer: Answer) -> tuple[IdentityVerification, IdentityServices]:
        services = services_with(db, tmp_path, faces_only)
        v = Room(services).verification
        await consented(v)
        await upload(v, Step.CARD_FRONT, load_face("obama2.jpg"))
        assert v.steps[Step.CARD_FRONT].status == "passed"
        scripted(v, monkeypatch, answer)
        await run(v, Step.LIVENESS)
        return v, services

    return with_answer


async def liveness_record(services: IdentityServices) -> Any:
    [row] = [r for r in await services.records.for_session("s1") if r.step == "liveness"]
    return row


async def test_the_holder_turning_passes_with_the_real_engine(
    liveness_with: LivenessWith, scenes: Scenes
) -> None:
    v, _ = await liveness_with(lambda asked: [scenes.holder] * 3 + scenes.holder_turns[asked])
    assert v.steps[Step.LIVENESS].status == "passed", v.steps[Step.LIVENESS]


async def test_a_photo_of_the_holder_then_somebody_else_turning_fails(
    liveness_with: LivenessWith, scenes: Scenes
) -> None:
    # The holder's photo held up gives the frontal pose (and the picture matched with the
    # card); a helper, lowered into the same place, does the turns.
    v, services = await liveness_with(
        lambda asked: [scenes.holder] * 3 + scenes.stranger_turns[asked]
    )
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed" and liveness.messages == [FACE_CONTINUITY]
    assert liveness.attempts == 1  # an attempt like any other failure
    assert "请同一人全程正对摄像头完成动作" in FACE_CONTINUITY.message_zh
    # The client is told what to do, never the similarity.
    public = str(v.public_message()) + str(v.staff_message())
    assert "similarity" not in public and "threshold" not in public
    row = await liveness_record(services)
    assert row.outcome == "fail" and row.reason == "face_continuity"
    opened = await services.records.open(row.id)
    continuity = opened.detail["continuity"]
    assert continuity["break"] == "other_face"
    assert continuity["similarity"] < continuity["threshold"]
    # What the face was and what it became are kept as evidence for the teller's review.
    assert {"liveness_before_break.jpg", "liveness_break.jpg"} <= set(opened.evidence)
    audit = cast(Audit, services.audit)
    assert ("identity.checked", "face_continuity") in [
        (action, detail.get("reason")) for action, detail in audit.facts
    ]


@pytest.mark.parametrize(
    ("picture", "message", "reason", "kind"),
    [
        ("two_faces", SEVERAL_FACES, "several_faces_live", "several_faces"),
        ("nobody", FACE_LOST, "face_lost", "no_face"),
    ],
)
async def test_one_picture_without_the_one_face_mid_challenge_fails_the_attempt(
    liveness_with: LivenessWith,
    scenes: Scenes,
    picture: str,
    message: Message,
    reason: str,
    kind: str,
) -> None:
    # A second face, or one picture without a face: whoever comes back is not followed from
    # the face before, a swap could hide in it. The attempt fails with what to do; the teller
    # starts another.
    def answer(asked: Challenge) -> list[np.ndarray]:
        turns = scenes.holder_turns[asked]
        return [scenes.holder] * 3 + turns[:1] + [getattr(scenes, picture)] + turns[1:]

    v, services = await liveness_with(answer)
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed" and liveness.messages == [message]
    assert liveness.attempts == 1 and v.state == "in_progress"
    row = await liveness_record(services)
    assert row.reason == reason
    assert (await services.records.open(row.id)).detail["continuity"]["break"] == kind


async def test_a_face_that_jumps_across_the_picture_fails(
    liveness_with: LivenessWith, scenes: Scenes
) -> None:
    # The same person, but the face moves further between two pictures (an eighth of a second
    # apart) than a head does: the picture was switched.
    dx = 1.5 * MAX_SHIFT * FACE_WIDTH
    shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, 0.0]])

    def moved(image: np.ndarray) -> np.ndarray:
        size = (image.shape[1], image.shape[0])
        return cv2.warpAffine(image, shift, size, borderMode=cv2.BORDER_REPLICATE)

    v, services = await liveness_with(
        lambda asked: [scenes.holder] * 3 + [moved(i) for i in scenes.holder_turns[asked]]
    )
    liveness = v.steps[Step.LIVENESS]
    assert liveness.status == "failed" and liveness.messages == [FACE_CONTINUITY]
    row = await liveness_record(services)
    assert (await services.records.open(row.id)).detail["continuity"]["break"] == "jump"
