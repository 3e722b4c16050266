"""The after-call analysis on a synthetic recording: spans from marks, the script and its values,
speech, faces and the screen per moment, and a report that is float-free, repeatable and safely
rendered.

The recording is a small WebM made here with PyAV in the recorder's track order (teller
microphone, camera, screen; customer microphone, camera) and a manifest that maps them. Speech is
tones that a fake recogniser "hears" as given texts, and faces are colours that a fake counter
counts, so every branch is exercised without the models (tests/integration/
test_compliance_analysis.py runs the real ones on a real call).
"""

from __future__ import annotations

import base64
import fractions
import json
import shutil
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from compliance.asr import SAMPLE_RATE, Alignment, Audio, Segment, TokenScore
from compliance.recording import Recording, RecordingError, moment_spans, open_decrypted
from compliance.report import (
    REPORT_FORMAT,
    ScriptChoice,
    YuNetFaceCounter,
    analyze_recording,
    choose_script,
    exit_code,
    render_html,
    transcribe_track,
)
from compliance.sales_script import ScriptError
from recorder.seal.canonical import canonical_json, parse_json
from recorder.seal.keyring import KEYRING_FORMAT
from recorder.seal.manifest import Manifest, Mark
from tests.fixtures.idcards import VALID_SPECS, load_face, render_front
from tests.fixtures.liveness import webcam_frame
from tests.fixtures.manifests import CUSTOMER, TELLER, two_party_manifest

CREATED = "2026-01-01T00:00:00.000Z"

SCRIPT = """
id: unit_check
version: "u.1"
title: 单元测试话术
placeholders:
  teller_name: 柜员姓名
forbidden: [保本, 没有风险]
moments:
  - id: consent
    title: 录音录像告知与同意
    lines:
      - speaker: teller
        say: [您好，为了保护您的合法权益，本次业务办理将全程录音录像，请问您是否同意？]
        must_include: [录音录像]
        min_seconds: 4
      - speaker: customer
        say: [我同意, 同意, 是的]
        must_not_include: [不同意]
  - id: teller_identity
    title: 服务人员身份
    lines:
      - speaker: teller
        say: ["我是远程柜员{teller_name}。"]
  - id: risk_disclosure
    title: 风险揭示
    lines:
      - speaker: teller
        say: [理财非存款，产品有风险，投资须谨慎。]
        must_include: [理财非存款, 产品有风险]
        min_seconds: 6
      - speaker: customer
        say: [清楚, 是的]
        must_not_include: [不清楚]
    document_on_screen: true
  - id: signature
    title: 签名
    lines: []
    signature_captured: true
"""

# What the fake recogniser hears: (speaker, whole second the tone starts) -> text.
CONSENT = "您好,为了保护您的合法权益,本次业务办理将全程录音录像,请问您是否同意?"
RISK = "理财非存款,产品有风险,投资须谨慎。"
MISLEADING = "本产品保本,投资没有风险。"
# Tones (start ms, end ms) per microphone and the marks around them.
TELLER_SPEECH = [(500, 5000), (8000, 15000)]
CUSTOMER_SPEECH = [(5500, 6500), (15500, 16500)]
MARKS = [
    ("consent.start", 0),
    ("consent.end", 7000),
    ("risk_disclosure.start", 7500),
    ("risk_disclosure.end", 17500),
]
DURATION_MS = 18000

# Camera colours (BGR) the fake face counter reads as a number of faces.
ONE_FACE, TWO_FACES, NOBODY = (0, 0, 200), (200, 0, 0), (0, 0, 0)
NO_FRAMES = (-1, -1, -1)  # the camera sends nothing (paused, frozen, off)


# -- spans -----------------------------------------------------------------------------------


def test_a_start_and_its_end_make_the_span() -> None:
    spans = moment_spans([("consent.start", 0), ("consent.end", 900)], 5000)
    assert spans["consent"].start_ms == 0 and spans["consent"].end_ms == 900
    assert spans["consent"].ended_by == "end mark" and spans["consent"].duration_ms == 900


def test_a_redone_moment_counts_its_last_complete_span() -> None:
    marks = [("a.start", 100), ("a.end", 200), ("a.start", 300), ("a.end", 450)]
    span = moment_spans(marks, 1000)["a"]
    assert (span.start_ms, span.end_ms, span.replaced) == (300, 450, 1)
    # A restart that was never closed does not replace a complete span.
    span = moment_spans([*marks[:2], ("a.start", 300)], 1000)["a"]
    assert (span.start_ms, span.end_ms, span.ended_by, span.replaced) == (100, 200, "end mark", 1)
    # A start, another start, then an end: the second start and the end.
    span = moment_spans([("a.start", 100), ("a.start", 300), ("a.end", 400)], 1000)["a"]
    assert (span.start_ms, span.end_ms) == (300, 400)


def test_an_unclosed_start_ends_at_the_next_moment_or_the_recording_end() -> None:
    marks = [("a.start", 100), ("b.start", 700), ("b.end", 900), ("c.start", 950)]
    spans = moment_spans(marks, 2000)
    assert (spans["a"].end_ms, spans["a"].ended_by) == (700, "next moment")
    assert (spans["c"].end_ms, spans["c"].ended_by) == (2000, "recording end")
    # The next start at the same millisecond: an empty span, not one reaching to the end.
    spans = moment_spans([("a.start", 500), ("b.start", 500)], 2000)
    assert spans["a"].duration_ms == 0 and spans["b"].end_ms == 2000
    # A mark after the recording's last packet still ends inside the span.
    assert moment_spans([("a.start", 2500)], 2000)["a"].end_ms == 2500


def test_marks_are_taken_in_media_time_order_and_strays_are_ignored() -> None:
    marks = [("a.end", 50), ("a.end", 900), ("a.start", 100), ("nodot", 10), (".start", 20)]
    spans = moment_spans(marks, 1000)
    assert list(spans) == ["a"]
    assert (spans["a"].start_ms, spans["a"].end_ms) == (100, 900)
    assert moment_spans([("a.end", 10)], 1000) == {}


# -- a synthetic recording -------------------------------------------------------------------

# Colour schedule of the customer's camera: (from ms, to ms, BGR); one face elsewhere.
Camera = list[tuple[int, int, tuple[int, int, int]]]


def _write_webm(path: Path, customer_camera: Camera, screen: tuple[int, int] | None) -> None:
    """Tracks 0-4 as the recorder orders them; cameras at 5 fps, 160x120."""
    out = av.open(str(path), "w", format="webm")
    titles = [
        ("teller microphone", TELLER_SPEECH),
        ("teller camera", None),
        ("teller screen", None),
        ("customer microphone", CUSTOMER_SPEECH),
        ("customer camera", None),
    ]
    streams: list[Any] = []
    for title, _ in titles:
        stream: Any
        if title.endswith("microphone"):
            stream = out.add_stream("libopus", rate=48000)
            stream.layout = "mono"
        else:
            stream = out.add_stream("libvpx", rate=5, options={"deadline": "realtime"})
            stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.metadata["title"] = title
        streams.append(stream)

    def colour_at(ms: int, schedule: Camera) -> Any:
        return next((c for lo, hi, c in schedule if lo <= ms < hi), ONE_FACE)

    packets: list[Any] = []
    for index, (title, speech) in enumerate(titles):
        stream = streams[index]
        if speech is not None:
            for ms in range(0, DURATION_MS, 20):
                t = (np.arange(960) + ms * 48) / 48000
                on = any(lo <= ms < hi for lo, hi in speech)
                tone = np.sin(2 * np.pi * 300 * t) * (0.3 if on else 0.0)
                frame = av.AudioFrame.from_ndarray(
                    tone.astype(np.float32).reshape(1, -1), format="flt", layout="mono"
                )
                frame.sample_rate = 48000
                frame.pts, frame.time_base = ms * 48, fractions.Fraction(1, 48000)
                packets += stream.encode(frame)
        else:
            lo, hi = (0, DURATION_MS)
            if title == "teller screen":
                if screen is None:
                    continue
                lo, hi = screen
            for ms in range(lo, hi, 200):
                schedule = customer_camera if title == "customer camera" else []
                if colour_at(ms, schedule) == NO_FRAMES:
                    continue
                image = np.full((120, 160, 3), colour_at(ms, schedule), dtype=np.uint8)
                picture = av.VideoFrame.from_ndarray(image, format="bgr24")
                picture.pts, picture.time_base = ms // 200, fractions.Fraction(1, 5)
                packets += stream.encode(picture)
        packets += stream.encode(None)
    for packet in sorted(packets, key=lambda p: (float(p.pts * p.time_base), p.stream.index)):
        out.mux(packet)
    out.close()


def _manifest(compliance: dict[str, Any] | None, business: str = "general") -> Manifest:
    sources = ["microphone", "camera", "screen", "microphone", "camera"]
    owners = [TELLER, TELLER, TELLER, CUSTOMER, CUSTOMER]
    return two_party_manifest(
        session_id="s_unit",
        business=business,
        marks=MARKS,
        tracks=[(str(i), o, s) for i, (s, o) in enumerate(zip(sources, owners, strict=True))],
        compliance=compliance,
        recorder_version="test",
    )


_MEDIA: dict[str, Path] = {}


def _recording(
    tmp_path: Path,
    *,
    customer_camera: Camera | None = None,
    screen: tuple[int, int] | None = (7000, 12000),
    compliance: dict[str, Any] | None = None,
) -> Recording:
    """The synthetic call (its media made once per variant and shared: it is only read)."""
    key = json.dumps([customer_camera, screen])
    if key not in _MEDIA or not _MEDIA[key].is_file():
        _MEDIA[key] = tmp_path / f"recording-{len(_MEDIA)}.webm"
        _write_webm(_MEDIA[key], customer_camera or [], screen)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(_manifest(compliance).canonical_bytes())
    return open_decrypted(_MEDIA[key], manifest)


@pytest.fixture
def scripts_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "scripts"
    directory.mkdir()
    (directory / "unit_check.yaml").write_text(SCRIPT, encoding="utf-8")
    return directory


class FakeRecognizer:
    """Hears each tone as the text given for (the second it starts at); fits any text well."""

    model_version = "fake-asr 1"

    def __init__(self, texts: dict[int, str], default: str = "") -> None:
        self.texts = texts
        self.default = default
        self.calls = 0

    def transcribe(self, audio: Audio) -> list[Segment]:
        self.calls += 1
        frames = np.abs(audio[: len(audio) // 160 * 160]).reshape(-1, 160).max(axis=1) > 0.05
        segments, start = [], None
        for i, loud in enumerate([*frames, False]):
            if loud and start is None:
                start = i
            elif not loud and start is not None:
                begin, end = start * 160 / SAMPLE_RATE, i * 160 / SAMPLE_RATE
                text = self.texts.get(int(begin), self.default)
                if text:
                    segments.append(Segment(round(begin, 2), round(end, 2), text, -0.2))
                start = None
        return segments

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        tokens = tuple(TokenScore(i, i + 1, -0.2) for i, c in enumerate(text) if c.isalnum())
        return Alignment(text, tokens)


class FakeFaces:
    model_versions = {"face_detector": "fake-faces 1"}  # noqa: RUF012 - read only

    def count(self, bgr: np.ndarray) -> int:
        b, _, r = (int(v) for v in bgr.reshape(-1, 3).mean(axis=0))
        return 1 if r > 100 else 2 if b > 100 else 0


def _texts(risk: str = RISK) -> dict[int, str]:
    return {0: CONSENT, 8: risk, 5: "我同意。", 15: "是的。"}


def _analyze(recording: Recording, scripts_dir: Path, **kwargs: Any) -> dict[str, Any]:
    choice = choose_script(recording.manifest, script_id="unit_check", scripts_dir=scripts_dir)
    recognizer = kwargs.pop("recognizer", FakeRecognizer(_texts()))
    return analyze_recording(recording, choice, recognizer, FakeFaces(), created_at=CREATED)


def _moments(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in document["moments"]}


def test_the_recording_maps_roles_to_streams_and_places_audio_by_time(tmp_path: Path) -> None:
    with _recording(tmp_path) as recording:
        mic = recording.track("customer", "microphone")
        assert mic is not None and mic.index == 3 and mic.title == "customer microphone"
        assert recording.track("teller", "screen") is not None
        assert recording.track("expert", "camera") is None
        assert 17900 <= recording.duration_ms <= 18100
        audio = recording.decode_audio(mic)
        loud = np.flatnonzero(np.abs(audio) > 0.05)
        # The customer's first answer starts at 5.5 s on the recording's clock.
        assert abs(loud[0] / SAMPLE_RATE - 5.5) < 0.03
        assert not recording.verified and recording.notes


def test_a_manifest_of_another_recording_is_refused(tmp_path: Path) -> None:
    webm = _recording(tmp_path).path
    manifest = _manifest(None).model_dump(mode="json")
    manifest["tracks"][0]["kind"] = "video"  # stream 0 is audio
    path = tmp_path / "manifest.json"
    path.write_bytes(canonical_json(manifest))
    with pytest.raises(RecordingError, match="is not stream 0"):
        open_decrypted(webm, path)


def test_a_good_call_passes_its_marked_moments_and_no_more(
    tmp_path: Path, scripts_dir: Path
) -> None:
    recording = _recording(tmp_path)
    recognizer = FakeRecognizer(_texts())
    document = _analyze(recording, scripts_dir, recognizer=recognizer)
    moments = _moments(document)
    assert recognizer.calls == 2  # each microphone once
    assert document["format"] == REPORT_FORMAT
    assert moments["consent"]["decision"] == "pass", moments["consent"]["reasons"]
    assert moments["risk_disclosure"]["decision"] == "pass", moments["risk_disclosure"]["reasons"]
    assert moments["risk_disclosure"]["document"]["screen_frames"] > 0
    assert moments["consent"]["span_ms"] == [0, 7000]
    assert moments["consent"]["duration_ms"] == 7000
    teller = moments["consent"]["lines"][0]
    assert teller["speaker"] == "teller" and teller["transcript"][0]["start_ms"] == 500
    assert teller["speech_ms"] == 4500 and teller["min_ms"] == 4000
    assert {p["phrase"] for p in teller["phrases"] if p["found"]} >= {"录音录像"}
    assert moments["consent"]["visibility"]["decision"] == "pass"
    # Never marked: needs review; the signature is listed, not judged.
    assert moments["teller_identity"]["reasons"] == ["not marked"]
    assert moments["signature"]["decision"] == "needs_review"
    assert moments["signature"]["not_checked"] == ["signature_captured"]
    assert document["decision"] == "needs_review" and exit_code(document) == 1
    assert document["summary"] == {"pass": 2, "fail": 0, "needs_review": 2}
    assert document["models"] == {"asr": "fake-asr 1", "face_detector": "fake-faces 1"}


def test_the_report_has_no_floats_and_is_the_same_on_a_rerun(
    tmp_path: Path, scripts_dir: Path
) -> None:
    recording = _recording(tmp_path)
    first = canonical_json(_analyze(recording, scripts_dir))  # refuses any float
    second = canonical_json(_analyze(recording, scripts_dir))
    assert first == second
    document = parse_json(first)  # refuses floats on the way back too
    assert document["thresholds"]["speech"]["confirm_logprob"] == "-1.500"
    assert document["manifest_sha256"] == recording.manifest_sha256


def test_misleading_talk_fails_the_moment_and_the_call(tmp_path: Path, scripts_dir: Path) -> None:
    recording = _recording(tmp_path)
    document = _analyze(recording, scripts_dir, recognizer=FakeRecognizer(_texts(MISLEADING)))
    risk = _moments(document)["risk_disclosure"]
    assert risk["decision"] == "fail"
    assert any("forbidden phrase 保本" in r for r in risk["reasons"]), risk["reasons"]
    forbidden = [p for p in risk["lines"][0]["phrases"] if p["kind"] == "must_not_include"]
    assert forbidden and forbidden[0]["start_ms"] == 8000
    assert document["decision"] == "fail"


def test_faces_missing_or_too_many_are_located(tmp_path: Path, scripts_dir: Path) -> None:
    # The customer leaves the picture for 3 of the 11 samples of the risk disclosure (27 %),
    # and a second person is seen in two samples in a row during consent (2 of 7: 29 %).
    camera = [(9000, 12000, NOBODY), (2000, 4000, TWO_FACES)]
    document = _analyze(_recording(tmp_path, customer_camera=camera), scripts_dir)
    moments = _moments(document)
    risk = moments["risk_disclosure"]["visibility"]
    assert risk["decision"] == "fail"
    assert risk["violations"] == [
        {"who": "customer", "problem": "no face", "start_ms": 9000, "end_ms": 12000}
    ]
    customer = next(c for c in risk["checks"] if c["who"] == "customer")
    assert customer["violation_percent"] == "27.3" and customer["faces"] == {"0": 3, "1": 8}
    consent = moments["consent"]["visibility"]
    assert consent["decision"] == "fail"
    assert consent["violations"][0]["problem"] == "2 faces"
    assert any("more than 1 face" in r for r in moments["consent"]["reasons"])


def test_a_one_second_freeze_shows_the_frame_before_and_a_longer_gap_is_no_video(
    tmp_path: Path, scripts_dir: Path
) -> None:
    # The risk disclosure's 11 samples (8-19 s): the camera sends nothing at 10-11 s (one
    # sample, a freeze) and again at 13-16 s (three samples in a row: a gap).
    camera = [(10000, 11000, NO_FRAMES), (13000, 16000, NO_FRAMES)]
    document = _analyze(_recording(tmp_path, customer_camera=camera), scripts_dir)
    risk = _moments(document)["risk_disclosure"]["visibility"]
    customer = next(c for c in risk["checks"] if c["who"] == "customer")
    assert customer["frozen"] == 1 and customer["faces"] == {"1": 8}
    assert risk["violations"] == [
        {"who": "customer", "problem": "no video", "start_ms": 13000, "end_ms": 16000}
    ]
    assert risk["decision"] == "fail"  # 3 of 11 samples (27 %)
    # A freeze alone is not a violation: the consent's single frozen second passes.
    frozen = _analyze(_recording(tmp_path, customer_camera=[(3000, 4000, NO_FRAMES)]), scripts_dir)
    consent = _moments(frozen)["consent"]["visibility"]
    assert consent["decision"] == "pass" and consent["violations"] == []
    assert next(c for c in consent["checks"] if c["who"] == "customer")["frozen"] == 1


def test_one_crowded_sample_counts_only_towards_the_tolerance(
    tmp_path: Path, scripts_dir: Path
) -> None:
    # As the live check: one picture with two faces (a detector's mistake, or someone passing
    # behind) is a violation of 1 in 7 samples, not a second person in the call.
    document = _analyze(
        _recording(tmp_path, customer_camera=[(2000, 3000, TWO_FACES)]), scripts_dir
    )
    consent = _moments(document)["consent"]["visibility"]
    assert consent["decision"] == "pass"
    assert consent["violations"] == [
        {"who": "customer", "problem": "2 faces", "start_ms": 2000, "end_ms": 3000}
    ]
    assert document["thresholds"]["visibility"]["crowded_samples"] == 2


def test_a_short_absence_is_tolerated_and_no_video_needs_review(
    tmp_path: Path, scripts_dir: Path
) -> None:
    document = _analyze(
        _recording(tmp_path, customer_camera=[(9000, 10000, NOBODY)], screen=None), scripts_dir
    )
    risk = _moments(document)["risk_disclosure"]
    assert risk["visibility"]["decision"] == "pass"  # 1 of 11 samples
    assert len(risk["visibility"]["violations"]) == 1
    assert risk["document"] == {
        "decision": "needs_review",
        "screen_frames": 0,
        "reasons": ["no document shown"],
    }
    assert risk["decision"] == "needs_review"
    # Without a face counter the visibility rule cannot be judged.
    recording = _recording(tmp_path)
    choice = choose_script(recording.manifest, script_id="unit_check", scripts_dir=scripts_dir)
    document = analyze_recording(recording, choice, FakeRecognizer(_texts()), None)
    visibility = _moments(document)["consent"]["visibility"]
    assert visibility["decision"] == "needs_review"


def test_progress_is_reported_per_stage(tmp_path: Path, scripts_dir: Path) -> None:
    seen: list[tuple[str, float]] = []
    recording = _recording(tmp_path)
    choice = choose_script(recording.manifest, script_id="unit_check", scripts_dir=scripts_dir)
    analyze_recording(
        recording,
        choice,
        FakeRecognizer(_texts()),
        FakeFaces(),
        progress=lambda stage, fraction: seen.append((stage, fraction)),
    )
    stages = list(dict.fromkeys(stage for stage, _ in seen))
    assert stages == ["transcribing teller", "transcribing customer", "faces", "judging"]
    for stage in stages:
        fractions_seen = [f for s, f in seen if s == stage]
        assert fractions_seen[0] == 0.0 and fractions_seen[-1] == 1.0
        assert fractions_seen == sorted(fractions_seen)


def test_long_tracks_are_recognised_in_pieces_cut_in_silence() -> None:
    seconds = 13 * 60
    audio = np.zeros(seconds * SAMPLE_RATE, dtype=np.float32)
    tone = np.sin(np.arange(SAMPLE_RATE) * 0.2).astype(np.float32) * 0.5
    starts = list(range(0, seconds - 1, 7))
    for second in starts:
        audio[second * SAMPLE_RATE : (second + 1) * SAMPLE_RATE] = tone
    recognizer = FakeRecognizer({}, default="话")
    seen: list[float] = []
    segments = transcribe_track(recognizer, audio, seen.append)
    # 13 minutes: cut near 5 and 10 minutes, then less than 1.2 pieces are left.
    assert recognizer.calls == 3
    assert seen[-1] == 1.0
    # Every tone is heard once, at its own time on the whole track: no cut went through one.
    assert [round(s.start, 2) for s in segments] == [float(s) for s in starts]


# -- script and values -----------------------------------------------------------------------


def test_the_script_comes_from_the_manifest_then_the_business(scripts_dir: Path) -> None:
    recorded = {
        "version": 1,
        "script": "unit_check",
        "script_version": "u.1",
        "values": {"teller_name": "王芳", "ignored": 3},
    }
    choice = choose_script(_manifest(recorded), scripts_dir=scripts_dir, values={"x": "1"})
    assert (choice.script.id, choice.chosen_by) == ("unit_check", "manifest")
    assert choice.values == {"teller_name": "王芳", "x": "1"}
    stale = recorded | {"script_version": "u.0"}
    with pytest.raises(ScriptError, match=r"unit_check@u\.0.*--script"):
        choose_script(_manifest(stale), scripts_dir=scripts_dir)
    chosen = choose_script(_manifest(stale), script_id="unit_check", scripts_dir=scripts_dir)
    assert chosen.chosen_by == "command line" and chosen.values == {"teller_name": "王芳"}
    by_business = choose_script(_manifest(None, business="wealth"))
    assert (by_business.script.id, by_business.chosen_by) == ("bank_wealth_product", "business")
    with pytest.raises(ScriptError, match="--script"):
        choose_script(_manifest(None, business="mortgage"))


def test_a_line_without_its_values_fails_naming_them(tmp_path: Path, scripts_dir: Path) -> None:
    recording = _recording(tmp_path)
    extra = Mark(name="teller_identity.start", media_ms=17600, wall_time=CREATED)
    recording.manifest = recording.manifest.model_copy(
        update={"marks": [*recording.manifest.marks, extra]}
    )
    choice = choose_script(recording.manifest, script_id="unit_check", scripts_dir=scripts_dir)
    document = analyze_recording(recording, choice, FakeRecognizer(_texts()), FakeFaces())
    identity = _moments(document)["teller_identity"]
    assert identity["decision"] == "fail"
    assert identity["lines"][0]["reasons"] == [
        "not judged: no value for {teller_name} (柜员姓名); the recording does not carry it "
        "(--set teller_name=VALUE)"
    ]
    assert document["missing_values"] == ["teller_name"]
    # The other moments are judged as usual: only lines with placeholders need values.
    assert _moments(document)["consent"]["decision"] == "pass"
    named = ScriptChoice(choice.script, {"teller_name": "王芳"}, "command line")
    document = analyze_recording(recording, named, FakeRecognizer(_texts()), FakeFaces())
    identity = _moments(document)["teller_identity"]
    assert identity["span_ms"][0] == 17600 and identity["span_ended_by"] == "recording end"
    assert identity["lines"][0]["expected"] == "我是远程柜员王芳。"
    assert identity["lines"][0]["reasons"] == ["no speech recognised"]
    assert any("no end mark" in r for r in identity["reasons"])
    assert document["missing_values"] == []


# -- HTML ------------------------------------------------------------------------------------


def test_html_escapes_everything_from_the_recording(tmp_path: Path, scripts_dir: Path) -> None:
    hostile = "<script>alert('x')</script>"
    recognizer = FakeRecognizer(_texts() | {5: hostile})
    document = _analyze(_recording(tmp_path), scripts_dir, recognizer=recognizer)
    document["values"] = {"product_name": '"><img src=x onerror=alert(1)>'}
    page = render_html(document)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "&quot;&gt;&lt;img" in page
    assert page.startswith("<!DOCTYPE html>") and 'lang="zh-CN"' in page
    assert "录音录像告知与同意" in page and "待人工复核" in page and "not marked" in page
    assert "http" not in page  # self-contained: nothing fetched
    json.dumps(document)  # still plain JSON


# -- command line ----------------------------------------------------------------------------

VECTOR_ARCHIVE = Path(__file__).parents[1] / "vectors" / "archive-v1"


def _vteller(argv: list[str]) -> int:
    from server.cli import main

    return main(argv)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    monkeypatch.setenv("VTELLER_DATA_DIR", str(directory))
    monkeypatch.delenv("VTELLER_COMPLIANCE_SCRIPTS_DIR", raising=False)
    return directory


def test_analyze_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _vteller(["compliance", "analyze", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--keyring", "--keys", "--manifest", "--script", "--set", "--json", "--html"):
        assert flag in out
    assert "--progress {text,json,none}" in out and "2 an input" in out
    with pytest.raises(SystemExit):
        _vteller(["compliance", "--help"])
    assert "analyze" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.webm"], "missing.webm does not exist"),
        (["notes.txt"], "neither an archive nor a .webm"),
        (["."], "holds no manifest.json"),
        (["s3://bucket"], "s3://BUCKET/archives/ARCHIVE_ID"),
        (["recording.webm"], "--manifest FILE"),
        (["recording.webm", "--manifest", "notes.txt"], "is not a valid manifest"),
        (["recording.webm", "--manifest", "m.json", "--script", "nope"], "no script 'nope'"),
        (["recording.webm", "--manifest", "m.json", "--html", "no/r.html"], "does not exist"),
        (["recording.webm", "--manifest", "m.json", "--set", "oops"], "use NAME=VALUE"),
    ],
)
def test_unusable_input_exits_2_and_names_the_fix(
    argv: list[str],
    message: str,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recording = _recording(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "recording.webm").write_bytes(recording.path.read_bytes())
    (tmp_path / "manifest.json").rename(tmp_path / "m.json")
    assert _vteller(["compliance", "analyze", *argv]) == 2
    assert message in capsys.readouterr().err


def _vector_archive(tmp_path: Path) -> tuple[Path, Path]:
    archive = tmp_path / "archive"
    shutil.copytree(VECTOR_ARCHIVE / "archive", archive)
    vectors = json.loads((VECTOR_ARCHIVE / "vectors.json").read_text())
    keyring = tmp_path / "keyring.json"
    kek = bytes.fromhex(vectors["key_wrap"]["kek"])
    key_id = vectors["key_wrap"]["key_id"]
    keyring.write_text(
        json.dumps(
            {
                "format": KEYRING_FORMAT,
                "current": key_id,
                "keys": [{"id": key_id, "key": base64.b64encode(kek).decode()}],
            }
        )
    )
    keyring.chmod(0o600)
    return archive, keyring


def test_an_archive_is_verified_before_anything_else(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, keyring = _vector_archive(tmp_path)
    analyze = ["compliance", "analyze", str(archive)]
    # Its business has no default script: the message says how to name one.
    assert _vteller(analyze) == 2
    assert "--script" in capsys.readouterr().err
    analyze += ["--script", "general_service"]
    assert _vteller(analyze) == 2
    assert "--keyring FILE" in capsys.readouterr().err
    # Verified and decrypted, but the vectors' segments are not a recording.
    assert _vteller([*analyze, "--keyring", str(keyring), "--progress", "json"]) == 2
    err = capsys.readouterr().err
    assert "does not open as a WebM recording" in err
    progress = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert progress[0] == {"stage": "decrypting", "fraction": "0.00"}
    # One flipped byte: refused, naming the segment, before any analysis.
    segment = archive / "seg-000002.bin"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 1
    segment.write_bytes(bytes(data))
    assert _vteller([*analyze, "--keyring", str(keyring), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "does not verify" in err and "seg-000002.bin" in err


def test_the_id_card_portrait_held_up_is_not_a_second_person() -> None:
    # The customer shows the card, as the customer_identity moment asks: YuNet finds its
    # portrait too, but it is far smaller than the face in front of the camera (the live
    # check's rule, server.identity.face.match.live_faces). A second person of a size counts.
    counter = YuNetFaceCounter()
    frame = webcam_frame(load_face("obama.jpg"), face_width=150)
    card = render_front(VALID_SPECS[1])
    width = 260
    card = cv2.resize(card, (width, width * card.shape[0] // card.shape[1]))
    held = frame.copy()
    held[-card.shape[0] - 10 : -10, -width - 10 : -10] = card
    assert len(counter._engine.detect(held)) == 2  # the detector does see the portrait
    assert counter.count(held) == 1
    right = webcam_frame(load_face("biden.jpg"), face_width=150)
    assert counter.count(np.hstack([frame[:, 160:480], right[:, 160:480]])) == 2
