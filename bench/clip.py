"""A synthetic camera and microphone, encoded once into VP8 and Opus packets kept in memory.

The load generator replays these packets in a loop instead of encoding live: an encoder in every
simulated participant would make the clients, not the server, the bottleneck. The picture is a
textured background drifting under a moving block plus per-frame sensor-like noise, so that
libvpx's rate control produces realistic frame sizes (keyframes of tens of kB, delta frames of
a few kB) at the target bitrate instead of the near-empty frames of a static test card.

The video is in three temporal layers, as vteller's pages ask browsers to send a camera
(``L1T3``): libvpx's 4-frame pattern (FFmpeg ``ts_layering_mode=3``, layers 0, 2, 1, 2) in
which base-layer frames refer only to base-layer frames and the top layer, every other frame,
updates no reference buffer, like Chromium's. The loop starts on the pattern's first frame, so
frame ``k`` of the clip is in layer ``LAYER_PATTERN[k % 4]``; the load generator writes it in
each frame's RTP descriptor as a browser does. The SFU forwards and records every frame; its
live checks decode only the base layer.
"""

from __future__ import annotations

import fractions
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

WIDTH, HEIGHT, FPS = 640, 480, 20
VIDEO_BITRATE = 500_000
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms, what browsers send
AUDIO_BITRATE = 32_000
VIDEO_CLOCK = 90_000  # RTP clock rate of video
LAYER_PATTERN = (0, 2, 1, 2)  # temporal layer of each frame of libvpx's 3-layer pattern
# Cumulative kbit/s of layers 0, 0-1 and 0-2: the 40/20/40 % split of Chromium's L1T3.
_LAYER_KBPS = ",".join(str(VIDEO_BITRATE * share // 100_000) for share in (40, 60, 100))
TEMPORAL_LAYERS = (
    f"ts_number_layers=3:ts_target_bitrate={_LAYER_KBPS}:ts_rate_decimator=4,2,1:"
    f"ts_periodicity={len(LAYER_PATTERN)}:ts_layer_id={','.join(map(str, LAYER_PATTERN))}:"
    "ts_layering_mode=3"
)


@dataclass(frozen=True)
class EncodedClip:
    """Loopable encoded media. ``video[0]`` is a keyframe, so the loop restarts cleanly."""

    video: list[tuple[bytes, bool]]  # (VP8 frame, is keyframe)
    audio: list[bytes]  # Opus packets of AUDIO_SAMPLES each
    fps: int = FPS

    @property
    def video_layers(self) -> list[int]:
        """The temporal layer of each frame of ``video``."""
        return [LAYER_PATTERN[k % len(LAYER_PATTERN)] for k in range(len(self.video))]

    @property
    def video_kbps(self) -> float:
        return sum(len(d) for d, _ in self.video) * 8 / (len(self.video) / self.fps) / 1000

    @property
    def audio_kbps(self) -> float:
        seconds = len(self.audio) * AUDIO_SAMPLES / AUDIO_RATE
        return sum(len(d) for d in self.audio) * 8 / seconds / 1000

    def save(self, path: Path) -> None:
        path.write_bytes(pickle.dumps((self.video, self.audio, self.fps)))

    @classmethod
    def load(cls, path: Path) -> EncodedClip:
        # Only ever a file this benchmark run wrote itself into its private temporary directory.
        video, audio, fps = pickle.loads(path.read_bytes())
        return cls(video=video, audio=audio, fps=fps)


def _picture(i: int, n: int, texture: np.ndarray[Any, Any], rng: np.random.Generator) -> Any:
    ox, oy = (i * 3) % 32, (i * 2) % 32
    base = texture[oy : oy + HEIGHT, ox : ox + WIDTH]
    noise = rng.integers(-6, 7, (HEIGHT, WIDTH), dtype=np.int16)
    luma = np.clip(base // 2 + 64 + noise, 0, 255).astype(np.uint8)
    cx = int(WIDTH / 2 + 200 * math.sin(i / n * 2 * math.pi))
    cy = int(HEIGHT / 2 + 150 * math.cos(i / n * 2 * math.pi))
    luma[max(0, cy - 60) : cy + 60, max(0, cx - 60) : cx + 60] = 220
    planes = np.empty((HEIGHT * 3 // 2, WIDTH), np.uint8)
    planes[:HEIGHT] = luma
    planes[HEIGHT:] = 128
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def encode_video(seconds: float) -> list[tuple[bytes, bool]]:
    period = len(LAYER_PATTERN)
    # Whole layer patterns, so that the loop (and a restart on PLI) keeps the pattern.
    n = max(period, -(-round(seconds * FPS) // period) * period)
    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.framerate = fractions.Fraction(FPS, 1)
    codec.bit_rate = VIDEO_BITRATE
    codec.gop_size = 100_000  # keyframes only where we force them (loop start), as a browser
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "max-intra-rate": "0",  # no cap on keyframe size (libvpx default caps it)
        "ts-parameters": TEMPORAL_LAYERS,
        "error-resilient": "default",
    }
    rng = np.random.default_rng(20)
    coarse = rng.integers(0, 255, (HEIGHT // 16 + 3, WIDTH // 16 + 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((16, 16), np.uint8)).astype(np.int16)
    # Warm the rate control up for half a loop, then force a keyframe and keep one loop: the
    # very first keyframe of a fresh libvpx encoder is tiny and unrepresentative.
    # The encoder's pattern counts frames from its start: the kept keyframe starts a pattern.
    warmup = n // 2 // period * period
    kept: list[tuple[bytes, bool]] = []
    for i in range(warmup + n):
        frame = _picture(i % n, n, texture, rng)
        frame.pts = i
        frame.time_base = codec.time_base
        if i == warmup:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(frame):
            if i >= warmup:
                kept.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in codec.encode(None):
        kept.append((bytes(packet), bool(packet.is_keyframe)))
    if len(kept) != n or not kept[0][1]:
        raise RuntimeError("libvpx did not emit one frame per picture, starting with the keyframe")
    return kept


def encode_audio(seconds: float) -> list[bytes]:
    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = AUDIO_BITRATE
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    count = max(2, round(seconds * AUDIO_RATE / AUDIO_SAMPLES))
    packets: list[bytes] = []
    for i in range(count):
        t = (np.arange(AUDIO_SAMPLES) + i * AUDIO_SAMPLES) / AUDIO_RATE
        # A warbling tone with a syllable-like envelope: Opus spends speech-like bits on it.
        tone = np.sin(2 * np.pi * (300 + 80 * np.sin(2 * np.pi * 2 * t)) * t)
        mono = (tone * (0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 2.5 * t))) * 9000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_SAMPLES
        frame.time_base = codec.time_base
        packets.extend(bytes(p) for p in codec.encode(frame))
    packets.extend(bytes(p) for p in codec.encode(None))
    return packets[:count]


def make_clip(seconds: float) -> EncodedClip:
    return EncodedClip(video=encode_video(seconds), audio=encode_audio(seconds))
