"""Export of one archive as a self-contained package a recipient can verify without us.

The package holds the objects exactly as stored (encrypted segments and attachments, manifest.json,
manifest.sig),
the public key(s) under keys/, and a README.txt that explains how to check it, with vteller or
with OpenSSL and sha256sum alone (docs/archive-format.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from recorder.seal.manifest import (
    ATTACHMENT_OBJECT_PATTERN,
    MANIFEST_OBJECT,
    SEGMENT_OBJECT_PATTERN,
    SIGNATURE_OBJECT,
    Manifest,
    ManifestError,
    parse_manifest,
)
from recorder.seal.report import REPORT_OBJECT_PATTERN, REPORT_SIGNATURE_PATTERN
from recorder.seal.signing import PublicKeyError, public_key_id, write_public_key
from recorder.verify import ArchiveReader

KEYS_DIR = "keys"
README_NAME = "README.txt"


class ExportError(Exception):
    """The archive cannot be exported as a package that would verify."""


def export_archive(reader: ArchiveReader, out_dir: Path, public_key_pems: Sequence[bytes]) -> Path:
    """Write the package into `out_dir` (new or empty) and return it.

    Everything is written into a sibling directory first and renamed at the end, so a failure
    never leaves a half-written package that could be handed over by mistake.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty; export into a new directory")
    names = set(reader.list_names())
    for required in (MANIFEST_OBJECT, SIGNATURE_OBJECT):
        if required not in names:
            raise ExportError(f"the archive has no {required}")
    manifest_bytes = reader.read(MANIFEST_OBJECT)
    try:
        manifest = parse_manifest(manifest_bytes)
    except ManifestError as error:
        raise ExportError(f"the archive's manifest is not valid: {error}") from None
    missing = [entry.object for entry in manifest.sealed_objects if entry.object not in names]
    if missing:
        raise ExportError(f"objects missing from the archive: {', '.join(missing)}")
    try:
        key_ids = [public_key_id(pem) for pem in public_key_pems]
    except PublicKeyError as error:
        raise ExportError(str(error)) from None
    if manifest.signing_key_id not in key_ids:
        raise ExportError(
            f"the manifest is signed with key {manifest.signing_key_id}, which is not among the "
            f"public keys given ({', '.join(key_ids) or 'none'})"
        )

    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    staging.mkdir(parents=True)
    try:
        (staging / MANIFEST_OBJECT).write_bytes(manifest_bytes)
        (staging / SIGNATURE_OBJECT).write_bytes(reader.read(SIGNATURE_OBJECT))
        # Every segment and attachment the store holds, listed or not: an object the manifest
        # does not list is a finding, and the recipient's verification must see it too.
        listed = {entry.object for entry in manifest.sealed_objects}
        for name in sorted(listed | {n for n in names if _is_sealed_object(n)}):
            (staging / name).write_bytes(reader.read(name))
        # Signed reports added after sealing travel with the archive (they verify offline too).
        for name in sorted(names):
            if REPORT_OBJECT_PATTERN.fullmatch(name) or REPORT_SIGNATURE_PATTERN.fullmatch(name):
                (staging / name).write_bytes(reader.read(name))
        for pem in public_key_pems:
            write_public_key(staging / KEYS_DIR, pem)
        (staging / README_NAME).write_text(recipient_readme(manifest), encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _is_sealed_object(name: str) -> bool:
    return bool(SEGMENT_OBJECT_PATTERN.fullmatch(name) or ATTACHMENT_OBJECT_PATTERN.fullmatch(name))


def recipient_readme(manifest: Manifest) -> str:
    key = manifest.signing_key_id
    return f"""\
vteller sealed recording — export package
=========================================

This directory is a sealed dual recording (双录) of one remote-banking session, exported as it
is stored in the bank's archive. The media are encrypted; what you can check without any secret
is that the package is complete and unaltered since the recorder sealed it.

  archive id       {manifest.archive_id}
  session          {manifest.session_id}
  business         {manifest.business}{f" / {manifest.product}" if manifest.product else ""}
  recorded         {manifest.created_at} .. {manifest.finalized_at}
  status           {manifest.status}
  segments         {len(manifest.segments)}
  attachments      {len(manifest.attachments or [])} (e.g. the customer's signature image)
  signing key id   {key}

Contents

  manifest.json     what the archive holds: participants, key moments, and for every segment
                    its size and SHA-256 (canonical JSON, format version 1)
  manifest.sig      Ed25519 signature over the exact bytes of manifest.json (64 raw bytes)
  seg-NNNNNN.bin    the encrypted media segments, exactly as stored
  att-NNNNNN.bin    the encrypted attachments (the customer's signature image for each signed
                    transaction), listed in manifest.json like the segments
  report-NNN.json   compliance reports added after sealing, if any (the highest NNN is the
                    current one): canonical JSON naming this archive and the SHA-256 of
                    manifest.json, and the key that signed it (signing_key_id)
  report-NNN.sig    Ed25519 signature over the exact bytes of report-NNN.json (64 raw bytes)
  keys/{key}.pem  the public key that signed manifest.json

First, make sure the public key is really the bank's: compare the key id {key} with the
one the bank has given you through another channel (letter, website). The key id is the first
16 hex characters of SHA-256 over the 32-byte Ed25519 public key.

Verify with vteller

  vteller verify --keys THE_BANKS_PUBLIC_KEY.pem THIS_DIRECTORY

It checks the signature, that manifest.json is in canonical form, that every segment and
attachment is present, has the listed size and SHA-256, and that none is missing or added, and
every report's signature and link to this manifest, and prints the id of the key that signed.
Without --keys it uses keys/ of this directory and says so: then compare the key id it prints
with the bank's.

Verify without vteller (OpenSSL 3, coreutils, jq), from inside this directory

  1. the key id:
       openssl pkey -pubin -in keys/{key}.pem -outform DER | tail -c 32 | sha256sum | cut -c1-16
     prints {key}
  2. the signature:
       openssl pkeyutl -verify -pubin -inkey keys/{key}.pem -rawin \\
         -in manifest.json -sigfile manifest.sig
     prints "Signature Verified Successfully"
  3. every segment against the signed hashes:
       jq -r '.segments[] | "\\(.ciphertext_sha256)  \\(.object)"' manifest.json | sha256sum -c -
     prints OK for each segment; the same for the attachments, if any:
       jq -r '.attachments[]? | "\\(.ciphertext_sha256)  \\(.object)"' manifest.json \\
         | sha256sum -c -
  4. no extra segment: ls seg-*.bin | wc -l  equals  jq '.segments | length' manifest.json
     (and ls att-*.bin | wc -l  equals  jq '.attachments | length' manifest.json)
  5. every report, if there are any, e.g. report-001:
       openssl pkeyutl -verify -pubin -inkey keys/$(jq -r .signing_key_id report-001.json).pem \\
         -rawin -in report-001.json -sigfile report-001.sig
     prints "Signature Verified Successfully", and
       jq -r .manifest_sha256 report-001.json; sha256sum manifest.json | cut -c1-64
     prints the same hash twice: the report is about this manifest

The complete format (canonical JSON, key derivation, chunk format, test vectors) is specified in
docs/archive-format.md of the vteller source code (open source), so you can also write your own
verifier.

Watching the recording

The segments and attachments are encrypted with AES-256-GCM under a data key that is itself
encrypted with the bank's key-encryption key (manifest.json, "wrapped_key"). Decryption therefore
needs the bank: ask it to decrypt the package, or to disclose this archive's data key, and check
the result with "vteller verify --keyring" or against the plaintext SHA-256 values in
manifest.json. A signature image's plaintext SHA-256 is also the "signature_sha256" of its
transaction in manifest.json.
"""
