"""Live warnings during a dual recording: faces in frame and moments cut short.

The integration test runs the real server with real YuNet face counting on the bots' cameras
(photos at 320x240, switched while the call runs); the unit tests below it judge the rules
(`evaluate`) and the moment check (`LiveChecks.marked`) without media.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from compliance.sales_script import Visibility, load_script
from server.recording.live_checks import (
    DEFAULT_VISIBLE,
    Camera,
    LiveCheckConfig,
    LiveChecks,
    Watched,
    evaluate,
)
from tests.fixtures.idcards import load_face
from tests.fixtures.liveness import webcam_frame
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_recording import _record, _sealed
from tests.support.bot import Bot, FramesTrack
from tests.support.server import RunningServer

SIZE = (320, 240)


def _small(image: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA), dtype=np.uint8)


@functools.cache
def _person(name: str) -> np.ndarray:
    return _small(webcam_frame(load_face(name)))


@functools.cache
def _two_people() -> np.ndarray:
    # Two webcam pictures side by side, each cut to its middle half: two faces of a size.
    left = webcam_frame(load_face("obama.jpg"), face_width=150)
    right = webcam_frame(load_face("biden.jpg"), face_width=150)
    return _small(np.hstack([left[:, 160:480], right[:, 160:480]]))


def _empty() -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), (170, 180, 190), dtype=np.uint8)


def _codes(message: dict[str, Any]) -> set[str]:
    return {w["code"] for w in message["warnings"]}


async def _live_warning(
    bot: Bot, until: Callable[[set[str]], bool], timeout: float
) -> dict[str, Any]:
    """The next `live_warning` whose set of codes satisfies `until`."""
    async with asyncio.timeout(timeout):
        while True:
            message = await bot.expect("live_warning", timeout=timeout)
            if until(_codes(message)):
                return message


async def _marked_and_warned(
    bot: Bot, code: str, timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next `marked`, and the next `live_warning` with `code`, in whichever order."""
    marked: dict[str, Any] | None = None
    warned: dict[str, Any] | None = None
    async with asyncio.timeout(timeout):
        while marked is None or warned is None:
            message = await bot.messages.get()
            if message["type"] == "marked" and marked is None:
                marked = message
            elif message["type"] == "live_warning" and code in _codes(message):
                warned = message
    return marked, warned


async def test_the_teller_is_warned_live_and_the_warnings_are_recorded(
    server: RunningServer,
) -> None:
    teller, customer, session_id = await _teller_and_customer(server)
    teller_camera = FramesTrack([_person("biden.jpg")])
    customer_camera = FramesTrack([_person("obama.jpg")])
    teller.video, customer.video = teller_camera, customer_camera
    try:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        await customer.wait_for_media(teller.participant_id, "camera")
        await _record(server, teller, customer)
        room = server.services.rooms.get(session_id)
        assert room is not None and room.live.running

        # Both in frame: faces counted on both cameras, and nothing to warn about.
        async with asyncio.timeout(15):
            while set(room.live.faces().values()) != {1}:  # noqa: ASYNC110 (polls the server)
                await asyncio.sleep(0.2)
        assert room.live.warnings == []

        # Both leave the picture: each is warned about within a few seconds.
        customer_camera.show([_empty()])
        teller_camera.show([_empty()])
        left_at = time.monotonic()
        both = {"customer_not_in_frame", "teller_not_in_frame"}
        message = await _live_warning(teller, lambda codes: both <= codes, timeout=10)
        assert time.monotonic() - left_at < 8
        by_code = {w["code"]: w for w in message["warnings"]}
        assert by_code["customer_not_in_frame"]["participant_id"] == customer.participant_id
        assert by_code["teller_not_in_frame"]["participant_id"] == teller.participant_id
        # The server opened the consent moment when the recording started: its rule applies.
        assert by_code["customer_not_in_frame"]["moment"] == "consent"
        assert message["moment"] == "consent"
        assert 0 < by_code["customer_not_in_frame"]["since_ms"] <= message["media_ms"]

        # Someone else joins the customer in the picture; the teller is back.
        customer_camera.show([_two_people()])
        teller_camera.show([_person("biden.jpg")])
        message = await _live_warning(teller, lambda codes: codes == {"several_people"}, 10)
        assert message["warnings"][0]["participant_id"] == customer.participant_id

        # The customer alone again: every warning is cleared.
        customer_camera.show([_person("obama.jpg")])
        await _live_warning(teller, lambda codes: not codes, timeout=10)

        # The risk disclosure (min_seconds 6 for the teller's line) ended after about a second.
        await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "start"})
        start = await teller.expect("marked")
        await asyncio.sleep(1)
        await teller.send({"type": "mark", "moment": "risk_disclosure", "phase": "end"})
        # The mark is made all the same; the warning may come before or after it.
        end, message = await _marked_and_warned(teller, "moment_too_short", timeout=5)
        assert end["phase"] == "end"
        short = message["warnings"][0]
        assert short["moment"] == "risk_disclosure" and short["min_ms"] == 6000
        assert short["duration_ms"] == end["media_ms"] - start["media_ms"]
        assert 900 <= short["duration_ms"] < 6000
        assert short["since_ms"] == end["media_ms"]

        # Stopping the recording ends the checks and clears the teller's list.
        await teller.send({"type": "recording_stop"})
        await _live_warning(teller, lambda codes: not codes, timeout=10)
        assert (await _sealed(teller))["state"] == "sealed"
        assert not room.live.running
    finally:
        await customer.close()
        await teller.close()

    events = await server.services.sessions.events(session_id)
    started = [e.detail["code"] for e in events if e.type == "live_warning_started"]
    ended = [e.detail["code"] for e in events if e.type == "live_warning_ended"]
    for code in ("customer_not_in_frame", "teller_not_in_frame", "several_people"):
        assert code in started and code in ended, (started, ended)
    assert started.count("moment_too_short") == 1 and ended.count("moment_too_short") == 1
    crowded = next(
        e
        for e in events
        if e.type == "live_warning_started" and e.detail["code"] == "several_people"
    )
    assert crowded.participant_id == customer.participant_id
    assert crowded.detail["archive_id"] and crowded.detail["moment"] == "consent"
    finished = next(e for e in events if e.type == "live_warning_ended")
    assert finished.detail["until_ms"] >= finished.detail["since_ms"]


# -- the rules, without media ---------------------------------------------------------------

CONFIG = LiveCheckConfig()


def _watched(role: str, faces: list[int], *, now: float = 100.0, pid: str = "p") -> Watched:
    watched = Watched(pid, "teller" if role == "teller" else "customer", object(), now - 30)  # type: ignore[arg-type]
    for i, count in enumerate(faces):  # one picture a second, the last one just now
        watched.samples.append((now - len(faces) + 1 + i, count))
    watched.last_picture = now if faces else None
    return watched


def _held(
    cameras: list[Watched], visible: Visibility = DEFAULT_VISIBLE
) -> set[tuple[str, str | None]]:
    found = evaluate(100.0, visible, "m", cameras, {}, CONFIG)
    return {(code, pid) for code, pid, _ in found}


def test_faces_missing_for_three_seconds_or_too_many_twice_are_warnings() -> None:
    assert _held([_watched("customer", [1, 0, 0])]) == set()  # 2 s without: not yet
    assert _held([_watched("customer", [1, 0, 0, 0, 0])]) == {("customer_not_in_frame", "p")}
    assert _held([_watched("customer", [1, 2])]) == set()  # once may be a false detection
    assert _held([_watched("customer", [1, 2, 3])]) == {("several_people", "p")}
    assert _held([_watched("teller", [0, 0, 0, 0, 0])]) == {("teller_not_in_frame", "p")}
    assert _held([_watched("teller", [2, 2, 2])]) == set()  # a colleague behind the teller
    two = Visibility(teller=True, customers=2)
    assert _held([_watched("customer", [2, 2, 2, 2])], two) == set()
    assert _held([_watched("customer", [1, 1, 1, 1, 1])], two) == {("customer_not_in_frame", "p")}
    nobody = Visibility(teller=False, customers=0)
    assert (
        _held([_watched("customer", [0, 0, 0, 0, 3, 3]), _watched("teller", [0] * 5)], nobody)
        == set()
    )


def test_a_camera_without_pictures_is_no_video_and_a_missing_role_is_not_in_frame() -> None:
    silent = _watched("customer", [1, 1])
    silent.last_picture = 100.0 - CONFIG.no_video_seconds
    assert _held([silent]) == {("no_video", "p")}
    unpublished = Watched("p", "customer", None, 100.0 - CONFIG.no_video_seconds)
    assert _held([unpublished]) == {("no_video", "p")}
    assert _held([Watched("p", "customer", None, 99.0)]) == set()  # just unpublished
    found = evaluate(100.0, DEFAULT_VISIBLE, None, [], {"customer": 90.0, "teller": 99.0}, CONFIG)
    assert found == {("customer_not_in_frame", None, None): 90.0}


class _Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str | None, dict[str, Any]]] = []

    async def record(
        self,
        session_id: str,
        event_type: str,
        participant_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.recorded.append((event_type, participant_id, detail or {}))


async def test_a_moment_ended_too_soon_is_a_warning_until_it_is_read_again() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    def cameras() -> list[Camera]:
        return [Camera("t", "teller", None), Camera("c", "customer", None)]

    events = _Events()
    checks = LiveChecks("s", object(), events, send, cameras)  # type: ignore[arg-type]
    checks.start(load_script("bank_wealth_product"), lambda monotonic: 1000.0, "a1")
    try:
        checks.marked("risk_disclosure", "start", 1000)
        checks.marked("risk_disclosure", "end", 3000)  # 2 s of the 6 the script asks for
        checks.marked("closing", "start", 3000)
        checks.marked("closing", "end", 9000)  # long enough
        checks.marked("identity", "start", 9000)  # a server mark, not a moment of the script
        await asyncio.sleep(0.1)
        assert [w.view() for w in checks.warnings] == [
            {
                "code": "moment_too_short",
                "participant_id": None,
                "since_ms": 3000,
                "moment": "risk_disclosure",
                "duration_ms": 2000,
                "min_ms": 6000,
            }
        ]
        assert sent[-1]["type"] == "live_warning" and _codes(sent[-1]) == {"moment_too_short"}
        checks.marked("risk_disclosure", "start", 9500)  # read again
        await asyncio.sleep(0.1)
        assert checks.warnings == []
    finally:
        await checks.stop()
    assert [(e, d["code"]) for e, _, d in events.recorded] == [
        ("live_warning_started", "moment_too_short"),
        ("live_warning_ended", "moment_too_short"),
    ]
    assert events.recorded[0][2]["archive_id"] == "a1"
