"""The live speech check without a model: utterances cut from Opus frames by loudness, and the
required phrases a moment still lacks (the server's recogniser is faked by its transcripts; the
real one is in tests/integration/test_live_speech.py)."""

from __future__ import annotations

import asyncio
import fractions
from typing import Any, cast

import av
import numpy as np

from compliance.asr import SAMPLE_RATE
from compliance.sales_script import Moment, load_script
from server.recording.live_checks import Camera, FaceObserver, LiveChecks
from server.recording.live_speech import Hearing
from server.sfu.decoded_audio import HeardMicrophone, Segmenter, VadConfig
from server.sfu.encoded import EncodedFrame, FrameSink
from tests.integration.test_live_checks import _Events


def _tone(seconds: float, dbfs: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    amplitude = 10 ** (dbfs / 20) * np.sqrt(2)  # a sine's RMS is its amplitude / sqrt(2)
    return np.asarray(amplitude * np.sin(2 * np.pi * 440 * t), dtype=np.float32)


def _blocks(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + 320] for i in range(0, len(audio), 320)]


def _cut(audio: np.ndarray, config: VadConfig | None = None) -> list[tuple[float, float, float]]:
    """(start s, end s, length s) of each utterance, block times as arrival times."""
    segmenter = Segmenter(config)
    found = []
    for i, block in enumerate(_blocks(audio)):
        utterance = segmenter.push(block, i * 0.02)
        if utterance is not None:
            found.append(utterance)
    last = segmenter.flush()
    if last is not None:
        found.append(last)
    return [
        (round(u.started_at, 2), round(u.ended_at, 2), round(len(u.audio) / SAMPLE_RATE, 2))
        for u in found
    ]


def test_speech_between_pauses_is_one_utterance_each() -> None:
    quiet = _tone(1.0, -70)  # the hum of a muted microphone: not speech
    audio = np.concatenate([quiet, _tone(2.0, -20), quiet, _tone(1.5, -25), quiet])
    cut = _cut(audio)
    assert [(start, end) for start, end, _ in cut] == [(1.0, 2.98), (4.0, 5.48)]
    # Each keeps the 0.2 s before it (soft onsets) and the pause that ended it.
    assert cut[0][2] == 2.8


def test_short_pauses_clicks_and_endless_speech() -> None:
    quiet = _tone(1.0, -70)
    # A breath (0.3 s) inside a sentence does not end it; a click is no utterance.
    sentence = np.concatenate([_tone(1.0, -20), _tone(0.3, -70), _tone(1.0, -20)])
    assert [(s, e) for s, e, _ in _cut(np.concatenate([quiet, sentence, quiet]))] == [(1.0, 3.28)]
    assert _cut(np.concatenate([quiet, _tone(0.1, -20), quiet])) == []
    # Talking on without a pause is cut at max_seconds; the rest ends with the stream.
    cut = _cut(_tone(5.0, -20), VadConfig(max_seconds=2.0))
    assert [length for _, _, length in cut] == [2.0, 2.0, 1.0]


class _Source:
    def __init__(self) -> None:
        self.sinks: list[FrameSink] = []
        self.subscribed = asyncio.Event()

    def add_sink(self, sink: FrameSink) -> None:
        self.sinks.append(sink)
        self.subscribed.set()

    def remove_sink(self, sink: FrameSink) -> None:
        self.sinks.remove(sink)


def _opus(audio: np.ndarray) -> list[bytes]:
    """48 kHz Opus packets of 20 ms, as a browser sends them."""
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
    encoder.time_base = fractions.Fraction(1, 48000)
    pcm = (np.repeat(audio, 3) * 32767).astype(np.int16)  # 16 kHz -> 48 kHz, crudely
    packets = []
    for i in range(0, len(pcm) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + 960].reshape(1, -1), "s16", "mono")
        frame.sample_rate, frame.pts = 48000, i
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


async def test_a_microphone_is_heard_beside_forwarding() -> None:
    quiet = _tone(0.5, -70)
    packets = _opus(np.concatenate([quiet, _tone(1.5, -20), quiet, quiet]))
    source: Any = _Source()  # stands in for an EncodedSource
    heard = HeardMicrophone(source, VadConfig(poll_seconds=0.01))
    utterances = heard.utterances()
    first = asyncio.ensure_future(anext(utterances))
    await asyncio.wait_for(source.subscribed.wait(), 10)
    for n, data in enumerate(packets):
        source.sinks[0].push_frame(source, EncodedFrame(data, n * 960, True, "audio/opus", 48000))
        # Other codecs' frames (or another source's) are not this microphone's.
        heard.push_frame(source, EncodedFrame(b"\x00", 0, True, "video/vp8", 90000))
        heard.push_frame(object(), EncodedFrame(data, 0, True, "audio/opus", 48000))
    utterance = await asyncio.wait_for(first, 10)
    assert 1.5 <= len(utterance.audio) / SAMPLE_RATE <= 2.5
    assert utterance.audio.dtype == np.float32 and np.abs(utterance.audio).max() > 0.05
    heard.source_closed(source)
    assert [u async for u in utterances] == []
    assert source.sinks == []  # unsubscribed when done


def _hearing() -> Hearing:
    script = load_script("bank_wealth_product")
    return Hearing({m.id: m for m in script.moments}, {"product_name": "稳盈一号"})


def test_required_phrases_are_looked_for_in_everything_heard_in_the_moment() -> None:
    hearing = _hearing()
    assert hearing.required("risk_disclosure") == ["理财非存款", "产品有风险", "投资须谨慎"]
    # Said the opposite: 没有风险 is not 有风险.
    assert hearing.heard(["risk_disclosure"], "p1", "本产品保本，投资没有风险。", 1000)
    assert hearing.unheard == {
        ("risk_disclosure", "p1"): (1000, ["理财非存款", "产品有风险", "投资须谨慎"])
    }
    # Heard in parts, over several utterances (homophones count): fewer missing, same start.
    assert hearing.heard(["risk_disclosure"], "p1", "理财飞存款，产品有风险", 5000)
    assert hearing.unheard == {("risk_disclosure", "p1"): (1000, ["投资须谨慎"])}
    assert not hearing.heard(["risk_disclosure"], "p1", "请您仔细阅读", 6000)  # no change
    assert hearing.heard(["risk_disclosure"], "p1", "投资需谨慎。", 7000)
    assert hearing.unheard == {}


def test_reading_a_moment_again_starts_afresh() -> None:
    hearing = _hearing()
    hearing.heard(["risk_disclosure"], "p1", "理财非存款", 1000)
    hearing.restart("risk_disclosure")
    assert hearing.unheard == {}
    hearing.heard(["risk_disclosure"], "p1", "产品有风险，投资须谨慎", 9000)
    assert hearing.unheard == {("risk_disclosure", "p1"): (9000, ["理财非存款"])}


def test_phrases_whose_placeholders_have_no_value_are_not_listened_for() -> None:
    moment = Moment.model_validate(
        {
            "id": "product_introduction",
            "title": "产品介绍",
            "lines": [
                {
                    "speaker": "teller",
                    "say": ["下面为您介绍{product_name}，请您阅读产品说明书。"],
                    "must_include": ["{product_name}", "产品说明书"],
                }
            ],
        }
    )
    moments = {moment.id: moment}
    assert Hearing(moments, {}).required(moment.id) == ["产品说明书"]
    assert Hearing(moments, {"product_name": "稳盈一号"}).required(moment.id) == [
        "稳盈一号",
        "产品说明书",
    ]


class _Listener:
    """Says what the teller said, utterance by utterance (the audio is a tone)."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)

    async def transcribe(self, audio: np.ndarray) -> str:
        assert audio.dtype == np.float32 and len(audio) > SAMPLE_RATE // 2
        return self.texts.pop(0)


async def test_the_warning_lists_fewer_phrases_as_they_are_heard_and_ends() -> None:
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    microphone: Any = _Source()
    listener = _Listener(
        "本产品保本，投资没有风险。",  # the opposite: nothing required heard
        "理财非存款，产品有风险。",
        "投资须谨慎。",
    )
    events = _Events()
    checks = LiveChecks(
        "s",
        cast(FaceObserver, object()),  # no camera is published: no face is counted
        events,
        sent.put,
        lambda: [Camera("t", "teller", None, microphone)],
        listener=listener,
    )
    quiet = _tone(0.5, -70)
    sentence = _opus(np.concatenate([quiet, _tone(1.0, -20), quiet, quiet, quiet]))

    def says() -> None:
        for n, data in enumerate(sentence):
            for sink in microphone.sinks:
                sink.push_frame(microphone, EncodedFrame(data, n * 960, True, "audio/opus", 48000))

    async def told(missing: list[str]) -> None:
        async with asyncio.timeout(10):
            while True:
                message = await sent.get()
                found = [w for w in message["warnings"] if w["code"] == "disclosure_not_heard"]
                if [w["missing"] for w in found] == ([missing] if missing else []):
                    return

    checks.start(load_script("bank_wealth_product"), lambda monotonic: 5000.0, "a1")
    try:
        await asyncio.wait_for(microphone.subscribed.wait(), 10)
        checks.marked("risk_disclosure", "start", 4000)
        says()
        await told(["理财非存款", "产品有风险", "投资须谨慎"])
        says()
        await told(["投资须谨慎"])
        says()
        await told([])
    finally:
        await checks.stop()
    assert listener.texts == []
    assert microphone.sinks == []  # the microphone is let go when the recording stops
    unheard = [(e, d) for e, _, d in events.recorded if d["code"] == "disclosure_not_heard"]
    # One warning that shrank, not three: started once, ended once.
    assert [e for e, _ in unheard] == ["live_warning_started", "live_warning_ended"]
    assert unheard[0][1]["moment"] == "risk_disclosure" and unheard[0][1]["since_ms"] == 5000
