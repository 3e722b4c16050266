"""Verification of a sealed archive, by anyone holding the public signing keys.

Without a keyring this checks that the manifest is authentic and that every stored segment is
exactly the one it lists (and so is every attachment, such as a customer's signature image); with
a keyring it also decrypts every segment and attachment in full. Every problem is
collected and described in plain words rather than stopping at the first.

Run as `python -m recorder.verify DIR` (what `vteller verify DIR` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from recorder.seal.digest import sha256_hex
from recorder.seal.keyring import KeyringError, KeyWrapper
from recorder.seal.manifest import (
    ATTACHMENT_OBJECT_PATTERN,
    MANIFEST_OBJECT,
    SEGMENT_OBJECT_PATTERN,
    SIGNATURE_OBJECT,
    Manifest,
    ManifestError,
    SealedObject,
    SegmentEntry,
    is_canonical,
    manifest_sha256,
    parse_manifest,
)
from recorder.seal.report import (
    REPORT_OBJECT_PATTERN,
    ReportError,
    parse_report,
    report_object_names,
)
from recorder.seal.signing import SIGNATURE_SIZE, PublicKeyError, public_key_id
from recorder.seal.signing import verify as verify_signature
from recorder.seal.stream import KEY_SIZE, SegmentDecryptor, SegmentError, decrypt_segment

_FEED_SIZE = 1024 * 1024


class ObjectNotFound(LookupError):
    """Raised by `ArchiveReader.read` for a name the archive does not hold."""


class ArchiveReader(Protocol):
    """The objects of one archive, by name (`manifest.json`, `manifest.sig`, `seg-000000.bin`)."""

    def list_names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...


class DirectoryArchive:
    """An archive (or an export package) in a local directory; names are relative POSIX paths."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def list_names(self) -> list[str]:
        return sorted(
            file.relative_to(self.path).as_posix()
            for file in self.path.rglob("*")
            if file.is_file()
        )

    def read(self, name: str) -> bytes:
        relative = PurePosixPath(name)
        # Names come from manifests, which may be hostile before their signature is checked.
        if relative.is_absolute() or ".." in relative.parts:
            raise ObjectNotFound(name)
        try:
            return (self.path / relative).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(name) from None


class PlaintextInspector(Protocol):
    """A hook that sees the verified plaintext of every segment, in order (e.g. playability).

    `write` receives only chunks whose tags verified; `end_segment` says whether the segment as a
    whole turned out authentic and complete. Returned strings become problems in the report.
    """

    def begin_segment(self, segment: SegmentEntry) -> None: ...

    def write(self, plaintext: bytes) -> None: ...

    def end_segment(self, segment: SegmentEntry, *, authentic: bool) -> list[str]: ...

    def end_archive(self, manifest: Manifest) -> list[str]: ...


@dataclass(frozen=True)
class Problem:
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass
class VerificationReport:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    signature_verified: bool = False
    decrypted: bool = False
    reports: list[str] = field(default_factory=list)  # signed reports that verified

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, subject: str, message: str) -> None:
        self.problems.append(Problem(subject, message))

    @property
    def signing_key_id(self) -> str | None:
        """The key whose signature over the manifest verified (None: none did)."""
        return self.manifest.signing_key_id if self.signature_verified and self.manifest else None

    def render(self, key_origin: str | None = None) -> str:
        """The result in plain words; `key_origin` says where the public keys came from, since
        a signature proves only as much as the key it verified with."""
        archive = self.manifest.archive_id if self.manifest else "(unreadable manifest)"
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problem(s))"
        lines = [f"archive {archive}: {verdict}"]
        if self.signing_key_id is not None:
            origin = f", {key_origin}" if key_origin else ""
            lines.append(f"  signed by key {self.signing_key_id}{origin}")
        lines += [f"  problem: {problem}" for problem in self.problems]
        lines += [f"  report: {name} (signed, bound to this manifest)" for name in self.reports]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def verify_archive(
    reader: ArchiveReader,
    public_keys: Mapping[str, bytes],
    *,
    keyring: KeyWrapper | None = None,
    previous_manifest: bytes | None = None,
    previous_sha256: str | None = None,
    inspector: PlaintextInspector | None = None,
) -> VerificationReport:
    """Check an archive against the public keys (key id -> PEM); see docs/archive-format.md 8.
    The chain link is checked against `previous_manifest`, or, when that manifest was purged,
    against the `previous_sha256` its tombstone and its `archive.purged` audit entry keep."""
    report = VerificationReport()
    names = set(reader.list_names())
    data = _signed_manifest(reader, names, public_keys, report)
    if data is None or report.manifest is None:
        return report
    manifest = report.manifest
    _check_reports(reader, names, public_keys, manifest, data, report)
    _check_previous(manifest, previous_manifest, previous_sha256, report)
    attachments = manifest.attachments or []
    _check_object_list("segment", manifest.segments, SEGMENT_OBJECT_PATTERN, names, report)
    _check_object_list("attachment", attachments, ATTACHMENT_OBJECT_PATTERN, names, report)

    data_key = _unwrap(manifest, keyring, report) if keyring is not None else None
    for entry in manifest.sealed_objects:
        if entry.object not in names:
            report.add(entry.subject, "missing")
            continue
        ciphertext = reader.read(entry.object)
        _check_ciphertext(entry, ciphertext, report)
        if data_key is None:
            continue
        # Only the media goes to the inspector: an attachment is a document of its own.
        if inspector is None or not isinstance(entry, SegmentEntry):
            _check_plaintext(manifest, entry, ciphertext, data_key, report)
            continue
        inspector.begin_segment(entry)
        authentic = _check_plaintext(
            manifest, entry, ciphertext, data_key, report, write=inspector.write
        )
        for text in inspector.end_segment(entry, authentic=authentic):
            report.add(entry.subject, text)
    _note_signatures(manifest, report)
    if data_key is not None:
        report.decrypted = True
        if inspector is not None:
            report.problems += [Problem("media", text) for text in inspector.end_archive(manifest)]
    elif keyring is None:
        report.notes.append("segments and attachments were not decrypted (no keyring given)")
    if manifest.status == "interrupted":
        report.notes.append("the recording is marked interrupted (it ended abnormally)")
    if manifest.gaps:
        report.notes.append(f"{len(manifest.gaps)} gap(s) recorded in the media")
    return report


class ImageUnavailable(Exception):
    """A signature image cannot be handed out as evidence; `code` and the message say why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def signature_image(
    reader: ArchiveReader,
    public_keys: Mapping[str, bytes],
    keyring: KeyWrapper,
    transaction_id: str,
) -> bytes:
    """The customer's signature image for `transaction_id`, read from the sealed archive and
    checked on the way: the manifest's form and signature, the transaction's binding, the
    attachment's hashes and every tag. No media is read, so this is cheap.

    Raises ImageUnavailable: `not_verified` (the problems found), `not_signed_here` (no such
    transaction in this recording) or `image_not_archived` (sealed before images were).
    """
    report = VerificationReport()
    names = set(reader.list_names())
    _signed_manifest(reader, names, public_keys, report)
    manifest = report.manifest
    if manifest is None or report.problems:
        raise ImageUnavailable("not_verified", _problems_text(report))
    binding = next((t for t in manifest.transactions or [] if t.id == transaction_id), None)
    if binding is None:
        raise ImageUnavailable(
            "not_signed_here", f"transaction {transaction_id} was not signed in this recording"
        )
    entry = manifest.signature_attachment(binding)
    if entry is None:
        raise ImageUnavailable(
            "image_not_archived",
            "this archive binds only the SHA-256 of the signature image (it was sealed before "
            "images were archived); the transaction's own record holds the image",
        )
    if entry.object not in names:
        raise ImageUnavailable("not_verified", f"{entry.subject}: missing")
    ciphertext = reader.read(entry.object)
    _check_ciphertext(entry, ciphertext, report)
    data_key = _unwrap(manifest, keyring, report)
    pieces: list[bytes] = []
    if data_key is not None and not report.problems:
        _check_plaintext(manifest, entry, ciphertext, data_key, report, write=pieces.append)
    if report.problems:
        raise ImageUnavailable("not_verified", _problems_text(report))
    return b"".join(pieces)


def _problems_text(report: VerificationReport) -> str:
    return "; ".join(str(problem) for problem in report.problems)


def _signed_manifest(
    reader: ArchiveReader,
    names: set[str],
    public_keys: Mapping[str, bytes],
    report: VerificationReport,
) -> bytes | None:
    """Read, parse and check `manifest.json` and its signature into `report`; its bytes, or
    None when there is no valid manifest to go on with."""
    if MANIFEST_OBJECT not in names:
        report.add("manifest", f"missing ({MANIFEST_OBJECT})")
        return None
    data = reader.read(MANIFEST_OBJECT)
    try:
        manifest = parse_manifest(data)
    except ManifestError as error:
        report.add("manifest", f"not a valid version 1 manifest: {error}")
        return None
    report.manifest = manifest
    if not is_canonical(manifest, data):
        report.add("manifest", "not in canonical form (altered, or not written by a sealer)")
    _check_signature(reader, names, public_keys, manifest, data, report)
    return data


def iter_plaintext(
    manifest: Manifest,
    entry: SealedObject,
    ciphertext: bytes,
    data_key: bytes,
    *,
    decryptor: SegmentDecryptor | None = None,
) -> Iterator[bytes]:
    """Verified plaintext of one segment or attachment; raises SegmentError once it turns out not
    authentic.

    Pass a `decryptor` (from `segment_decryptor`) to read its `digest` after exhausting this.
    """
    if decryptor is None:
        decryptor = segment_decryptor(manifest, entry, data_key)
    view = memoryview(ciphertext)
    pieces = (view[start : start + _FEED_SIZE] for start in range(0, len(view), _FEED_SIZE))
    return decrypt_segment(decryptor, pieces)


def segment_decryptor(manifest: Manifest, entry: SealedObject, data_key: bytes) -> SegmentDecryptor:
    return SegmentDecryptor(
        data_key,
        manifest.archive_uuid,
        entry.index,
        chunk_size=manifest.chunk_size,
        key_info=entry.key_info,
    )


def _check_signature(
    reader: ArchiveReader,
    names: set[str],
    public_keys: Mapping[str, bytes],
    manifest: Manifest,
    data: bytes,
    report: VerificationReport,
) -> None:
    if _signed_by(
        reader,
        names,
        public_keys,
        manifest.signing_key_id,
        data,
        "manifest",
        SIGNATURE_OBJECT,
        report,
    ):
        report.signature_verified = True


def _signed_by(
    reader: ArchiveReader,
    names: set[str],
    public_keys: Mapping[str, bytes],
    key_id: str,
    data: bytes,
    subject: str,
    signature_name: str,
    report: VerificationReport,
) -> bool:
    """Whether `signature_name` holds a valid signature of `data` by key `key_id`."""
    if signature_name not in names:
        report.add(subject, f"signature ({signature_name}) is missing")
        return False
    signature = reader.read(signature_name)
    if len(signature) != SIGNATURE_SIZE:
        report.add(
            subject,
            f"signature ({signature_name}) is {len(signature)} bytes, not {SIGNATURE_SIZE}",
        )
        return False
    pem = public_keys.get(key_id)
    if pem is None:
        given = ", ".join(sorted(public_keys)) or "none"
        report.add(
            subject,
            f"signed with key {key_id}, which is not among the public keys given ({given})",
        )
        return False
    try:
        actual_id = public_key_id(pem)
    except PublicKeyError as error:
        report.add(subject, f"the public key given for {key_id} is unusable: {error}")
        return False
    if actual_id != key_id:
        report.add(subject, f"the public key given as {key_id} is actually key {actual_id}")
        return False
    if not verify_signature(pem, signature, data):
        report.add(subject, f"signature does not verify with key {key_id}")
        return False
    return True


def _check_reports(
    reader: ArchiveReader,
    names: set[str],
    public_keys: Mapping[str, bytes],
    manifest: Manifest,
    manifest_bytes: bytes,
    report: VerificationReport,
) -> None:
    """Every signed report added after sealing (section 11) must be bound to this manifest."""
    digest = manifest_sha256(manifest_bytes)
    for name in sorted(names):
        found = REPORT_OBJECT_PATTERN.fullmatch(name)
        if not found:
            continue
        data = reader.read(name)
        try:
            document = parse_report(data, manifest.archive_id, digest)
        except ReportError as error:
            report.add(name, str(error))
            continue
        signature_name = report_object_names(int(found[1]))[1]
        if _signed_by(
            reader,
            names,
            public_keys,
            document["signing_key_id"],
            data,
            name,
            signature_name,
            report,
        ):
            report.reports.append(name)


def _check_previous(
    manifest: Manifest,
    previous_manifest: bytes | None,
    previous_sha256: str | None,
    report: VerificationReport,
) -> None:
    link = manifest.previous_manifest_sha256
    if previous_manifest is not None:
        actual, given = manifest_sha256(previous_manifest), "the given previous manifest hashes to"
    elif previous_sha256 is not None:
        actual, given = previous_sha256.lower(), "the given previous manifest SHA-256 is"
    else:
        if link is None:
            report.notes.append("first archive of its chain (no previous manifest)")
        else:
            report.notes.append(f"link to previous manifest {link} not checked (none given)")
        return
    if link is None:
        report.add("manifest", "names no previous manifest, but one was given")
    elif link != actual:
        report.add("manifest", f"previous_manifest_sha256 is {link}, but {given} {actual}")
    elif previous_manifest is None:
        report.notes.append(
            "link to previous manifest checked against its SHA-256 alone (a purged "
            "archive's tombstone or archive.purged audit entry), not against the manifest"
        )


def _check_object_list(
    what: str,
    entries: Sequence[SealedObject],
    pattern: re.Pattern[str],
    names: set[str],
    report: VerificationReport,
) -> None:
    for position, entry in enumerate(entries):
        if entry.index != position:
            report.add(
                "manifest",
                f"{what} list is not 0..{len(entries) - 1} in order: entry {position} "
                f"is {what} {entry.index}",
            )
        if entry.object != entry.expected_object:
            report.add(entry.subject, f"object name should be {entry.expected_object}")
    listed = {entry.object for entry in entries}
    for name in sorted(names - listed):
        if pattern.fullmatch(name):
            report.add(name, f"{what} object not listed in the manifest")


def _check_ciphertext(entry: SealedObject, ciphertext: bytes, report: VerificationReport) -> None:
    if len(ciphertext) != entry.ciphertext_size:
        report.add(
            entry.subject,
            f"ciphertext is {len(ciphertext)} bytes, the manifest says {entry.ciphertext_size}",
        )
    if sha256_hex(ciphertext) != entry.ciphertext_sha256:
        report.add(entry.subject, "SHA-256 of ciphertext differs from the manifest")


def _note_signatures(manifest: Manifest, report: VerificationReport) -> None:
    """Say, per signed transaction, whether its signature image is sealed in the archive (those
    sealed before 2026-11-28 carry only its hash)."""
    faulty = {problem.subject for problem in report.problems}
    for binding in manifest.transactions or []:
        image = manifest.signature_attachment(binding)
        if image is None:
            report.notes.append(
                f"transaction {binding.id}: signature image not in the archive (only its "
                "SHA-256 is bound)"
            )
        elif report.signature_verified and image.subject not in faulty:
            report.notes.append(
                f"transaction {binding.id}: signature image in {image.object} ({image.media_type})"
            )
        else:
            report.notes.append(
                f"transaction {binding.id}: signature image listed as {image.object}, not "
                "verified (see the problems)"
            )


def _unwrap(manifest: Manifest, keyring: KeyWrapper, report: VerificationReport) -> bytes | None:
    try:
        data_key = keyring.unwrap(manifest.wrapped_key.to_wrapped(), manifest.archive_uuid)
    except (KeyringError, ValueError) as error:  # ValueError: from a key wrapper of a KMS, too
        report.add("manifest", f"data key cannot be unwrapped: {error}")
        return None
    if len(data_key) != KEY_SIZE:
        # No segment key can be derived from it: a problem named, not a verifier that crashes.
        report.add("manifest", f"data key is {len(data_key)} bytes, not {KEY_SIZE}")
        return None
    return data_key


def _check_plaintext(
    manifest: Manifest,
    entry: SealedObject,
    ciphertext: bytes,
    data_key: bytes,
    report: VerificationReport,
    *,
    write: Callable[[bytes], None] | None = None,
) -> bool:
    """Decrypt in full against the manifest; `write` sees each verified piece. True if authentic."""
    decryptor = segment_decryptor(manifest, entry, data_key)
    try:
        for plain in iter_plaintext(manifest, entry, ciphertext, data_key, decryptor=decryptor):
            if write is not None:
                write(plain)
    except SegmentError as error:
        report.add(entry.subject, str(error))
        return False
    digest = decryptor.digest
    authentic = True
    if digest.plaintext_size != entry.plaintext_size:
        authentic = False
        report.add(
            entry.subject,
            f"plaintext is {digest.plaintext_size} bytes, the manifest says {entry.plaintext_size}",
        )
    if digest.plaintext_sha256 != entry.plaintext_sha256:
        authentic = False
        report.add(entry.subject, "SHA-256 of plaintext differs from the manifest")
    return authentic
