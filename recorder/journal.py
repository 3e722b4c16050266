"""A recording's journal: what has been sealed so far, durable on disk as it happens.

If the process dies mid-recording, the segments are in the spool or the archive store, but the
manifest that lists them was never written. The journal holds everything the manifest needs
(the wrapped data key, every sealed segment, marks, presence, tracks, identity), one fsync'ed
JSON line per event, so that on restart the archive is finalized as "interrupted" and still
verifies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder.seal.files import ensure_private_dir


@dataclass
class JournalState:
    header: dict[str, Any]
    segments: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    presence: list[dict[str, Any]] = field(default_factory=list)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    compliance: dict[str, Any] | None = None
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, newest wins
    last_media_ms: int = 0
    last_wall: str = ""
    sealed: bool = False


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, directory: Path, archive_id: str, header: dict[str, Any]) -> Journal:
        ensure_private_dir(directory)
        journal = cls(directory / f"{archive_id}.jsonl")
        fd = os.open(journal.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.close(fd)
        journal.append("header", header)
        return journal

    def append(self, kind: str, record: dict[str, Any]) -> None:
        """Durable before it returns (called from a thread, never on the event loop)."""
        line = json.dumps({"kind": kind, **record}, ensure_ascii=False, separators=(",", ":"))
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> JournalState:
        state: JournalState | None = None
        with self.path.open(encoding="utf-8") as fh:
            for raw in fh:
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    break  # a line cut short by the crash: everything before it holds
                kind = record.pop("kind")
                if kind == "header":
                    state = JournalState(header=record)
                    continue
                if state is None:
                    raise ValueError(f"{self.path}: no header line")
                if kind == "segment":
                    state.segments.append(record["entry"])
                    state.last_media_ms = record["media_ms"]
                    state.last_wall = record["wall"]
                elif kind == "mark":
                    state.marks.append(record)
                elif kind == "presence":
                    state.presence.append(record)
                elif kind == "track":
                    state.tracks.append(record)
                elif kind == "gap":
                    state.gaps.append(record)
                elif kind == "identity":
                    state.identity = record["identity"]  # the newest one holds
                elif kind == "compliance":
                    state.compliance = record["compliance"]
                elif kind == "transaction":
                    state.transactions[record["transaction"]["id"]] = record["transaction"]
                elif kind == "sealed":
                    state.sealed = True
        if state is None:
            raise ValueError(f"{self.path}: empty journal")
        return state

    @staticmethod
    def unsealed(directory: Path) -> list[Journal]:
        if not directory.is_dir():
            return []
        return [
            journal
            for journal in (Journal(p) for p in sorted(directory.glob("*.jsonl")))
            if not journal.read().sealed
        ]
