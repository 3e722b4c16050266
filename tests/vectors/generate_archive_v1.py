"""Generate the archive format v1 test vectors (docs/archive-format.md, section 9).

    python -m tests.vectors.generate_archive_v1 [OUT_DIR]

writes OUT_DIR (default: tests/vectors/archive-v1/) with `vectors.json` and `archive/`, a complete
sealed archive with its public key. Every input is fixed, so the output is identical on every run;
tests/unit/test_archive_vectors.py checks that, and recomputes every value independently.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives import serialization

from recorder.seal.canonical import canonical_json, parse_json
from recorder.seal.digest import sha256_hex
from recorder.seal.keyring import WrappedKey, unwrap_data_key, wrap_data_key
from recorder.seal.manifest import MANIFEST_OBJECT, SIGNATURE_OBJECT, manifest_sha256
from recorder.seal.report import REPORT_FORMAT_PREFIX, report_object_names, sign_report
from recorder.seal.sealer import ArchiveSealer
from recorder.seal.signing import Signer, load_public_key
from recorder.seal.stream import (
    ATTACHMENT_KEY_INFO,
    CHUNK_SIZE,
    SEGMENT_KEY_INFO,
    TAG_SIZE,
    chunk_nonce,
    derive_segment_key,
    encrypt_segment,
)

OUT_DIR = Path(__file__).parent / "archive-v1"
ARCHIVE_ID = UUID("0190d1e8-5a5b-7c3d-9e4f-a0b1c2d3e4f5")
DATA_KEY = bytes(range(0x00, 0x20))
KEK = bytes(range(0x20, 0x40))
KEK_ID = "kek-vector-0001"
WRAP_NONCE = bytes(range(0x40, 0x4C))
SIGNING_SEED = bytes(range(0x60, 0x80))
CHUNK = 32
# Segment plaintexts: empty, exactly one chunk, several chunks with a short last one, and two
# full chunks (where the final chunk is full-size).
PLAINTEXTS = [
    b"",
    bytes(range(32)),
    b"vteller archive v1 test vector: three chunks, short last.",
    bytes(64),
]
LARGE_PLAINTEXT_SIZE = 2 * CHUNK_SIZE + 100
# One attachment, a customer's signature image: a 1x1 black greyscale PNG (three chunks at
# CHUNK), bound to the manifest's one transaction by its SHA-256.
SIGNATURE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a4944415478da6360000000020001e527defc000000"
    "0049454e44ae426082"
)
TRANSACTION_SHA256 = sha256_hex(b"vector transaction")

CANONICAL_CASES: list[tuple[str, str]] = [
    ('{ "b" : 1, "a" : [true, false, null] }', '{"a":[true,false,null],"b":1}'),
    (
        '{"\\u00e9":1,"z":2,"\\ud83d\\ude00":3,"\\uffff":4}',
        '{"z":2,"é":1,"\U0001f600":3,"\uffff":4}',
    ),
    ('["\\u000a\\u0009\\u001f\\u007f", "\\/", "王柜员"]', '["\\n\\t\\u001f\x7f","/","王柜员"]'),
    ("[-0, 9007199254740991]", "[0,9007199254740991]"),
]


class FixedNonceWrapper:
    """Wraps with the fixed vector KEK and nonce; never do this outside test vectors."""

    def wrap(self, data_key: bytes, archive_id: UUID) -> WrappedKey:
        return wrap_data_key(KEK, KEK_ID, data_key, archive_id, nonce=WRAP_NONCE)

    def unwrap(self, wrapped: WrappedKey, archive_id: UUID) -> bytes:
        return unwrap_data_key(KEK, wrapped, archive_id)


def large_plaintext() -> bytes:
    return bytes(i % 251 for i in range(LARGE_PLAINTEXT_SIZE))


def segment_vector(
    index: int, plaintext: bytes, prefix: str = "seg", key_info: bytes = SEGMENT_KEY_INFO
) -> dict[str, Any]:
    ciphertext, digest = encrypt_segment(
        DATA_KEY, ARCHIVE_ID, index, plaintext, chunk_size=CHUNK, key_info=key_info
    )
    chunks = max(1, -(-len(plaintext) // CHUNK))
    return {
        "index": index,
        "object": f"{prefix}-{index:06d}.bin",
        "hkdf_info": (key_info + index.to_bytes(8, "big")).hex(),
        "segment_key": derive_segment_key(DATA_KEY, ARCHIVE_ID, index, key_info).hex(),
        "plaintext": plaintext.hex(),
        "nonces": [chunk_nonce(n, last=n == chunks - 1).hex() for n in range(chunks)],
        "ciphertext": ciphertext.hex(),
        "plaintext_size": digest.plaintext_size,
        "ciphertext_size": digest.ciphertext_size,
        "plaintext_sha256": digest.plaintext_sha256,
        "ciphertext_sha256": digest.ciphertext_sha256,
    }


def generate(out_dir: Path) -> None:
    signer = Signer.from_seed(SIGNING_SEED)
    sealer = ArchiveSealer(ARCHIVE_ID, FixedNonceWrapper(), chunk_size=CHUNK, data_key=DATA_KEY)
    archive_dir = out_dir / "archive"
    if archive_dir.exists():
        shutil.rmtree(archive_dir)
    (archive_dir / "keys").mkdir(parents=True)
    for plaintext in PLAINTEXTS:
        encryptor = sealer.open_segment()
        ciphertext = encryptor.update(plaintext) + encryptor.finalize()
        (archive_dir / f"seg-{encryptor.index:06d}.bin").write_bytes(ciphertext)
        sealer.close_segment(encryptor)
    attachment, attachment_ciphertext = sealer.seal_attachment(SIGNATURE_PNG, "image/png")
    (archive_dir / attachment.object).write_bytes(attachment_ciphertext)
    sealed = sealer.finish(
        signer,
        session_id="vector-session-1",
        business="wealth_product",
        product="稳健理财 A",
        participants=[
            {
                "id": "staff-7",
                "role": "teller",
                "display_name": "王柜员",
                "presence": [
                    {"joined_at": "2025-01-31T08:00:00.000Z", "left_at": "2025-01-31T08:09:58.500Z"}
                ],
            },
            {
                "id": "customer-1",
                "role": "customer",
                "display_name": 'Li "Lily" Na',
                "presence": [
                    {
                        "joined_at": "2025-01-31T08:00:02.000Z",
                        "left_at": "2025-01-31T08:03:00.000Z",
                    },
                    {"joined_at": "2025-01-31T08:03:05.250Z", "left_at": None},
                ],
            },
        ],
        marks=[
            {"name": "risk_disclosure", "media_ms": 61000, "wall_time": "2025-01-31T08:01:01.000Z"},
            {
                "name": "customer_consent",
                "media_ms": 420500,
                "wall_time": "2025-01-31T08:07:00.500Z",
            },
        ],
        tracks=[
            {"id": "trk-1", "kind": "video", "participant_id": "staff-7", "source": "camera"},
            {
                "id": "trk-2",
                "kind": "audio",
                "participant_id": "customer-1",
                "source": "microphone",
            },
        ],
        status="complete",
        gaps=[{"start_ms": 178000, "end_ms": 183250, "reason": "customer connection lost"}],
        identity={"method": "face_match", "score": "0.973", "passed": True},
        compliance=None,
        recorder_version="0.1.0",
        created_at="2025-01-31T08:00:00.000Z",
        finalized_at="2025-01-31T08:10:00.000Z",
        previous_manifest_sha256=manifest_sha256(b"{}"),
        transactions=[
            {
                "id": "t-vector-1",
                "sha256": TRANSACTION_SHA256,
                "signature_sha256": sha256_hex(SIGNATURE_PNG),
                "signed_at": "2025-01-31T08:08:00.000Z",
                "media_ms": 480000,
            }
        ],
    )
    (archive_dir / MANIFEST_OBJECT).write_bytes(sealed.data)
    (archive_dir / SIGNATURE_OBJECT).write_bytes(sealed.signature)
    (archive_dir / "keys" / f"{signer.key_id}.pem").write_bytes(signer.public_key_pem())
    # A signed report added after sealing (section 11), with only the members the archive format
    # requires of it besides a decision: the compliance report's own schema is docs/compliance.md.
    report_name, report_signature_name = report_object_names(1)
    report_data, report_signature = sign_report(
        {
            "format": f"{REPORT_FORMAT_PREFIX}1",
            "archive_id": str(ARCHIVE_ID),
            "manifest_sha256": sha256_hex(sealed.data),
            "decision": "pass",
        },
        signer,
    )
    (archive_dir / report_signature_name).write_bytes(report_signature)
    (archive_dir / report_name).write_bytes(report_data)

    large = large_plaintext()
    large_ciphertext, large_digest = encrypt_segment(DATA_KEY, ARCHIVE_ID, 0, large)
    public_raw = load_public_key(signer.public_key_pem()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    vectors = {
        "description": "vteller archive format v1 test vectors (docs/archive-format.md)",
        "archive_id": str(ARCHIVE_ID),
        "archive_id_bytes": ARCHIVE_ID.bytes.hex(),
        "data_key": DATA_KEY.hex(),
        "chunk_size": CHUNK,
        "segments": [segment_vector(i, p) for i, p in enumerate(PLAINTEXTS)],
        "attachments": [
            segment_vector(0, SIGNATURE_PNG, "att", ATTACHMENT_KEY_INFO)
            | {"media_type": "image/png"}
        ],
        "default_chunk_size_segment": {
            "comment": "index 0, chunk_size 65536, plaintext byte i = i mod 251",
            "chunk_size": CHUNK_SIZE,
            "index": 0,
            "plaintext_size": large_digest.plaintext_size,
            "plaintext_sha256": large_digest.plaintext_sha256,
            "ciphertext_size": large_digest.ciphertext_size,
            "ciphertext_sha256": large_digest.ciphertext_sha256,
            "last_chunk_tag": large_ciphertext[-TAG_SIZE:].hex(),
        },
        "key_wrap": {
            "kek": KEK.hex(),
            "key_id": KEK_ID,
            "nonce": WRAP_NONCE.hex(),
            "associated_data": ARCHIVE_ID.bytes.hex(),
            "ciphertext": sealed.manifest.wrapped_key.to_wrapped().ciphertext.hex(),
        },
        "signing": {
            "seed": SIGNING_SEED.hex(),
            "public_key": public_raw.hex(),
            "public_key_pem": signer.public_key_pem().decode("ascii"),
            "key_id": signer.key_id,
        },
        "canonical_json": [
            {"input": given, "canonical": expected} for given, expected in CANONICAL_CASES
        ],
        "manifest": {
            "canonical": sealed.data.decode("utf-8"),
            "sha256": sha256_hex(sealed.data),
            "signature": sealed.signature.hex(),
        },
        "report": {
            "object": report_name,
            "canonical": report_data.decode("utf-8"),
            "signature_object": report_signature_name,
            "signature": report_signature.hex(),
        },
    }
    for case in vectors["canonical_json"]:  # type: ignore[attr-defined]
        assert canonical_json(parse_json(case["input"].encode())).decode() == case["canonical"]
    text = json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "vectors.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR
    target.mkdir(parents=True, exist_ok=True)
    generate(target)
    print(f"wrote {target}")
