"""The archive format v1 test vectors: regenerated identically, and recomputed from the spec.

The recomputation below uses only the primitives (HKDF, AES-GCM, Ed25519, SHA-256) and the rules
in docs/archive-format.md, not vteller's sealing code, so it checks the code against the spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from recorder.seal.canonical import canonical_json, parse_json
from recorder.seal.keyring import WrappedKey, unwrap_data_key
from recorder.seal.signing import load_public_keys
from recorder.verify import DirectoryArchive, verify_archive
from tests.vectors.generate_archive_v1 import generate

VECTORS_DIR = Path(__file__).parents[1] / "vectors" / "archive-v1"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS_DIR / "vectors.json").read_text("utf-8"))
    return loaded


def spec_encrypt(
    key: bytes,
    archive_id: bytes,
    index: int,
    plaintext: bytes,
    chunk: int,
    label: bytes = b"vteller/v1/segment",
) -> bytes:
    """STREAM as the spec states it, written out independently of recorder.seal.stream."""
    segment_key = HKDF(
        hashes.SHA256(), 32, salt=archive_id, info=label + index.to_bytes(8, "big")
    ).derive(key)
    pieces = [plaintext[i : i + chunk] for i in range(0, len(plaintext), chunk)] or [b""]
    out = b""
    for n, piece in enumerate(pieces):
        nonce = n.to_bytes(11, "big") + (b"\x01" if n == len(pieces) - 1 else b"\x00")
        out += AESGCM(segment_key).encrypt(nonce, piece, None)
    return out


def test_generator_is_deterministic(tmp_path: Path) -> None:
    generate(tmp_path)
    for file in sorted(VECTORS_DIR.rglob("*")):
        if file.is_file():
            relative = file.relative_to(VECTORS_DIR)
            assert (tmp_path / relative).read_bytes() == file.read_bytes(), relative


@pytest.mark.parametrize(
    ("member", "label"),
    [("segments", b"vteller/v1/segment"), ("attachments", b"vteller/v1/attachment")],
)
def test_sealed_objects(vectors: dict[str, Any], member: str, label: bytes) -> None:
    key = bytes.fromhex(vectors["data_key"])
    archive_id = bytes.fromhex(vectors["archive_id_bytes"])
    assert UUID(vectors["archive_id"]).bytes == archive_id
    kinds = set()
    for segment in vectors[member]:
        plaintext = bytes.fromhex(segment["plaintext"])
        index = segment["index"]
        ciphertext = spec_encrypt(key, archive_id, index, plaintext, vectors["chunk_size"], label)
        assert ciphertext.hex() == segment["ciphertext"]
        info = label + index.to_bytes(8, "big")
        assert info.hex() == segment["hkdf_info"]
        derived = HKDF(hashes.SHA256(), 32, salt=archive_id, info=info).derive(key)
        assert derived.hex() == segment["segment_key"]
        assert segment["nonces"][-1].endswith("01")
        assert all(nonce.endswith("00") for nonce in segment["nonces"][:-1])
        assert hashlib.sha256(ciphertext).hexdigest() == segment["ciphertext_sha256"]
        assert hashlib.sha256(plaintext).hexdigest() == segment["plaintext_sha256"]
        assert len(ciphertext) == segment["ciphertext_size"]
        kinds.add(len(segment["nonces"]) if plaintext else 0)
    if member == "segments":
        assert {0, 1}.issubset(kinds) and max(kinds) >= 2
    else:
        # The attachment and segment 0 share an index, never a key.
        assert vectors["attachments"][0]["segment_key"] != vectors["segments"][0]["segment_key"]


def test_default_chunk_size_segment(vectors: dict[str, Any]) -> None:
    case = vectors["default_chunk_size_segment"]
    plaintext = bytes(i % 251 for i in range(case["plaintext_size"]))
    ciphertext = spec_encrypt(
        bytes.fromhex(vectors["data_key"]),
        bytes.fromhex(vectors["archive_id_bytes"]),
        case["index"],
        plaintext,
        case["chunk_size"],
    )
    assert hashlib.sha256(plaintext).hexdigest() == case["plaintext_sha256"]
    assert len(ciphertext) == case["ciphertext_size"]
    assert hashlib.sha256(ciphertext).hexdigest() == case["ciphertext_sha256"]
    assert ciphertext[-16:].hex() == case["last_chunk_tag"]


def test_key_wrap(vectors: dict[str, Any]) -> None:
    wrap = vectors["key_wrap"]
    aead = AESGCM(bytes.fromhex(wrap["kek"]))
    data_key = bytes.fromhex(vectors["data_key"])
    ciphertext = aead.encrypt(
        bytes.fromhex(wrap["nonce"]), data_key, bytes.fromhex(wrap["associated_data"])
    )
    assert ciphertext.hex() == wrap["ciphertext"]
    wrapped = WrappedKey(wrap["key_id"], bytes.fromhex(wrap["nonce"]), ciphertext)
    unwrapped = unwrap_data_key(bytes.fromhex(wrap["kek"]), wrapped, UUID(vectors["archive_id"]))
    assert unwrapped == data_key


def test_signature_and_manifest(vectors: dict[str, Any]) -> None:
    signing = vectors["signing"]
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(signing["seed"]))
    public_raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public_raw.hex() == signing["public_key"]
    assert hashlib.sha256(public_raw).hexdigest()[:16] == signing["key_id"]

    manifest_bytes = vectors["manifest"]["canonical"].encode("utf-8")
    assert hashlib.sha256(manifest_bytes).hexdigest() == vectors["manifest"]["sha256"]
    assert private.sign(manifest_bytes).hex() == vectors["manifest"]["signature"]
    document = json.loads(manifest_bytes)
    canonical = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert canonical.encode("utf-8") == manifest_bytes  # all member names here are ASCII
    assert document["signing_key_id"] == signing["key_id"]
    wrapped = document["wrapped_key"]
    assert base64.b64decode(wrapped["ciphertext"]).hex() == vectors["key_wrap"]["ciphertext"]
    for member in ("segments", "attachments"):
        for listed, entry in zip(document[member], vectors[member], strict=True):
            for name in ("index", "object", "plaintext_sha256", "ciphertext_sha256"):
                assert listed[name] == entry[name]
    # The signature image is bound to its transaction by its SHA-256.
    (transaction,) = document["transactions"]
    assert transaction["signature_sha256"] == vectors["attachments"][0]["plaintext_sha256"]


def test_canonical_json_cases(vectors: dict[str, Any]) -> None:
    for case in vectors["canonical_json"]:
        produced = canonical_json(parse_json(case["input"].encode("utf-8")))
        assert produced == case["canonical"].encode("utf-8")


def test_example_archive_verifies(vectors: dict[str, Any]) -> None:
    archive = VECTORS_DIR / "archive"
    kek = bytes.fromhex(vectors["key_wrap"]["kek"])

    class VectorKeyring:
        def wrap(self, data_key: bytes, archive_id: UUID) -> WrappedKey:
            raise NotImplementedError

        def unwrap(self, wrapped: WrappedKey, archive_id: UUID) -> bytes:
            return unwrap_data_key(kek, wrapped, archive_id)

    assert (archive / "manifest.json").read_bytes() == vectors["manifest"]["canonical"].encode()
    assert (archive / "manifest.sig").read_bytes().hex() == vectors["manifest"]["signature"]
    report = verify_archive(
        DirectoryArchive(archive), load_public_keys(archive / "keys"), keyring=VectorKeyring()
    )
    assert report.ok, report.render()
    assert report.decrypted and report.signature_verified
    assert "transaction t-vector-1: signature image in att-000000.bin (image/png)" in report.notes
