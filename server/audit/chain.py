"""The audit log's format: canonical entry bytes, entry hashes, checkpoint bytes, and the checks.

Everything here is pure (no database), so the same code checks the live log, the test vector in
tests/vectors/audit-v1/ and anything an auditor exports. docs/audit-log.md states the same rules
in prose, for verifiers written in other languages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from recorder.seal.canonical import canonical_json
from recorder.seal.digest import sha256_hex
from recorder.seal.signing import verify

ENTRY_FORMAT = "vteller-audit-entry/1"
CHECKPOINT_FORMAT = "vteller-audit-checkpoint/1"
# The first entry's previous hash: there is none, and a fixed value keeps every entry's shape alike.
GENESIS_HASH = "0" * 64
# The writer signs each time the log passes a multiple of this (server/audit/log.py), so no whole
# interval of entries (100..199, 200..299, ...) goes without a checkpoint.
CHECKPOINT_EVERY = 100


def format_time(at: datetime) -> str:
    """UTC, always six fractional digits and a Z: one spelling per instant, so one hash."""
    if at.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class EntryFields:
    """Everything an entry's hash covers."""

    seq: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    target: str
    detail: dict[str, Any]
    address: str | None
    prev_hash: str

    def document(self) -> dict[str, Any]:
        return {
            "format": ENTRY_FORMAT,
            "seq": self.seq,
            "at": format_time(self.at),
            "actor": self.actor,
            "actor_role": self.actor_role,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "address": self.address,
            "prev_hash": self.prev_hash,
        }

    def canonical(self) -> bytes:
        return canonical_json(self.document())

    def compute_hash(self) -> str:
        return sha256_hex(self.canonical())


@dataclass(frozen=True)
class Entry(EntryFields):
    """An entry as stored: its fields and the hash the writer computed over them."""

    entry_hash: str

    def as_json(self) -> dict[str, Any]:
        return self.document() | {"entry_hash": self.entry_hash}


@dataclass(frozen=True)
class CheckpointFields:
    seq: int
    entry_hash: str
    at: datetime
    key_id: str

    def canonical(self) -> bytes:
        return canonical_json(
            {
                "format": CHECKPOINT_FORMAT,
                "seq": self.seq,
                "entry_hash": self.entry_hash,
                "at": format_time(self.at),
                "key_id": self.key_id,
            }
        )


@dataclass(frozen=True)
class Checkpoint(CheckpointFields):
    signature: str  # Ed25519 over canonical(), lowercase hex (128 characters)

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"at": format_time(self.at)}


class ChainWalker:
    """Follows entries in sequence order and remembers the first broken link.

    `after` starts the walk behind an entry already trusted (a verified checkpoint), so a writer
    can check only what was appended since.
    """

    def __init__(self, after: tuple[int, str] | None = None) -> None:
        self.last_seq, self.last_hash = after if after is not None else (0, GENESIS_HASH)
        self.count = 0
        self.problem: str | None = None

    def add(self, entry: Entry) -> None:
        self.count += 1
        expected = self.last_seq + 1
        previous_seq, previous_hash = self.last_seq, self.last_hash
        self.last_seq, self.last_hash = entry.seq, entry.entry_hash
        if self.problem is not None:
            return  # only the first break is precise; everything after it follows from it
        # Order matters: a gap or a wrong link explains a mismatch better than "edited" would.
        if entry.seq != expected:
            if entry.seq < expected:
                self.problem = f"entry {entry.seq}: out of order after entry {previous_seq}"
            elif entry.seq == expected + 1:
                self.problem = (
                    f"entry {expected} missing (sequence jumps from {previous_seq} to {entry.seq})"
                )
            else:
                self.problem = (
                    f"entries {expected}..{entry.seq - 1} missing "
                    f"(sequence jumps from {previous_seq} to {entry.seq})"
                )
        elif entry.prev_hash != previous_hash:
            self.problem = (
                f"entry {entry.seq}: previous hash does not match "
                + (f"entry {previous_seq}" if previous_seq else "the genesis value")
                + " (reordered or deleted?)"
            )
        elif entry.compute_hash() != entry.entry_hash:
            self.problem = f"entry {entry.seq}: hash does not match its content (edited?)"


def checkpoint_signature_problem(
    checkpoint: Checkpoint, public_keys: dict[str, bytes]
) -> str | None:
    pem = public_keys.get(checkpoint.key_id)
    if pem is None:
        return f"checkpoint at {checkpoint.seq}: signed by unknown key {checkpoint.key_id}"
    try:
        signature = bytes.fromhex(checkpoint.signature)
    except ValueError:
        return f"checkpoint at {checkpoint.seq}: signature invalid (not hex)"
    if not verify(pem, signature, checkpoint.canonical()):
        return f"checkpoint at {checkpoint.seq}: signature invalid"
    return None


def checkpoint_entry_problem(checkpoint: Checkpoint, entry_hash: str | None) -> str | None:
    """Whether the entry a checkpoint signed (`entry_hash`, None when it is gone) is still there."""
    seq = checkpoint.seq
    if entry_hash is None:
        return _checkpoint_entry_missing(seq)
    if entry_hash != checkpoint.entry_hash:
        return f"checkpoint at {seq}: entry hash does not match entry {seq} (log rewritten?)"
    return None


def _checkpoint_entry_missing(seq: int) -> str:
    return f"checkpoint at {seq}: entry {seq} is missing (log truncated?)"


def _skips_an_interval(signed: int, next_signed: int, every: int) -> bool:
    """Whether signing `next_signed` after `signed` (0: nothing signed) leaves a whole interval of
    `every` entries between them without a checkpoint, which the writer never does."""
    return next_signed // every - signed // every >= 2


def unsigned_tail_problem(signed: int, head: int, every: int) -> str | None:
    """The entries after the newest checkpoint (at `signed`, 0 for none), if they are more than
    the writer ever leaves unsigned: it signs in every interval the log reaches."""
    if not _skips_an_interval(signed, head, every):
        return None
    return (
        f"entries {signed + 1}..{head} are not signed, though the writer signs each time the "
        f"log passes a multiple of {every} (checkpoints deleted?)"
    )


def signed_here_problem(
    signed_here: tuple[int, str], entry_hash: str | None, newest: int
) -> str | None:
    """Whether the log still holds what this machine last signed (its record in the data
    directory): entry `seq` with that hash (`entry_hash`: the log's, None when it is gone), and a
    checkpoint at least that far (`newest`: the newest valid checkpoint, 0 for none)."""
    seq, signed_hash = signed_here
    if entry_hash is None:
        return f"entry {seq}, which this machine signed, is missing (log truncated?)"
    if entry_hash != signed_hash:
        return f"entry {seq} is not the one this machine signed (log rewritten?)"
    if newest < seq:
        return f"the checkpoint at {seq} that this machine signed is missing (checkpoints deleted?)"
    return None


@dataclass
class Report:
    entries: int = 0
    first_seq: int | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def render(self) -> str:
        if self.entries == 0 and self.ok:
            return "audit log OK: empty"
        summary = (
            f"{self.entries} entries ({self.first_seq}..{self.head_seq}), head {self.head_hash}, "
            f"{self.checkpoints} checkpoints"
            + (f" (last at {self.last_checkpoint_seq})" if self.last_checkpoint_seq else "")
        )
        if self.ok:
            return f"audit log OK: {summary}"
        return "\n".join(
            [f"audit log BROKEN: {self.problems[0]}", *self.problems[1:], f"({summary})"]
        )


class Verifier:
    """Checks a whole log: feed every entry in sequence order, then call `finish()`.

    Checkpoints are loaded first (there are few) so entries can be streamed: each entry is compared
    with the checkpoint at its position as it passes. Besides each checkpoint, their spacing is
    checked: the writer signs in every interval of `checkpoint_every` entries that the log passes,
    so an interval without a checkpoint means checkpoints were deleted. `signed_here` is what this
    machine last signed (log.py keeps it in the data directory); the log must still hold it.
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        public_keys: dict[str, bytes],
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
        signed_here: tuple[int, str] | None = None,
    ) -> None:
        self._walker = ChainWalker()
        self._report = Report()
        self._every = checkpoint_every
        self._signed_here = signed_here
        self._signed_here_hash: str | None = None
        self._checkpoint_problems: dict[int, str] = {}
        self._pending: dict[int, Checkpoint] = {}
        self._valid: list[int] = []
        for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
            self._report.checkpoints += 1
            self._report.last_checkpoint_seq = checkpoint.seq
            problem = checkpoint_signature_problem(checkpoint, public_keys)
            if problem is not None:
                self._checkpoint_problems[checkpoint.seq] = problem
            else:
                self._pending[checkpoint.seq] = checkpoint

    def add(self, entry: Entry) -> None:
        if self._report.first_seq is None:
            self._report.first_seq = entry.seq
        self._walker.add(entry)
        if self._signed_here is not None and entry.seq == self._signed_here[0]:
            self._signed_here_hash = entry.entry_hash
        checkpoint = self._pending.pop(entry.seq, None)
        if checkpoint is None:
            return
        problem = checkpoint_entry_problem(checkpoint, entry.entry_hash)
        if problem is None:
            self._valid.append(entry.seq)
        else:
            self._checkpoint_problems[entry.seq] = problem

    def finish(self) -> Report:
        report = self._report
        report.entries = self._walker.count
        if report.entries:
            report.head_seq, report.head_hash = self._walker.last_seq, self._walker.last_hash
        for seq in self._pending:
            self._checkpoint_problems[seq] = _checkpoint_entry_missing(seq)
        if self._walker.problem is not None:
            report.problems.append(self._walker.problem)
        report.problems.extend(p for _, p in sorted(self._checkpoint_problems.items()))
        report.problems.extend(self._missing_checkpoint_problems(report.head_seq or 0))
        return report

    def _missing_checkpoint_problems(self, head: int) -> list[str]:
        # Only the tail counts: entries before a checkpoint that holds are bound by its signed
        # hash through the chain, however far back the previous checkpoint is (a deleted one in
        # between, or one the writer missed, hides nothing).
        problems: list[str] = []
        signed = max(self._valid, default=0)
        tail = unsigned_tail_problem(signed, head, self._every)
        if tail is not None:
            problems.append(tail)
        if self._signed_here is not None:
            here = signed_here_problem(self._signed_here, self._signed_here_hash, signed)
            if here is not None:
                problems.append(here)
        return problems


def verify_entries(
    entries: Iterable[Entry],
    checkpoints: Iterable[Checkpoint],
    public_keys: dict[str, bytes],
    *,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> Report:
    verifier = Verifier(checkpoints, public_keys, checkpoint_every=checkpoint_every)
    for entry in entries:
        verifier.add(entry)
    return verifier.finish()
