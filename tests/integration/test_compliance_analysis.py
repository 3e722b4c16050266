"""After the call: a real recorded call judged by `vteller compliance analyze`, as an operator or
the server would run it (a separate process reading the archive store).

The teller's and the customer's microphones play the committed Mandarin clips
(tests/fixtures/speech) and their cameras show a face each; the teller marks the consent and the
risk disclosure around what is said. The recognition is real (Whisper base), so is the face
detection (YuNet). The script is a small one of the test's own (`--scripts-dir`): the built-in
wealth script also wants the product document on screen, which these bots do not share.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml

from compliance.analyzer import Thresholds
from compliance.asr import MODEL_SHA256, ensure_model
from compliance.cli import model_cache_dir
from compliance.matching import locate, to_syllables
from compliance.sales_script import available_scripts
from recorder.seal.canonical import canonical_json
from recorder.seal.manifest import manifest_sha256
from recorder.verify import verify_archive
from tests.fixtures.idcards import load_face
from tests.fixtures.liveness import webcam_frame
from tests.integration.test_call import _teller_and_customer
from tests.integration.test_recording import _keys, _recorded, _stored, _vteller
from tests.support.bot import Bot, FramesTrack, WavTrack
from tests.support.server import RunningServer

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"


def _script() -> str:
    """The consent and the risk disclosure of the built-in wealth script, word for word, with
    two moments the teller will not mark."""
    wealth = yaml.safe_load(available_scripts()["bank_wealth_product"].read_text("utf-8"))
    moments = {m["id"]: m for m in wealth["moments"]}
    script = {
        "id": "call_check",
        "version": "test.1",
        "title": "双录测试话术",
        "placeholders": {"teller_name": "柜员姓名"},
        "forbidden": wealth["forbidden"],
        "moments": [
            moments["consent"],
            moments["risk_disclosure"] | {"document_on_screen": False},
            {"id": "signature", "title": "抄录与签名", "signature_captured": True},
            moments["closing"],
        ],
    }
    text: str = yaml.safe_dump(script, allow_unicode=True)
    return text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Whisper model, reassembled once for the module (each server links it in)."""
    return ensure_model(tmp_path_factory.mktemp("compliance-models"))


def _camera(photo: str) -> FramesTrack:
    # 320x240 at 10 frames a second: two bots encoding VP8 on a 2-core test machine starve the
    # event loop they share with the server, and their microphones fall behind real time (the
    # recorder keeps their audio continuous, recorder/clock.py, but a test should not lean on
    # that).
    frame = cv2.resize(webcam_frame(load_face(photo)), (320, 240), interpolation=cv2.INTER_AREA)
    return FramesTrack([frame], rate=10)


async def _mark(teller: Bot, moment: str, phase: str) -> None:
    await teller.send({"type": "mark", "moment": moment, "phase": phase})
    marked = await teller.expect("marked")
    assert marked["moment"] == moment


async def _call(server: RunningServer, disclosure: str) -> str:
    """A recorded call with the consent and the risk disclosure read; its archive id."""
    teller, customer, _ = await _teller_and_customer(server)
    teller_mic, customer_mic = WavTrack(), WavTrack()
    teller.audio, teller.video = teller_mic, _camera("biden.jpg")
    customer.audio, customer.video = customer_mic, _camera("obama.jpg")

    async def joined() -> None:
        await teller.join()
        await customer.join()
        await teller.wait_for_media(customer.participant_id, "camera")
        await customer.wait_for_media(teller.participant_id, "camera")

    async def read_out() -> None:  # consent.start is at media time 0
        teller_mic.say(SPEECH / "teller_consent.wav")
        await teller_mic.idle()
        customer_mic.say(SPEECH / "customer_agree.wav")
        await customer_mic.idle()
        await asyncio.sleep(1.0)  # the last packets reach the recorder before the mark
        await _mark(teller, "consent", "end")
        await _mark(teller, "risk_disclosure", "start")
        teller_mic.say(SPEECH / disclosure)
        await teller_mic.idle()
        # "我清楚了", not the one-second "是的": Whisper base hears that clip as "是的" or "是等"
        # depending on where it starts by a few tens of milliseconds, and the recording's
        # timing varies by that much (the analysis then rightly asks for a review).
        customer_mic.say(SPEECH / "customer_clear.wav")
        await customer_mic.idle()
        await asyncio.sleep(1.0)
        await _mark(teller, "risk_disclosure", "end")

    return await _recorded(server, teller, customer, read_out, joined)


async def _analyze(
    server: RunningServer, model_dir: Path, tmp_path: Path, archive_id: str, *extra: str
) -> tuple[int, dict[str, Any], list[dict[str, str]]]:
    data_dir = server.settings.data_dir
    cache = model_cache_dir(data_dir)
    cache.mkdir(parents=True, exist_ok=True)
    link = cache / model_dir.name
    if not link.exists():
        link.symlink_to(model_dir, target_is_directory=True)
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "call_check.yaml").write_text(_script(), encoding="utf-8")
    done = await _vteller(
        data_dir,
        "compliance",
        "analyze",
        f"s3://{server.settings.store.bucket}/archives/{archive_id}",
        "--keyring",
        str(data_dir / "keys" / "keyring.json"),
        "--scripts-dir",
        str(scripts),
        "--script",
        "call_check",
        "--set",
        "teller_name=王柜员",
        "--json",
        "--progress",
        "json",
        *extra,
    )
    assert done.returncode in (0, 1), done.stderr
    progress = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.returncode, json.loads(done.stdout), progress


def _says(heard: str, phrase: str) -> bool:
    return bool(locate(phrase, to_syllables(heard), Thresholds().match_similarity))


def _explain(moment: dict[str, Any]) -> str:
    """Why a moment did not pass, with what was heard and seen: enough to tell a recogniser
    slip or a stalled camera from a matching defect in a CI log."""
    heard = {line["speaker"]: _heard(moment, line["speaker"]) for line in moment["lines"]}
    return json.dumps(
        {
            "reasons": moment["reasons"],
            "visibility": moment["visibility"],
            "lines": moment["lines"],
            "heard": heard,
        },
        ensure_ascii=False,
    )


def _heard(moment: dict[str, Any], speaker: str) -> str:
    line = next(line for line in moment["lines"] if line["speaker"] == speaker)
    return "".join(segment["text"] for segment in line["transcript"])


async def test_a_call_read_as_scripted_passes_its_marked_moments(
    server: RunningServer, model_dir: Path, tmp_path: Path
) -> None:
    archive_id = await _call(server, "teller_risk_disclosure.wav")
    html = tmp_path / "report.html"
    code, report, progress = await _analyze(
        server, model_dir, tmp_path, archive_id, "--html", str(html)
    )
    moments = {m["id"]: m for m in report["moments"]}
    for moment in ("consent", "risk_disclosure"):
        assert moments[moment]["decision"] == "pass", _explain(moments[moment])
    # Each speaker's words come from their own track, inside the moment's span (heard as the
    # analysis hears them: the recogniser may write a homophone, 路因路向 for 录音录像).
    assert _says(_heard(moments["consent"], "teller"), "录音录像")
    assert _says(_heard(moments["risk_disclosure"], "teller"), "理财非存款")
    assert _heard(moments["consent"], "customer")
    start, end = moments["risk_disclosure"]["span_ms"]
    teller_line = moments["risk_disclosure"]["lines"][0]
    # A moment keeps the words centred in its span (compliance/asr.py, Segment.within): a word
    # under its end mark may reach past it by up to half its length.
    assert teller_line["transcript"]
    assert all(start <= (s["start_ms"] + s["end_ms"]) / 2 < end for s in teller_line["transcript"])
    assert teller_line["speech_ms"] >= teller_line["min_ms"] == 6000
    # Both faces on camera throughout.
    for moment in ("consent", "risk_disclosure"):
        assert moments[moment]["visibility"]["decision"] == "pass", moments[moment]["visibility"]
    # What was not marked is not passed; the signature is not checked by the product yet.
    assert moments["closing"]["reasons"] == ["not marked"]
    assert moments["signature"]["not_checked"] == ["signature_captured"]
    assert report["decision"] == "needs_review" and code == 1

    # The report is bound to the signed manifest and can be signed itself (no floats).
    archive = await _stored(server, archive_id)
    manifest = await asyncio.to_thread(archive.read, "manifest.json")
    assert report["manifest_sha256"] == manifest_sha256(manifest)
    assert report["archive_id"] == archive_id and report["source"]["verified"] is True
    assert report["script"] == {
        "id": "call_check",
        "version": "test.1",
        "title": "双录测试话术",
        "chosen_by": "command line",
    }
    assert MODEL_SHA256[:16] in report["models"]["asr"]
    assert "yunet" in report["models"]["face_detector"]
    canonical_json(report)
    stages = list(dict.fromkeys(p["stage"] for p in progress))
    assert stages == [
        "decrypting",
        "transcribing teller",
        "transcribing customer",
        "faces",
        "judging",
    ]
    page = html.read_text(encoding="utf-8")
    assert "录音录像告知与同意" in page and archive_id in page


async def test_a_misleading_disclosure_fails_and_the_decision_repeats(
    server: RunningServer, model_dir: Path, tmp_path: Path
) -> None:
    archive_id = await _call(server, "teller_misleading.wav")
    code, report, _ = await _analyze(server, model_dir, tmp_path, archive_id)
    moments = {m["id"]: m for m in report["moments"]}
    assert moments["consent"]["decision"] == "pass", moments["consent"]
    risk = moments["risk_disclosure"]
    assert risk["decision"] == "fail"
    teller = risk["lines"][0]
    assert teller["decision"] == "fail"
    assert any("forbidden phrase" in r for r in teller["reasons"]), teller["reasons"]
    assert report["decision"] == "fail" and code == 1

    # The same archive decrypted by an auditor's tools and analysed from the .webm: the very
    # same judgement (only the source and the time of the report differ).
    public_keys, keyring = _keys(server)
    archive = await _stored(server, archive_id)
    webm = tmp_path / "recording.webm"

    class Writer:
        def __init__(self) -> None:
            self.file = webm.open("wb")

        def begin_segment(self, segment: object) -> None:
            return None

        def write(self, plaintext: bytes) -> None:
            self.file.write(plaintext)

        def end_segment(self, segment: object, *, authentic: bool) -> list[str]:
            return []

        def end_archive(self, manifest: object) -> list[str]:
            self.file.close()
            return []

    verified = await asyncio.to_thread(
        verify_archive, archive, public_keys, keyring=keyring, inspector=Writer()
    )
    assert verified.ok and verified.manifest is not None
    (tmp_path / "manifest.json").write_bytes(verified.manifest.canonical_bytes())
    again = await _vteller(
        server.settings.data_dir,
        "compliance",
        "analyze",
        str(webm),
        "--scripts-dir",
        str(tmp_path / "scripts"),
        "--script",
        "call_check",
        "--set",
        "teller_name=王柜员",
        "--json",
        "--progress",
        "none",
    )
    assert again.returncode == 1, again.stderr
    repeated = json.loads(again.stdout)
    assert repeated["source"] == {"kind": "decrypted recording", "verified": False}
    varying = ("source", "created_at")
    assert {k: v for k, v in repeated.items() if k not in varying} == {
        k: v for k, v in report.items() if k not in varying
    }
