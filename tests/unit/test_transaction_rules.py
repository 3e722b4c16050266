"""Transaction requests, signature images, approval rules and the manifest's transactions (and
the approval's reading of them from the stored manifest)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from pydantic import TypeAdapter, ValidationError
from structlog.testing import capture_logs

from recorder.journal import Journal
from recorder.seal.manifest import ManifestError, is_canonical, parse_manifest
from recorder.store.s3 import (
    ArchiveBucket,
    ArchiveIntegrityError,
    ArchiveNotFoundError,
    ArchiveStoreError,
    ArchiveUnavailableError,
    StoreConfigError,
)
from server.errors import ApiError
from server.workflow.transactions.bindings import RecordedSignatures
from server.workflow.transactions.config import WorkflowConfig
from server.workflow.transactions.request import Purchase, Service, TransactionRequest
from server.workflow.transactions.rules import Facts, evaluate
from server.workflow.transactions.signatures import SignatureRejected, validate_signature
from tests.vectors.generate_approval_v1 import FACTS

CONFIG = WorkflowConfig()
PASSING = FACTS
VECTORS = Path(__file__).parents[1] / "vectors" / "archive-v1"


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _scribble(mode: str = "RGBA", background: object = (0, 0, 0, 0)) -> Image.Image:
    image = Image.new(mode, (600, 240), background)  # type: ignore[arg-type]
    ImageDraw.Draw(image).line([(40, 200), (200, 40), (400, 200), (560, 60)], fill="black", width=6)
    return image


def _failing(facts: Facts) -> list[str]:
    return [r.reason for r in evaluate(facts) if not r.passed]


def test_amounts_are_integers_of_minor_units() -> None:
    adapter: TypeAdapter[Purchase | Service] = TypeAdapter(TransactionRequest)
    good = {
        "kind": "purchase",
        "product_type": "insurance",
        "product_code": "INS-1",
        "amount": {"minor": 12345, "currency": "CNY"},
        "account": "6222020200112233445",
    }
    assert isinstance(adapter.validate_python(good), Purchase)
    for minor in (123.45, "12345", 0, -1, True, 2**53):
        with pytest.raises(ValidationError):
            adapter.validate_python(good | {"amount": {"minor": minor, "currency": "CNY"}})


def test_signature_images_are_checked_before_they_are_kept() -> None:
    signature = validate_signature(_png(_scribble()), CONFIG)
    assert signature.width == 600 and signature.ink_pixels >= CONFIG.signature_min_ink_pixels
    # Opaque white paper with black ink is the same signature.
    assert validate_signature(_png(_scribble("RGB", "white")), CONFIG).ink_pixels > 0
    blank = _png(Image.new("RGBA", (600, 240), (0, 0, 0, 0)))
    with pytest.raises(SignatureRejected) as refused:
        validate_signature(blank, CONFIG)
    assert refused.value.code == "signature_blank"


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    # A valid PNG header claiming 30000 x 30000 pixels, in a few hundred bytes.
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\x00" * 3001 * 10)
    bomb = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )
    with pytest.raises(SignatureRejected) as refused:
        validate_signature(bomb, CONFIG)
    assert refused.value.code == "signature_too_large"


def test_the_rules_name_each_failing_check() -> None:
    assert _failing(PASSING) == []
    assert _failing(dataclasses.replace(PASSING, signed=False)) == ["not_signed"]
    assert _failing(dataclasses.replace(PASSING, identity=None)) == ["identity_missing"]
    assert _failing(dataclasses.replace(PASSING, identity="fail")) == ["identity_failed"]
    assert _failing(dataclasses.replace(PASSING, archive_id=None)) == ["not_signed_while_recording"]
    assert _failing(dataclasses.replace(PASSING, archive_status="interrupted")) == [
        "recording_incomplete"
    ]
    assert _failing(dataclasses.replace(PASSING, report_state="running")) == ["report_pending"]
    assert _failing(dataclasses.replace(PASSING, report_decision="fail")) == ["report_failed"]
    review = dataclasses.replace(PASSING, report_decision="needs_review", open_reviews=1)
    assert _failing(review) == ["review_open"]
    # An undecided moment counts as not passed until a supervisor approves it...
    assert _failing(dataclasses.replace(review, open_reviews=0)) == ["review_open"]
    assert _failing(dataclasses.replace(review, open_reviews=0, approved_reviews=1)) == []
    # ...and a rejected one fails the report.
    assert _failing(dataclasses.replace(review, open_reviews=0, rejected_reviews=1)) == [
        "report_failed"
    ]
    # Products that need no recording need only the signature.
    assert [r.check for r in evaluate(dataclasses.replace(PASSING, recorded_product=False))] == [
        "signature"
    ]


def test_transactions_in_the_manifest_keep_older_manifests_canonical() -> None:
    document = json.loads((VECTORS / "archive" / "manifest.json").read_bytes())
    for member in ("transactions", "attachments"):  # a manifest sealed before either existed
        del document[member]
    data = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    manifest = parse_manifest(data)
    assert manifest.transactions is None and manifest.attachments is None
    assert is_canonical(manifest, data)
    document["transactions"] = [
        {
            "id": "t_00000000000000000000000f",
            "sha256": "a0" * 32,
            "signature_sha256": "c3" * 32,
            "signed_at": "2026-11-27T10:08:12.345Z",
            "media_ms": 42000,
        }
    ]
    extended = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    parsed = parse_manifest(extended.encode())
    assert parsed.transactions is not None and parsed.transactions[0].media_ms == 42000
    assert is_canonical(parsed, extended.encode())
    for member in ("transactions", "attachments"):
        with_null = document | {member: None}  # absent, never null
        explicit_null = json.dumps(with_null, sort_keys=True, separators=(",", ":")).encode()
        assert not is_canonical(parse_manifest(explicit_null), explicit_null)
        empty = json.dumps(document | {member: []}, sort_keys=True, separators=(",", ":"))
        with pytest.raises(ManifestError, match=member):  # ...and never empty
            parse_manifest(empty.encode())


def test_a_signature_given_again_replaces_the_earlier_one_in_the_journal(tmp_path: Path) -> None:
    # What a restarted worker seals into an interrupted recording's manifest.
    journal = Journal.create(tmp_path, "a1", {"archive_id": "a1"})
    first = {"id": "t1", "sha256": "a0" * 32, "signature_sha256": "c1" * 32}
    journal.append("transaction", {"transaction": first | {"media_ms": 1000}})
    journal.append("transaction", {"transaction": {"id": "t2", "media_ms": 1500}})
    journal.append("transaction", {"transaction": first | {"signature_sha256": "c2" * 32}})
    bound = journal.read().transactions
    assert list(bound) == ["t1", "t2"] and bound["t1"]["signature_sha256"] == "c2" * 32


class _Store(ArchiveBucket):
    """An archive store holding `objects`, or failing every read with `error`."""

    def __init__(self, objects: dict[str, bytes], error: ArchiveStoreError | None = None) -> None:
        self.objects, self.error = objects, error
        self.reads = 0

    async def get(self, name: str, version_id: str | None = None) -> bytes:
        self.reads += 1
        if self.error is not None:
            raise self.error
        if name not in self.objects:
            raise ArchiveNotFoundError(name)
        return self.objects[name]


async def test_a_sealed_manifest_is_read_once_and_a_failed_read_is_tried_again() -> None:
    # The supervisors' queue shows the check for every open transaction at each refresh.
    data = (VECTORS / "archive" / "manifest.json").read_bytes()
    archive_id = json.loads(data)["archive_id"]
    sealed = hashlib.sha256(data).hexdigest()
    objects = {f"archives/{archive_id}/manifest.json": data}
    store = _Store(objects, ArchiveUnavailableError("reset"))
    signatures = RecordedSignatures(store)
    with pytest.raises(ApiError):
        await signatures.bound(archive_id, sealed, "t-vector-1")
    store.error = None
    for transaction_id in ("t-vector-1", "t_other", "t-vector-1"):
        await signatures.bound(archive_id, sealed, transaction_id)
    assert store.reads == 2
    # Another hash is another manifest: read (and refused) on its own.
    with pytest.raises(ApiError):
        await signatures.bound(archive_id, "00" * 32, "t-vector-1")
    assert store.reads == 3


async def test_the_approval_reads_the_bound_signature_from_the_sealed_manifest() -> None:
    data = (VECTORS / "archive" / "manifest.json").read_bytes()
    archive_id = json.loads(data)["archive_id"]
    sealed = hashlib.sha256(data).hexdigest()
    store = RecordedSignatures(_Store({f"archives/{archive_id}/manifest.json": data}))
    [binding] = json.loads(data)["transactions"]
    assert await store.bound(archive_id, sealed, "t-vector-1") == binding["signature_sha256"]
    assert await store.bound(archive_id, sealed, "t_other") is None

    async def refused(signatures: RecordedSignatures, manifest_sha256: str = sealed) -> ApiError:
        with pytest.raises(ApiError) as caught:
            await signatures.bound(archive_id, manifest_sha256, "t-vector-1")
        return caught.value

    # Another manifest than the one the chain recorded at sealing is not read at all.
    other = await refused(store, "00" * 32)
    assert (other.status, other.code) == (409, "recording_not_verified")
    assert "auditor" in other.message
    missing = await refused(RecordedSignatures(_Store({})))
    assert (missing.status, missing.code) == (409, "recording_not_stored")
    down = await refused(RecordedSignatures(_Store({}, ArchiveUnavailableError("reset"))))
    assert (down.status, down.code) == (503, "archive_unavailable")
    unconfigured = await refused(RecordedSignatures(None))
    assert (unconfigured.status, unconfigured.code) == (503, "archive_unavailable")
    assert "VTELLER_S3_" in unconfigured.message


@pytest.mark.parametrize(
    "error",
    [
        ArchiveUnavailableError("archive store unreachable: connection reset"),
        StoreConfigError("bucket vteller-archive does not exist (ensure_bucket() creates it)"),
        ArchiveStoreError("AccessDenied: Access Denied (bucket vteller-archive)"),
        ArchiveStoreError("SlowDown: Please reduce your request rate (bucket vteller-archive)"),
    ],
)
async def test_a_store_failure_says_try_again_and_keeps_its_details_in_the_log(
    error: ArchiveStoreError,
) -> None:
    # The store failing says nothing about the evidence: not "not the one sealed".
    signatures = RecordedSignatures(_Store({}, error))
    with capture_logs() as logs, pytest.raises(ApiError) as caught:
        await signatures.bound("a_1", "00" * 32, "t1")
    assert (caught.value.status, caught.value.code) == (503, "archive_unavailable")
    assert "try again" in caught.value.message and "operator" in caught.value.message
    assert str(error) not in caught.value.message and "vteller-archive" not in caught.value.message
    assert [(e["event"], e["error"]) for e in logs] == [
        ("recorded_manifest_unreadable", str(error))
    ]


async def test_a_manifest_damaged_in_the_store_or_unparseable_is_not_verified() -> None:
    error = ArchiveIntegrityError(
        "archives/a_1/manifest.json in vteller-archive: content does not match its recorded sha256"
    )
    with capture_logs() as logs, pytest.raises(ApiError) as caught:
        await RecordedSignatures(_Store({}, error)).bound("a_1", "00" * 32, "t1")
    assert (caught.value.status, caught.value.code) == (409, "recording_not_verified")
    assert "auditor" in caught.value.message and "vteller-archive" not in caught.value.message
    assert [(e["event"], e["error"]) for e in logs] == [("recorded_manifest_corrupt", str(error))]
    # The very bytes the chain recorded at sealing, but no manifest.
    garbage = b"{not a manifest"
    store = _Store({"archives/a_1/manifest.json": garbage})
    with pytest.raises(ApiError) as caught:
        await RecordedSignatures(store).bound("a_1", hashlib.sha256(garbage).hexdigest(), "t1")
    assert (caught.value.status, caught.value.code) == (409, "recording_not_verified")
