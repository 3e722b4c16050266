"""Live "disclosure not yet heard": the teller's required phrases, recognised while the call runs.

A moment's teller line may list ``must_include`` phrases (理财非存款, 产品有风险, ...). While such a
moment is open, each of the teller's utterances (server/sfu/decoded_audio.py) is recognised, and
after each one the phrases that everything heard since the moment's start still lacks are the
warning's ``missing`` list; once all are heard the warning ends. Matching is the after-call
analysis' own (toneless pinyin, negation-aware: 产品没有风险 does not count as 产品有风险), on the
same Whisper model; the after-call analysis still decides, this only tells the teller in time to
read the line again.

Cost: one recogniser per worker process, loaded at the first utterance that needs it (about
150 MB), used by one utterance at a time on ``cpu_threads`` threads so that media keeps a core.
Only utterances inside a moment with required phrases are recognised; on this machine a
10-second utterance takes about 1-2 s (docs/benchmarks.md). An utterance that ended too long
ago when its turn comes (LiveCheckConfig.speech_max_lag_seconds) is skipped and logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from compliance.analyzer import Thresholds
from compliance.asr import Audio
from compliance.matching import unheard
from compliance.sales_script import Moment, placeholders_in, render

if TYPE_CHECKING:
    from compliance.asr import WhisperRecognizer

log = structlog.get_logger(__name__)

__all__ = ["Hearing", "SpeechListener", "WhisperListener"]


class SpeechListener(Protocol):
    """Speech to text for the live check (a bank may plug in its own ASR service)."""

    async def transcribe(self, audio: Audio) -> str: ...


@dataclass(frozen=True)
class ListenerConfig:
    cpu_threads: int = 1
    beam_size: int = 5


class WhisperListener:
    """The Whisper base model of the after-call analysis, loaded once per process on demand."""

    def __init__(self, model_cache: Path, config: ListenerConfig | None = None) -> None:
        self._model_cache = model_cache
        self.config = config or ListenerConfig()
        self._recognizer: WhisperRecognizer | None = None
        self._loading = asyncio.Lock()
        self._busy = asyncio.Lock()  # one utterance at a time: a queue, not a CPU pile-up

    async def transcribe(self, audio: Audio) -> str:
        recognizer = await self._load()
        async with self._busy:
            segments = await asyncio.to_thread(recognizer.transcribe, audio)
        return "".join(segment.text for segment in segments)

    async def _load(self) -> WhisperRecognizer:
        async with self._loading:
            if self._recognizer is None:
                from compliance.asr import WhisperRecognizer, ensure_model

                config = self.config
                self._recognizer = await asyncio.to_thread(
                    lambda: WhisperRecognizer(
                        ensure_model(self._model_cache),
                        cpu_threads=config.cpu_threads,
                        beam_size=config.beam_size,
                    )
                )
                log.info("live_speech_model_loaded", model=self._recognizer.model_version)
            return self._recognizer


# (moment, participant id) -> (since when, media ms; the phrases not heard yet)
Unheard = dict[tuple[str, str], tuple[int, list[str]]]


class Hearing:
    """What the tellers said in each open moment, and the required phrases still missing.

    Event loop only, one per recording (see LiveChecks, which turns :attr:`unheard` into
    ``disclosure_not_heard`` warnings).
    """

    def __init__(
        self,
        moments: Mapping[str, Moment],
        values: Mapping[str, str],
        thresholds: Thresholds | None = None,
    ) -> None:
        self._required = {m.id: _required(m, values) for m in moments.values()}
        self._similarity = (thresholds or Thresholds()).match_similarity
        self._heard: dict[tuple[str, str], list[str]] = {}
        self.unheard: Unheard = {}

    def required(self, moment: str) -> list[str]:
        """The teller's phrases of `moment` that can be checked live (placeholders filled)."""
        return self._required.get(moment, [])

    def restart(self, moment: str) -> None:
        """The moment is (re)started: an earlier reading no longer counts."""
        self._heard = {k: v for k, v in self._heard.items() if k[0] != moment}
        self.unheard = {k: v for k, v in self.unheard.items() if k[0] != moment}

    def heard(self, moments: Sequence[str], participant_id: str, text: str, since_ms: int) -> bool:
        """An utterance of a teller while `moments` were open; True if a warning changed."""
        changed = False
        for moment in moments:
            phrases = self.required(moment)
            if not phrases:
                continue
            key = (moment, participant_id)
            texts = self._heard.setdefault(key, [])
            texts.append(text)
            missing = unheard(phrases, "，".join(texts), self._similarity)
            old = self.unheard.get(key)
            if not missing:
                changed |= self.unheard.pop(key, None) is not None
            elif old is None or old[1] != missing:
                self.unheard[key] = (old[0] if old else since_ms, missing)
                changed = True
        return changed


def _required(moment: Moment, values: Mapping[str, str]) -> list[str]:
    phrases: list[str] = []
    for line in moment.lines:
        if line.speaker != "teller":
            continue
        for phrase in line.must_include:
            # Without the product's name (say) the phrase cannot be looked for: the after-call
            # analysis marks such lines for review.
            if all(name in values for name in placeholders_in(phrase)):
                phrases.append(render(phrase, values))
    return phrases
