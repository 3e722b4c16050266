"""A recording's journal: what has been sealed so far, durable on disk as it happens.

If the process dies mid-recording, the segments are in the spool or the archive store, but the
manifest that lists them was never written. The journal holds everything the manifest needs
(the wrapped data key, every sealed segment and attachment, marks, presence, tracks, identity,
transactions, then the manifest as the recording ended and as signed), one fsync'ed
JSON line per event, so that on restart the archive is finalized as "interrupted" and still
verifies. A segment is journaled before it is spooled, so every segment object that can exist
is in the journal; recovery drops the last ones if they never reached the spool.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder.seal.files import create_private_file

BROKEN_SUFFIX = ".broken"
_LEGACY_TRACK_KINDS = ("audio", "video")


class UnknownRecord(Exception):
    """A journal record of a kind this version does not know: written by a newer vteller.

    Not a ValueError, so the journal is not set aside as broken but left where it is: sealing it
    without what the record holds would list fewer objects than the store keeps under retention.
    """


@dataclass
class JournalState:
    header: dict[str, Any]
    segments: list[dict[str, Any]] = field(default_factory=list)
    segment_cut_ms: list[int] = field(default_factory=list)  # media time each segment ended
    marks: list[dict[str, Any]] = field(default_factory=list)
    presence: list[dict[str, Any]] = field(default_factory=list)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    compliance: dict[str, Any] | None = None
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, newest wins
    attachments: list[dict[str, Any]] = field(default_factory=list)  # in index order
    last_media_ms: int = 0
    last_wall: str = ""
    # The manifest's members as the recording ended, before it was signed (the newest holds).
    ended: dict[str, Any] | None = None
    # The manifest and its signature as signed, once sealing began (the newest one holds).
    signed: tuple[bytes, bytes] | None = None
    sealed: bool = False


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        # False until this object has seen the file end in a newline: a line cut short by a crash
        # or a full disk (here or in an earlier process) must not swallow the next one.
        self._ends_cleanly = False
        # A transaction binding is journaled while the recording's task worker may be
        # journaling a segment: one line at a time, or a line could be torn in two.
        self._lock = threading.Lock()

    @classmethod
    def create(cls, directory: Path, archive_id: str, header: dict[str, Any]) -> Journal:
        journal = cls(directory / f"{archive_id}.jsonl")
        # Created with its header in one go (and its directory synced): a journal either has a
        # header or does not exist, even after a full disk or a power loss.
        create_private_file(journal.path, _line("header", header))
        journal._ends_cleanly = True
        return journal

    def append(self, kind: str, record: dict[str, Any]) -> None:
        """Durable before it returns (called from a thread, never on the event loop)."""
        line = _line(kind, record)
        with self._lock, self.path.open("a+b") as fh:
            if not self._ends_cleanly and fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line  # the torn line stays, as a line read() skips
            self._ends_cleanly = False
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._ends_cleanly = True

    def read(self) -> JournalState:
        state: JournalState | None = None
        # By index: a line written again after its fsync failed (the write is retried, and the
        # first one had reached the file) appears twice, and must be listed once.
        listed: dict[tuple[str, int], dict[str, Any]] = {}
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    record = json.loads(raw)
                except ValueError:  # also a UTF-8 sequence cut in half
                    continue  # a line cut short by a crash or a full disk: the others hold
                kind = record.pop("kind")
                if kind == "header":
                    state = JournalState(header=record)
                    continue
                if state is None:
                    raise ValueError(f"{self.path}: no header line")
                if kind in ("segment", "attachment") and not self._first(listed, kind, record):
                    continue
                if kind == "segment":
                    state.segments.append(record["entry"])
                    state.segment_cut_ms.append(record["media_ms"])
                    state.last_media_ms = record["media_ms"]
                    state.last_wall = record["wall"]
                elif kind == "mark":
                    state.marks.append(record)
                elif kind == "presence":
                    state.presence.append(record)
                elif kind == "track":
                    state.tracks.append(record["track"])
                elif kind in _LEGACY_TRACK_KINDS and {"id", "participant_id"} <= record.keys():
                    # Before 2026-11-28 a track's own "kind" overwrote the line's: these lines
                    # are tracks, and they were ignored (recovered manifests listed none).
                    state.tracks.append(record | {"kind": kind})
                elif kind == "gap":
                    state.gaps.append(record)
                elif kind == "identity":
                    state.identity = record["identity"]  # the newest one holds
                elif kind == "compliance":
                    state.compliance = record["compliance"]
                elif kind == "attachment":
                    state.attachments.append(record["entry"])
                elif kind == "transaction":
                    state.transactions[record["transaction"]["id"]] = record["transaction"]
                elif kind == "ended":
                    state.ended = record["manifest"]
                elif kind == "signed":
                    state.signed = (
                        base64.b64decode(record["manifest"]),
                        base64.b64decode(record["signature"]),
                    )
                elif kind == "sealed":
                    state.sealed = True
                else:
                    raise UnknownRecord(
                        f"{self.path}: a {kind!r} record, which this version of vteller does not "
                        "know: the journal was written by a newer version; finish it with that "
                        "version (it is left in place)"
                    )
        if state is None:
            raise ValueError(f"{self.path}: empty journal")
        return state

    def _first(
        self, seen: dict[tuple[str, int], dict[str, Any]], kind: str, record: dict[str, Any]
    ) -> bool:
        """False for a repeat of a segment or attachment line already read; a different line
        for the same index cannot be sealed into any manifest that verifies."""
        index = record["entry"]["index"]
        earlier = seen.setdefault((kind, index), record)
        if earlier is record:
            return True
        if earlier != record:
            raise ValueError(
                f"{self.path}: two different {kind} records for index {index}: {earlier} and "
                f"{record}; the archive cannot list both, so this journal needs an operator"
            )
        return False

    def remove(self) -> None:
        """Delete the journal of a sealed recording: the manifest holds all it said, and a
        journal kept would be read again at every start, for ever."""
        self.path.unlink(missing_ok=True)

    def set_aside(self) -> Path:
        """Rename an unusable journal out of the way (kept for an operator, never deleted)."""
        broken = self.path.with_name(self.path.name + BROKEN_SUFFIX)
        os.replace(self.path, broken)
        return broken

    @staticmethod
    def found(directory: Path) -> list[Journal]:
        """Every journal in `directory`, sealed or not (those set aside excluded)."""
        if not directory.is_dir():
            return []
        return [Journal(p) for p in sorted(directory.glob("*.jsonl"))]


def _line(kind: str, record: dict[str, Any]) -> bytes:
    if "kind" in record:
        raise ValueError(f"a {kind!r} journal record must not have a 'kind' of its own: wrap it")
    text = json.dumps({"kind": kind, **record}, ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8")
