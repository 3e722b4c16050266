"""Hearing a published microphone beside the forwarding path: utterances of 16 kHz mono audio.

The live "disclosure not yet heard" warning needs what the teller said, while the call runs.
:class:`HeardMicrophone` subscribes to a microphone's :class:`~server.sfu.encoded.EncodedSource`
like any consumer (the publisher's Opus frames are not touched), decodes them in a worker thread,
and :class:`Segmenter` cuts the audio into utterances by its loudness: an utterance ends after
``hangover_seconds`` below ``speech_dbfs`` (the pause after a sentence), or at ``max_seconds``.

Loudness is enough here: the recogniser runs its own voice-activity filter on each utterance,
and a cut in the wrong place only delays a warning (phrases are looked for in everything heard
since the moment started, not utterance by utterance). Cost: an Opus decode is about 50 µs per
20 ms frame; frames are decoded in batches every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from compliance.asr import SAMPLE_RATE, Audio
from server.sfu.encoded import EncodedFrame, FrameSink

__all__ = ["HeardMicrophone", "Segmenter", "Utterance", "VadConfig"]

_BLOCK = SAMPLE_RATE // 50  # 20 ms: one Opus frame, the unit of the loudness decision


class AudioSource(Protocol):
    """What :class:`HeardMicrophone` needs of an :class:`~server.sfu.encoded.EncodedSource`."""

    def add_sink(self, sink: FrameSink) -> None: ...

    def remove_sink(self, sink: FrameSink) -> None: ...


@dataclass(frozen=True)
class VadConfig:
    speech_dbfs: float = -45.0  # louder than this is speech (the e2e hum is at -70)
    hangover_seconds: float = 0.6  # this long below it ends an utterance
    min_seconds: float = 0.3  # shorter bursts (a cough, a click) are not utterances
    max_seconds: float = 20.0  # a longer one is cut here (a warning should not wait for it)
    preroll_seconds: float = 0.2  # kept before the first loud block (soft word onsets)
    poll_seconds: float = 0.1  # how often the frames received are decoded


@dataclass(frozen=True)
class Utterance:
    audio: Audio  # 16 kHz mono float32, the recogniser's input
    started_at: float  # time.monotonic() when its first loud frame arrived
    ended_at: float  # ... and when its last one did


def _dbfs(block: Audio) -> float:
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if len(block) else 0.0
    return 20 * math.log10(max(rms, 1e-9))


class Segmenter:
    """Cuts a stream of 20 ms blocks into utterances (pure: no clock, no I/O)."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        self._blocks: list[Audio] = []  # the utterance so far, or the preroll before one
        self._samples = 0  # in _blocks: kept as it goes, an utterance has up to 1000 blocks
        self._speaking = False
        self._quiet = 0  # blocks below the threshold since the last loud one
        self._loud = 0  # loud blocks in the utterance
        self._started_at = 0.0
        self._last_loud_at = 0.0

    def push(self, block: Audio, at: float) -> Utterance | None:
        """One block (any length up to a few frames) received at `at`; a finished utterance."""
        config = self.config
        loud = _dbfs(block) > config.speech_dbfs
        self._blocks.append(block)
        self._samples += len(block)
        if not self._speaking:
            if not loud:
                keep = max(1, round(config.preroll_seconds * 50))
                del self._blocks[:-keep]
                self._samples = sum(len(b) for b in self._blocks)
                return None
            self._speaking, self._loud, self._quiet = True, 0, 0
            self._started_at = at
        if loud:
            self._loud += 1
            self._quiet = 0
            self._last_loud_at = at
        else:
            self._quiet += 1
        length = self._samples / SAMPLE_RATE
        if self._quiet * len(block) / SAMPLE_RATE >= config.hangover_seconds:
            return self._finish()
        if length >= config.max_seconds:
            return self._finish()
        return None

    def flush(self) -> Utterance | None:
        """The stream ended: what was being said, if anything."""
        return self._finish() if self._speaking else None

    def _finish(self) -> Utterance | None:
        blocks, self._blocks, self._samples = self._blocks, [], 0
        self._speaking = False
        if self._loud * _BLOCK / SAMPLE_RATE < self.config.min_seconds:
            return None
        return Utterance(np.concatenate(blocks), self._started_at, self._last_loud_at)


class _OpusDecoder:
    """Opus packets to 16 kHz mono blocks; used by one thread at a time."""

    def __init__(self) -> None:
        import av

        self._codec: Any = av.CodecContext.create("opus", "r")
        self._resampler: Any = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._packet = av.Packet

    def decode(self, data: bytes) -> Audio:
        out: list[Audio] = []
        try:
            frames = self._codec.decode(self._packet(data))
        except Exception:  # one corrupt packet is a 20 ms gap, not a failure
            return np.zeros(0, dtype=np.float32)
        for frame in frames:
            for resampled in self._resampler.resample(frame):
                out.append(resampled.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class HeardMicrophone:
    """A microphone's utterances, for as long as its source lives (see the module docstring).

    ``async for utterance in HeardMicrophone(source).utterances(): ...``; :meth:`close`
    unsubscribes (also when the iteration is left).
    """

    def __init__(self, source: AudioSource, config: VadConfig | None = None) -> None:
        self._source = source
        self._segmenter = Segmenter(config)
        self._pending: list[tuple[bytes, float]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._decoder: _OpusDecoder | None = None

    # -- FrameSink (event loop, must not block) ---------------------------------------------------

    def push_frame(self, source: object, frame: EncodedFrame) -> None:
        if source is self._source and not self._closed and frame.mime_type == "audio/opus":
            self._pending.append((frame.data, time.monotonic()))

    def source_closed(self, source: object) -> None:
        if source is self._source:
            self._closed = True
            self._wake.set()

    # -- consumer ---------------------------------------------------------------------------------

    async def utterances(self) -> AsyncGenerator[Utterance, None]:
        try:
            self._source.add_sink(self)
        except ValueError:
            return  # closed already (the participant left or republished)
        poll = self._segmenter.config.poll_seconds
        try:
            while not self._closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await self._wake.wait()
                batch, self._pending = self._pending, []
                if not batch:
                    continue
                for utterance in await asyncio.to_thread(self._hear, batch):
                    yield utterance
            last = self._segmenter.flush()
            if last is not None:
                yield last
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._source.remove_sink(self)
        self._wake.set()

    def _hear(self, batch: list[tuple[bytes, float]]) -> list[Utterance]:
        # Worker thread: the decoder and the segmenter are only used here, one batch at a time.
        if self._decoder is None:
            self._decoder = _OpusDecoder()
        found: list[Utterance] = []
        for data, at in batch:
            utterance = self._segmenter.push(self._decoder.decode(data), at)
            if utterance is not None:
                found.append(utterance)
        return found
