"""The archive format v1 test vectors: regenerated identically, and recomputed from the spec.

The recomputation below uses only the primitives (HKDF, AES-GCM, Ed25519, SHA-256) and the rules
in docs/archive-format.md, not vteller's sealing code, so it checks the code against the spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from recorder.export import export_archive
from recorder.seal.canonical import canonical_json, parse_json
from recorder.seal.keyring import WrappedKey, unwrap_data_key
from recorder.seal.manifest import ManifestError, parse_manifest
from recorder.seal.signing import load_public_keys
from recorder.verify import DirectoryArchive, verify_archive
from tests.vectors.generate_archive_v1 import generate

VECTORS_DIR = Path(__file__).parents[1] / "vectors" / "archive-v1"
DOC = Path(__file__).parents[2] / "docs" / "archive-format.md"


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


def test_signed_report(vectors: dict[str, Any]) -> None:
    """Section 11: a report is canonical, bound to the manifest's bytes, signed like it."""
    case = vectors["report"]
    data = case["canonical"].encode("utf-8")
    document = json.loads(data)
    canonical = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert canonical.encode("utf-8") == data
    assert document["format"].startswith("vteller-compliance-report/")
    assert document["archive_id"] == vectors["archive_id"]
    assert document["manifest_sha256"] == vectors["manifest"]["sha256"]
    assert document["signing_key_id"] == vectors["signing"]["key_id"]
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vectors["signing"]["seed"]))
    assert private.sign(data).hex() == case["signature"]
    archive = VECTORS_DIR / "archive"
    assert (archive / case["object"]).read_bytes() == data
    assert (archive / case["signature_object"]).read_bytes().hex() == case["signature"]


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
    assert report.reports == [vectors["report"]["object"]]
    assert "transaction t-vector-1: signature image in att-000000.bin (image/png)" in report.notes


def _doc_python(containing: str) -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", DOC.read_text("utf-8"), re.DOTALL)
    (code,) = [block for block in blocks if containing in block]
    return code


@pytest.fixture(scope="module")
def documented() -> dict[str, Any]:
    """The decryption code of docs/archive-format.md section 8."""
    namespace: dict[str, Any] = {"__name__": "archive_format_doc"}
    exec(compile(_doc_python("def decrypt_object"), str(DOC), "exec"), namespace)
    return namespace


def test_documented_decryption_opens_the_vector_archive(
    vectors: dict[str, Any], documented: dict[str, Any]
) -> None:
    archive = VECTORS_DIR / "archive"
    manifest = json.loads((archive / "manifest.json").read_bytes())
    data_key = documented["unwrap_data_key"](bytes.fromhex(vectors["key_wrap"]["kek"]), manifest)
    assert data_key.hex() == vectors["data_key"]
    for member, label in (("segments", "SEGMENT"), ("attachments", "ATTACHMENT")):
        for entry, case in zip(manifest[member], vectors[member], strict=True):
            data = (archive / entry["object"]).read_bytes()
            plaintext = documented["decrypt_object"](
                data_key, manifest, documented[label], entry, data
            )
            assert plaintext.hex() == case["plaintext"]


@pytest.mark.parametrize(
    "change", ["flip", "cut_chunk", "append_chunk", "drop_tag", "swap_label", "other_index"]
)
def test_documented_decryption_refuses_altered_objects(
    vectors: dict[str, Any], documented: dict[str, Any], change: str
) -> None:
    archive = VECTORS_DIR / "archive"
    manifest = json.loads((archive / "manifest.json").read_bytes())
    data_key = bytes.fromhex(vectors["data_key"])
    entry = manifest["segments"][2]  # two chunks, the last one short
    data = (archive / entry["object"]).read_bytes()
    label = documented["SEGMENT"]
    chunk = manifest["chunk_size"] + 16
    if change == "flip":
        data = data[:5] + bytes([data[5] ^ 1]) + data[6:]
    elif change == "cut_chunk":
        data = data[:chunk]  # the first chunk alone, which was not sealed as the last
    elif change == "append_chunk":
        data += data[:chunk]
    elif change == "drop_tag":
        data = data[:-16]
    elif change == "swap_label":
        label = documented["ATTACHMENT"]
    else:
        entry = entry | {"index": 1}
    with pytest.raises((InvalidTag, ValueError)):
        documented["decrypt_object"](data_key, manifest, label, entry, data)


def test_documented_signature_check_in_python(
    vectors: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = vectors["signing"]["key_id"]
    code = _doc_python("key.verify(").replace("<key id>", key_id)
    monkeypatch.chdir(VECTORS_DIR / "archive")
    namespace: dict[str, Any] = {"__name__": "archive_format_doc"}
    exec(compile(code, str(DOC), "exec"), namespace)
    assert namespace["key_id"] == key_id


def test_the_document_quotes_the_vector(vectors: dict[str, Any]) -> None:
    text = DOC.read_text("utf-8")
    assert f"| signing key id | `{vectors['signing']['key_id']}`" in text
    assert f"| SHA-256 of `manifest.json` | `{vectors['manifest']['sha256']}` |" in text
    assert f"| `manifest.sig` (hex) | `{vectors['manifest']['signature']}` |" in text
    assert f"| `report-001.sig` (hex) | `{vectors['report']['signature']}` |" in text


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        (("session_id",), False),
        (("business",), False),
        (("recorder_version",), False),
        (("participants", 0, "id"), False),
        (("participants", 0, "role"), False),
        (("marks", 0, "name"), False),
        (("tracks", 0, "source"), False),
        (("gaps", 0, "reason"), False),
        (("wrapped_key", "key_id"), False),
        (("transactions", 0, "id"), False),
        (("participants", 0, "display_name"), True),
        (("product",), True),
    ],
)
def test_empty_strings_as_the_document_says(
    vectors: dict[str, Any], path: tuple[str | int, ...], valid: bool
) -> None:
    """Section 2: strings are non-empty, except `product` and `display_name`."""
    document = json.loads(vectors["manifest"]["canonical"])
    holder = document
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = ""
    if valid:
        parse_manifest(canonical_json(document))
    else:
        with pytest.raises(ManifestError, match="at least 1 character"):
            parse_manifest(canonical_json(document))


def test_the_export_readme_verifies_the_vector_package(tmp_path: Path) -> None:
    """Every command of the package's README.txt ("Verify without vteller"), run as printed on
    the exported vector archive: key id, signatures of the manifest and the report, hashes."""
    archive = DirectoryArchive(VECTORS_DIR / "archive")
    keys = load_public_keys(VECTORS_DIR / "archive" / "keys")
    package = export_archive(archive, tmp_path / "package", list(keys.values()))
    readme = (package / "README.txt").read_text("utf-8")
    steps = readme[readme.index("Verify without vteller") : readme.index("The complete format")]
    commands = re.findall(r"^ {7}(\S.*?(?:\\\n.*?)*)$", steps, re.MULTILINE)

    def run(command: str) -> str:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    (key_id,) = keys
    outputs = [run(command) for command in commands]
    assert len(outputs) == 6
    assert outputs[0].strip() == key_id
    assert outputs[1].strip() == outputs[4].strip() == "Signature Verified Successfully"
    assert outputs[2].count(": OK") == 4 and outputs[3].count(": OK") == 1
    report_hash, manifest_hash = outputs[5].split()
    assert (
        report_hash
        == manifest_hash
        == hashlib.sha256((package / "manifest.json").read_bytes()).hexdigest()
    )
    for listed, counted in re.findall(
        r"(ls \S+ \| wc -l) +equals +(jq '[^']+' manifest.json)", steps
    ):
        assert int(run(listed)) == int(run(counted)) > 0
