"""The recording container: one live WebM (Matroska) stream, one track per participant source.

Packets are stored exactly as the SFU received them (VP8, Opus): nothing is decoded or encoded.
A Matroska file declares its tracks before the first packet, so the recording declares a fixed
set of slots up front: the teller's microphone, camera and screen, the customer's microphone and
camera, and those of up to `EXPERT_SLOTS` experts who may join later. A slot that never receives
a packet is an empty track; who filled which slot is in the manifest's `tracks`.

Why not FFmpeg's muxer (PyAV): it interleaves, and holds every packet back until each declared
track has produced one — so with an idle slot (no screen shared, no second expert) nothing would
be written until the end, and a crash would lose the whole call. This writer emits each cluster
(at most `CLUSTER_MS` of media) as soon as it closes, in the live form Matroska allows (a segment
of unknown size, no cues). FFmpeg reads it back in recorder/playback.py and the tests.

Timestamps are milliseconds on the recording's common clock (0 = the consent moment).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from recorder import __version__

EXPERT_SLOTS = 2
CLUSTER_MS = 1000
# Placeholder picture size for the header; players size the picture from the VP8 bitstream.
DEFAULT_SIZE = (640, 480)
# RFC 7845 5.1 identification header: version 1, 2 channels, 312 samples pre-skip, 48 kHz.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48000, 0, 0)
OPUS_PRESKIP_NS = 312 * 1_000_000_000 // 48000
OPUS_SEEK_PREROLL_NS = 80_000_000

# Matroska element IDs (https://www.matroska.org/technical/elements.html)
EBML, EBML_VERSION, EBML_READ_VERSION = 0x1A45DFA3, 0x4286, 0x42F7
EBML_MAX_ID_LENGTH, EBML_MAX_SIZE_LENGTH = 0x42F2, 0x42F3
DOC_TYPE, DOC_TYPE_VERSION, DOC_TYPE_READ_VERSION = 0x4282, 0x4287, 0x4285
SEGMENT, INFO, TIMESTAMP_SCALE, MUXING_APP, WRITING_APP = (
    0x18538067,
    0x1549A966,
    0x2AD7B1,
    0x4D80,
    0x5741,
)
TRACKS, TRACK_ENTRY, TRACK_NUMBER, TRACK_UID, TRACK_TYPE = 0x1654AE6B, 0xAE, 0xD7, 0x73C5, 0x83
FLAG_LACING, NAME, CODEC_ID, CODEC_PRIVATE = 0x9C, 0x536E, 0x86, 0x63A2
CODEC_DELAY, SEEK_PRE_ROLL = 0x56AA, 0x56BB
VIDEO, PIXEL_WIDTH, PIXEL_HEIGHT = 0xE0, 0xB0, 0xBA
AUDIO, SAMPLING_FREQUENCY, CHANNELS = 0xE1, 0xB5, 0x9F
CLUSTER, CLUSTER_TIMESTAMP, SIMPLE_BLOCK = 0x1F43B675, 0xE7, 0xA3
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


@dataclass(frozen=True)
class Slot:
    role: str  # "teller", "customer", "expert1", "expert2"
    source: str  # "microphone", "camera", "screen"

    @property
    def kind(self) -> str:
        return "audio" if self.source == "microphone" else "video"


def standard_slots() -> list[Slot]:
    roles = [("teller", True), ("customer", False)] + [
        (f"expert{n}", True) for n in range(1, EXPERT_SLOTS + 1)
    ]
    slots: list[Slot] = []
    for role, shares_screen in roles:
        slots += [Slot(role, "microphone"), Slot(role, "camera")]
        if shares_screen:
            slots.append(Slot(role, "screen"))
    return slots


class ByteSink(Protocol):
    def write(self, data: bytes) -> int: ...


def _element_id(element: int) -> bytes:
    return element.to_bytes((element.bit_length() + 7) // 8, "big")


def _size(length: int) -> bytes:
    # Always the 8-byte form: valid for any length, and sizes never need to shrink later.
    return (length | (1 << 56)).to_bytes(8, "big")


def element(element_id: int, payload: bytes) -> bytes:
    return _element_id(element_id) + _size(len(payload)) + payload


def uint(element_id: int, value: int) -> bytes:
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def text(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("utf-8"))


def _track_entry(number: int, slot: Slot) -> bytes:
    common = (
        uint(TRACK_NUMBER, number)
        + uint(TRACK_UID, number)
        + uint(FLAG_LACING, 0)
        + text(NAME, f"{slot.role} {slot.source}")
    )
    if slot.kind == "audio":
        return element(
            TRACK_ENTRY,
            common
            + uint(TRACK_TYPE, 2)
            + text(CODEC_ID, "A_OPUS")
            + element(CODEC_PRIVATE, OPUS_HEAD)
            + uint(CODEC_DELAY, OPUS_PRESKIP_NS)
            + uint(SEEK_PRE_ROLL, OPUS_SEEK_PREROLL_NS)
            + element(
                AUDIO, element(SAMPLING_FREQUENCY, struct.pack(">d", 48000.0)) + uint(CHANNELS, 2)
            ),
        )
    width, height = DEFAULT_SIZE
    return element(
        TRACK_ENTRY,
        common
        + uint(TRACK_TYPE, 1)
        + text(CODEC_ID, "V_VP8")
        + element(VIDEO, uint(PIXEL_WIDTH, width) + uint(PIXEL_HEIGHT, height)),
    )


class WebmMuxer:
    """Not thread-safe: one thread writes (see recorder/capture.py)."""

    def __init__(self, sink: ByteSink, slots: list[Slot]) -> None:
        self._sink = sink
        self._last_pts = [-1] * len(slots)
        header = element(
            EBML,
            uint(EBML_VERSION, 1)
            + uint(EBML_READ_VERSION, 1)
            + uint(EBML_MAX_ID_LENGTH, 4)
            + uint(EBML_MAX_SIZE_LENGTH, 8)
            + text(DOC_TYPE, "webm")
            + uint(DOC_TYPE_VERSION, 4)
            + uint(DOC_TYPE_READ_VERSION, 2),
        )
        app = f"vteller-recorder {__version__}"
        info = element(
            INFO, uint(TIMESTAMP_SCALE, 1_000_000) + text(MUXING_APP, app) + text(WRITING_APP, app)
        )
        tracks = element(
            TRACKS, b"".join(_track_entry(i + 1, slot) for i, slot in enumerate(slots))
        )
        sink.write(header + _element_id(SEGMENT) + UNKNOWN_SIZE + info + tracks)
        self._cluster_ms: int | None = None
        self._blocks: list[bytes] = []

    def write(self, slot: int, data: bytes, pts_ms: int, keyframe: bool) -> None:
        # Matroska needs increasing timestamps per track.
        pts_ms = max(pts_ms, self._last_pts[slot] + 1)
        self._last_pts[slot] = pts_ms
        if self._cluster_ms is not None and not (
            0 <= pts_ms - self._cluster_ms < CLUSTER_MS
            or -CLUSTER_MS < pts_ms - self._cluster_ms < 0
        ):
            self.flush()
        if self._cluster_ms is None:
            self._cluster_ms = pts_ms
        relative = pts_ms - self._cluster_ms
        header = bytes([0x80 | (slot + 1)]) + struct.pack(">hB", relative, 0x80 if keyframe else 0)
        self._blocks.append(element(SIMPLE_BLOCK, header + data))

    def flush(self) -> None:
        """Write the open cluster: everything given so far is in the sink afterwards."""
        if self._cluster_ms is None:
            return
        self._sink.write(
            element(CLUSTER, uint(CLUSTER_TIMESTAMP, self._cluster_ms) + b"".join(self._blocks))
        )
        self._cluster_ms = None
        self._blocks = []

    def close(self) -> None:
        self.flush()
