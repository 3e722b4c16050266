"""Live warnings while a dual recording runs: who is (not) on camera, and moments cut short.

The after-call analysis (compliance/report.py) judges every moment's `visible` rule and every
line's `min_seconds` once the recording is sealed, when nothing can be redone. While the call is
on, :class:`LiveChecks` tells the teller within a few seconds, so that the moment can be fixed
or read again at once:

``customer_not_in_frame``
    fewer faces than the moment's ``visible.customers`` in the customer's picture for
    ``absent_seconds`` (3 s) in a row (or no customer in the call at all);
``several_people``
    more faces than ``visible.customers`` in the customer's picture, in ``crowded_pictures`` (2)
    pictures in a row;
``teller_not_in_frame``
    no face in a teller's picture for ``absent_seconds`` (when ``visible.teller``);
``no_video``
    a camera that counts for the rule is not published, or no picture came from it for
    ``no_video_seconds``: its face warnings are not raised meanwhile (nothing to judge);
``moment_too_short``
    the teller marked a moment's end sooner after its start than the ``min_seconds`` of the
    moment's teller line. It stays until the same moment is started again (read again) or the
    recording stops; the mark itself is made as usual.

The rule is the ``visible`` of the moment open most recently (as the teller's page shows it),
else the default: the teller and one customer. ``customers: 0`` leaves the customer's picture
unchecked, ``teller: false`` the teller's. A warning is keyed by (code, participant, moment): when
the moment changes while a warning holds, the old one ends and one for the new moment starts,
so the session's events say in which moments it happened.

Whenever the set of warnings changes, the staff get ``live_warning`` (docs/protocol.md 2.3) with
the whole current set, and each start and end is a session event (``live_warning_started``,
``live_warning_ended``, with the recording's archive id and media times).

Cost and bounds. Each watched camera (the tellers' and the customers') has a
:class:`~server.sfu.decoded.DecodedView` (decoding beside the forwarding path, in its own
thread, only the base temporal layer of a browser's camera: 5 frames a second of 20) that
converts at most ``fps`` (1) picture a second, scaled to at most ``max_width`` (320 px) in the
same pass. YuNet's cost grows with the pixels (on one core of the benchmark machine: 4.7 ms at
320x240, 12 ms at 512x384, 18 ms at 640x480), and 320 px loses no face that counts: a face
counts only when it has at least a quarter of the largest face's area, i.e. half its width, and
a customer at arm's length from a webcam is about 50 px wide at 320 px (about 35 px a metre
away), so a face that counts is 17 px or more, within what YuNet finds (from about 10 px).
Faces are counted by the identity engines' ``observe_face_async`` in their thread pool (the
same engine lock as the identity check, so a busy process checks less often rather than
queueing without end). At most one detection per camera is in flight; nothing but list
bookkeeping runs on the event loop. One task per room wakes every ``tick_seconds`` (0.5 s), or
at once after a mark, to compare the cameras with the room's publications and to evaluate the
rules.

Faces are counted as the identity check counts them (``live_faces``: the largest face and any at
least a quarter of its area), so a small face far behind the customer does not raise
``several_people`` here; the after-call analysis counts every face YuNet finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from compliance.sales_script import Moment, Script, Visibility
from server.recording.live_speech import Hearing, SpeechListener
from server.sfu.decoded import DecodedView, PictureSource, PictureUnavailable
from server.sfu.decoded_audio import AudioSource, HeardMicrophone
from server.signaling.protocol import server_message

if TYPE_CHECKING:
    from server.identity.engines import FaceObservation

__all__ = [
    "CODES",
    "DEFAULT_VISIBLE",
    "Camera",
    "LiveCheckConfig",
    "LiveChecks",
    "LiveWarning",
    "Watched",
    "evaluate",
]

log = structlog.get_logger(__name__)

Code = Literal[
    "no_video",
    "customer_not_in_frame",
    "several_people",
    "teller_not_in_frame",
    "moment_too_short",
    "disclosure_not_heard",
]
CODES: tuple[Code, ...] = (
    "no_video",
    "customer_not_in_frame",
    "several_people",
    "teller_not_in_frame",
    "moment_too_short",
    "disclosure_not_heard",
)
WatchedRole = Literal["teller", "customer"]
# (code, participant id or None, moment or None): one warning.
Key = tuple[Code, str | None, str | None]

# The rule outside any moment of the script (and the default of a moment without `visible`).
DEFAULT_VISIBLE = Visibility(teller=True, customers=1)
_NOT_IN_FRAME: dict[WatchedRole, Code] = {
    "teller": "teller_not_in_frame",
    "customer": "customer_not_in_frame",
}


@dataclass(frozen=True)
class LiveCheckConfig:
    """Thresholds and rates (the defaults are what the product uses)."""

    fps: float = 1.0  # pictures a second per camera
    absent_seconds: float = 3.0  # too few faces this long: *_not_in_frame
    crowded_pictures: int = 2  # too many faces in this many pictures in a row: several_people
    no_video_seconds: float = 4.0  # no picture (or not published) this long: no_video
    tick_seconds: float = 0.5  # how often the rules are evaluated
    max_width: int = 320  # pictures are scaled to this width before counting faces
    stop_timeout: float = 10.0  # the last events of a stopping check, at most
    # An utterance that ended longer ago when the recogniser gets to it is skipped: a warning
    # that late would be about a moment long gone.
    speech_max_lag_seconds: float = 30.0


class FaceObserver(Protocol):
    """What the checks need of :class:`server.identity.engines.IdentityEngines`."""

    async def observe_face_async(self, image: npt.NDArray[np.uint8]) -> FaceObservation: ...


class EventLog(Protocol):
    """What the checks need of :class:`server.sessions.store.SessionStore`."""

    async def record(
        self,
        session_id: str,
        event_type: str,
        participant_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None: ...


Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Camera:
    """A teller or customer in the room and their camera and microphone (None: not published)."""

    participant_id: str
    role: WatchedRole
    source: PictureSource | None
    microphone: AudioSource | None = None


@dataclass(eq=False)
class Watched:
    """What is known of one participant's camera (event loop only)."""

    participant_id: str
    role: WatchedRole
    source: PictureSource | None
    since: float  # time.monotonic() since when this source (or its absence) is watched
    last_picture: float | None = None  # when the newest picture's frame arrived
    # (received_at, faces) of the pictures counted, newest last.
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=32))
    judged: bool = True  # False while face detection fails: no face warnings then
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class LiveWarning:
    code: Code
    participant_id: str | None
    moment: str | None
    since_ms: int  # media time of the recording when the condition began
    # moment_too_short: duration_ms, min_ms; disclosure_not_heard: missing (phrases)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.code, self.participant_id, self.moment)

    def view(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "participant_id": self.participant_id,
            "since_ms": self.since_ms,
            "moment": self.moment,
            **self.extra,
        }


def _run(samples: Iterable[tuple[float, int]], holds: Callable[[int], bool]) -> tuple[float, int]:
    """Start time and length of the newest run of samples for which `holds` is true."""
    start, length = float("nan"), 0
    for at, faces in reversed(list(samples)):
        if not holds(faces):
            break
        start, length = at, length + 1
    return start, length


def _fewer_than(count: int) -> Callable[[int], bool]:
    return lambda faces: faces < count


def _more_than(count: int) -> Callable[[int], bool]:
    return lambda faces: faces > count


def evaluate(
    now: float,
    visible: Visibility,
    moment: str | None,
    cameras: Sequence[Watched],
    role_absent_since: Mapping[WatchedRole, float],
    config: LiveCheckConfig,
) -> dict[Key, float]:
    """The warnings that hold at `now` (monotonic), each with when its condition began.

    `role_absent_since`: since when the room has had no participant of that role at all.
    """
    found: dict[Key, float] = {}

    def add(code: Code, participant_id: str | None, since: float) -> None:
        found[(code, participant_id, moment)] = since

    need: dict[WatchedRole, int] = {
        "teller": 1 if visible.teller else 0,
        "customer": visible.customers,
    }
    for role, count in need.items():
        absent = role_absent_since.get(role)
        if count and absent is not None and now - absent >= config.absent_seconds:
            add(_NOT_IN_FRAME[role], None, absent)
    for camera in cameras:
        count = need[camera.role]
        if not count:
            continue
        pid = camera.participant_id
        if camera.source is None or camera.last_picture is None:
            if now - camera.since >= config.no_video_seconds:
                add("no_video", pid, camera.since)
            continue
        if now - camera.last_picture >= config.no_video_seconds:
            add("no_video", pid, camera.last_picture)
            continue
        if not camera.judged:
            continue
        start, _ = _run(camera.samples, _fewer_than(count))
        if now - start >= config.absent_seconds:  # False for NaN: no such run
            add(_NOT_IN_FRAME[camera.role], pid, start)
        if camera.role == "customer":
            start, length = _run(camera.samples, _more_than(count))
            if length >= config.crowded_pictures:
                add("several_people", pid, start)
    return found


class LiveChecks:
    """The live checks of one room: started when its recording starts, stopped when it stops.

    Use on the event loop: :meth:`start` (recording started), :meth:`marked` (every mark of the
    recording, the server's included), :meth:`stop` (before sealing; awaits the last events).
    """

    def __init__(
        self,
        session_id: str,
        engines: FaceObserver,
        events: EventLog,
        send: Send,
        cameras: Callable[[], Iterable[Camera]],
        config: LiveCheckConfig | None = None,
        listener: SpeechListener | None = None,
    ) -> None:
        """`listener`: speech recognition for ``disclosure_not_heard`` (None: not checked)."""
        self._session_id = session_id
        self._engines = engines
        self._events = events
        self._send = send
        self._cameras = cameras
        self.config = config or LiveCheckConfig()
        self._running = False
        self._stopping = False
        self._archive_id: str | None = None
        self._clock: Callable[[float], float] = lambda monotonic: 0.0
        self._moments: dict[str, Moment] = {}
        self._open: list[str] = []  # moments of the script started and not ended, latest last
        self._started: dict[str, int] = {}  # moment -> media ms of its open start mark
        self._watched: dict[str, Watched] = {}
        self._role_absent_since: dict[WatchedRole, float] = {}
        self._notes: dict[Key, LiveWarning] = {}  # moment_too_short, until the moment restarts
        self._active: dict[Key, LiveWarning] = {}  # what the staff were last told
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()  # running, unwatched ones until done
        self._failures_logged = 0
        self._listener = listener
        self._hearing: Hearing | None = None
        # teller's participant id -> (microphone, the task listening to it)
        self._microphones: dict[str, tuple[AudioSource, asyncio.Task[None]]] = {}

    @property
    def running(self) -> bool:
        return self._running

    @property
    def warnings(self) -> list[LiveWarning]:
        """The warnings the staff were last told about, oldest first."""
        return sorted(self._active.values(), key=lambda w: (w.since_ms, w.code))

    def faces(self) -> dict[str, int | None]:
        """Faces in each watched camera's newest counted picture (None: none counted yet)."""
        return {pid: w.samples[-1][1] if w.samples else None for pid, w in self._watched.items()}

    def message(self) -> dict[str, Any]:
        """The `live_warning` message with the current set (for a staff member who rejoins)."""
        moment, _ = self._rule()
        return server_message(
            "live_warning",
            warnings=[w.view() for w in self.warnings],
            moment=moment,
            media_ms=self._ms(time.monotonic()),
        )

    # -- the recording -----------------------------------------------------------------------

    def start(
        self,
        script: Script | None,
        media_ms_at: Callable[[float], float],
        archive_id: str | None = None,
        values: Mapping[str, str] | None = None,
    ) -> None:
        """The recording started: `media_ms_at` turns time.monotonic() into its media ms;
        `values` fill the script's placeholders (the phrases listened for)."""
        if self._running:
            raise RuntimeError("live checks already running")
        self._running = True
        self._stopping = False
        self._archive_id = archive_id
        self._clock = media_ms_at
        self._moments = {m.id: m for m in script.moments} if script is not None else {}
        self._hearing = Hearing(self._moments, values or {}) if self._listener else None
        self._microphones.clear()
        self._open.clear()
        self._started.clear()
        self._watched.clear()
        self._role_absent_since.clear()
        self._notes.clear()
        self._active.clear()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._loop())

    def marked(self, moment: str, phase: str, media_ms: int) -> None:
        """A mark of the recording (the teller's or the server's)."""
        if not self._running or moment not in self._moments:
            return
        if moment in self._open:
            self._open.remove(moment)
        if phase == "start":
            self._open.append(moment)
            self._started[moment] = media_ms
            # Read again: the earlier reading no longer counts as the moment's.
            self._notes = {k: w for k, w in self._notes.items() if w.moment != moment}
            if self._hearing is not None:
                self._hearing.restart(moment)
        elif phase == "end":
            started = self._started.pop(moment, None)
            lines = self._moments[moment].lines
            seconds = max((ln.min_seconds for ln in lines if ln.speaker == "teller"), default=0.0)
            min_ms = round(1000 * seconds)
            if started is not None and media_ms - started < min_ms:
                warning = LiveWarning(
                    "moment_too_short",
                    None,
                    moment,
                    media_ms,
                    {"duration_ms": media_ms - started, "min_ms": min_ms},
                )
                self._notes[warning.key] = warning
        self._wake.set()

    async def stop(self) -> None:
        """The recording stops: end the watching, then the warnings (their events are awaited)."""
        if not self._running:
            return
        self._running = False
        self._stopping = True
        self._wake.set()
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        ticker, self._task = self._task, None
        if ticker is not None:
            # It finishes what it is telling (events, the message), then sees _stopping.
            done, _ = await asyncio.wait({ticker}, timeout=self.config.stop_timeout)
            if not done:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        await self._publish({})
        self._watched.clear()
        self._microphones.clear()

    # -- internals ---------------------------------------------------------------------------

    def _ms(self, monotonic: float) -> int:
        return max(0, int(self._clock(monotonic)))

    def _rule(self) -> tuple[str | None, Visibility]:
        """The moment whose `visible` rule applies (the latest started) and that rule."""
        if not self._open:
            return None, DEFAULT_VISIBLE
        moment = self._open[-1]
        return moment, self._moments[moment].visible

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                now = time.monotonic()
                self._follow(now)
                moment, visible = self._rule()
                held = evaluate(
                    now,
                    visible,
                    moment,
                    list(self._watched.values()),
                    self._role_absent_since,
                    self.config,
                )
                await self._publish(held)
            except Exception:
                log.exception("live_checks_failed", session_id=self._session_id)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_seconds):
                    await self._wake.wait()
            self._wake.clear()

    def _follow(self, now: float) -> None:
        """Watch the cameras of the room's tellers and customers as they are now."""
        cameras = {c.participant_id: c for c in self._cameras()}
        for participant_id in list(self._watched):
            if participant_id not in cameras:
                self._unwatch(self._watched.pop(participant_id))
        for participant_id, camera in cameras.items():
            watched = self._watched.get(participant_id)
            if watched is not None and watched.source is camera.source:
                continue
            if watched is not None:
                self._unwatch(watched)
            watched = Watched(participant_id, camera.role, camera.source, now)
            self._watched[participant_id] = watched
            if camera.source is not None:
                task = asyncio.ensure_future(self._watch(watched, camera.source))
                watched.task = task
                self._watchers.add(task)
                task.add_done_callback(self._watchers.discard)
        if self._hearing is not None:
            self._follow_microphones(cameras)
        for role in ("teller", "customer"):
            if any(c.role == role for c in cameras.values()):
                self._role_absent_since.pop(role, None)
            else:
                self._role_absent_since.setdefault(role, now)

    def _follow_microphones(self, cameras: Mapping[str, Camera]) -> None:
        """Listen to each teller's microphone as it is now (see server/recording/live_speech.py)."""
        wanted = {
            pid: c.microphone
            for pid, c in cameras.items()
            if c.role == "teller" and c.microphone is not None
        }
        for pid, (microphone, task) in list(self._microphones.items()):
            if wanted.get(pid) is not microphone:
                task.cancel()
                del self._microphones[pid]
        for pid, microphone in wanted.items():
            if pid not in self._microphones:
                task = asyncio.ensure_future(self._listen(pid, microphone))
                self._microphones[pid] = (microphone, task)
                self._watchers.add(task)
                task.add_done_callback(self._watchers.discard)

    async def _listen(self, participant_id: str, microphone: AudioSource) -> None:
        """Recognise a teller's utterances in moments with required phrases, until cancelled."""
        hearing, listener = self._hearing, self._listener
        assert hearing is not None and listener is not None
        heard = HeardMicrophone(microphone)
        try:
            # aclosing: a cancelled task unsubscribes now, not when the generator is collected.
            async with contextlib.aclosing(heard.utterances()) as utterances:
                async for utterance in utterances:
                    # Said in the moment the teller's page shows: the one started most recently.
                    moments = [m for m in self._open[-1:] if hearing.required(m)]
                    if not moments:
                        continue
                    lag = time.monotonic() - utterance.ended_at
                    if lag > self.config.speech_max_lag_seconds:
                        log.warning("live_speech_behind", session_id=self._session_id)
                        continue
                    # Counted for the moment it was said in, even if the teller has ended it
                    # meanwhile: the warning then holds until the moment is read again.
                    text = await listener.transcribe(utterance.audio)
                    since_ms = self._ms(utterance.started_at)
                    if hearing.heard(moments, participant_id, text, since_ms):
                        self._wake.set()
        except Exception:
            log.exception("live_speech_failed", participant_id=participant_id)
        finally:
            heard.close()

    @staticmethod
    def _unwatch(watched: Watched) -> None:
        if watched.task is not None:
            watched.task.cancel()

    async def _watch(self, watched: Watched, source: PictureSource) -> None:
        """Count the faces of one camera's pictures, `fps` a second, until cancelled."""
        config = self.config
        view = DecodedView(
            source, max_fps=config.fps, max_width=config.max_width, max_temporal_layer=0
        )
        try:
            view.start()
        except ValueError:
            return  # closed already: _follow watches its replacement; evaluate() says no_video
        try:
            while True:
                try:
                    picture = await view.next_picture(timeout=config.no_video_seconds)
                except TimeoutError:
                    continue  # evaluate() says no_video from last_picture
                watched.last_picture = picture.received_at
                try:
                    seen = await self._engines.observe_face_async(picture.image)
                except Exception as exc:
                    watched.judged = False
                    self._detection_failed(exc)
                    await asyncio.sleep(10 * config.tick_seconds)
                    continue
                watched.judged = True
                watched.samples.append((picture.received_at, seen.faces))
        except PictureUnavailable:
            return  # the source closed (the participant left or republished): as above
        except Exception:
            log.exception("live_checks_camera_failed", participant_id=watched.participant_id)
        finally:
            await view.aclose()

    def _detection_failed(self, exc: Exception) -> None:
        self._failures_logged += 1
        if self._failures_logged <= 3 or self._failures_logged % 100 == 0:
            log.warning(
                "live_checks_detection_failed",
                session_id=self._session_id,
                error=str(exc),
                failures=self._failures_logged,
            )

    async def _publish(self, held: Mapping[Key, float]) -> None:
        """Tell the staff and the session's events what changed since last time."""
        wanted: dict[Key, LiveWarning] = {}
        for key, since in held.items():
            old = self._active.get(key)
            wanted[key] = old if old is not None else LiveWarning(*key, since_ms=self._ms(since))
        if not self._stopping:
            wanted.update(self._notes)
            if self._hearing is not None:
                for (moment, pid), (since_ms, missing) in self._hearing.unheard.items():
                    warning = LiveWarning(
                        "disclosure_not_heard", pid, moment, since_ms, {"missing": missing}
                    )
                    wanted[warning.key] = warning
        started = [w for k, w in wanted.items() if k not in self._active]
        ended = [w for k, w in self._active.items() if k not in wanted]
        # A warning whose details changed (fewer phrases missing) is told again, not restarted.
        updated = any(self._active[k] != w for k, w in wanted.items() if k in self._active)
        if not started and not ended and not updated:
            return
        self._active = wanted
        until_ms = self._ms(time.monotonic())
        try:
            await self._send(self.message())
        except Exception:
            log.exception("live_warning_not_sent", session_id=self._session_id)
        for warning, event, extra in [
            *((w, "live_warning_ended", {"until_ms": until_ms}) for w in ended),
            *((w, "live_warning_started", {}) for w in started),
        ]:
            try:
                await self._events.record(
                    self._session_id,
                    event,
                    warning.participant_id,
                    {
                        "code": warning.code,
                        "moment": warning.moment,
                        "since_ms": warning.since_ms,
                        "archive_id": self._archive_id,
                        **warning.extra,
                        **extra,
                    },
                )
            except Exception:
                log.exception("live_warning_not_recorded", session_id=self._session_id)
