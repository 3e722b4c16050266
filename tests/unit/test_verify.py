"""Verification of sealed archives: a good archive passes, every kind of tampering is named."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from recorder.export import ExportError, export_archive
from recorder.seal.canonical import canonical_json
from recorder.seal.digest import sha256_hex
from recorder.seal.keyring import LocalKeyring, WrappedKey
from recorder.seal.manifest import (
    MANIFEST_OBJECT,
    SIGNATURE_OBJECT,
    Manifest,
    manifest_sha256,
    segment_object_name,
)
from recorder.seal.sealer import ArchiveSealer
from recorder.seal.signing import Signer
from recorder.verify import (
    DirectoryArchive,
    ImageUnavailable,
    VerificationReport,
    signature_image,
    verify_archive,
)
from server.cli import main as vteller

CHUNK = 1024
SEGMENT_SIZES = [3000, 0, 1024, 5000]


@dataclass
class Setup:
    keyring: LocalKeyring
    signer: Signer

    @property
    def public_keys(self) -> dict[str, bytes]:
        return {self.signer.key_id: self.signer.public_key_pem()}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(
        keyring=LocalKeyring.open(tmp_path / "state" / "keyring.json", create=True),
        signer=Signer.open(tmp_path / "state" / "signing.pem", create=True),
    )


def seal(
    setup: Setup,
    directory: Path,
    *,
    previous: bytes | None = None,
    archive_id: UUID | None = None,
    signatures: Sequence[bytes] = (),
    attach: bool = True,
) -> Manifest:
    """Record an archive the way the recorder does: segments written while encrypted; one signed
    transaction per image in `signatures`, the image attached unless `attach` is False (the
    archives sealed before images were)."""
    sealer = ArchiveSealer(archive_id or uuid4(), setup.keyring, chunk_size=CHUNK)
    directory.mkdir(parents=True)
    transactions = []
    for number, image in enumerate(signatures):
        if attach:
            entry, ciphertext = sealer.seal_attachment(image, "image/png")
            (directory / entry.object).write_bytes(ciphertext)
        transactions.append(
            {
                "id": f"t-{number}",
                "sha256": sha256_hex(f"transaction {number}".encode()),
                "signature_sha256": sha256_hex(image),
                "signed_at": "2025-01-31T08:05:00.000Z",
                "media_ms": 300000 + number,
            }
        )
    for position, size in enumerate(SEGMENT_SIZES):
        encryptor = sealer.open_segment()
        media = bytes((position * 7 + i) % 251 for i in range(size))
        with (directory / segment_object_name(encryptor.index)).open("wb") as file:
            for start in range(0, size, 700):
                file.write(encryptor.update(media[start : start + 700]))
            file.write(encryptor.finalize())
        sealer.close_segment(encryptor)
    sealed = sealer.finish(
        setup.signer,
        session_id="sess-1",
        business="wealth_product",
        product="稳健理财 A",
        participants=[
            {
                "id": "p1",
                "role": "teller",
                "display_name": "王柜员",
                "presence": [{"joined_at": "2025-01-31T08:00:00.000Z", "left_at": None}],
            }
        ],
        marks=[{"name": "risk_disclosure", "media_ms": 1200, "wall_time": "2025-01-31T08:00:01Z"}],
        tracks=[{"id": "t1", "kind": "video", "participant_id": "p1", "source": "camera"}],
        status="complete",
        gaps=[],
        identity={"face_match": {"score": "0.97", "passed": True}},
        compliance=None,
        recorder_version="0.1.0",
        created_at="2025-01-31T08:00:00.000Z",
        finalized_at="2025-01-31T08:10:00.000Z",
        previous_manifest_sha256=manifest_sha256(previous) if previous is not None else None,
        transactions=transactions or None,
    )
    (directory / MANIFEST_OBJECT).write_bytes(sealed.data)
    (directory / SIGNATURE_OBJECT).write_bytes(sealed.signature)
    return sealed.manifest


def check(setup: Setup, directory: Path, **kwargs: object) -> VerificationReport:
    return verify_archive(
        DirectoryArchive(directory),
        setup.public_keys,
        keyring=setup.keyring,
        **kwargs,  # type: ignore[arg-type]
    )


def problems(report: VerificationReport) -> list[str]:
    return [str(problem) for problem in report.problems]


def test_sealed_archive_verifies(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    report = check(setup, tmp_path / "a")
    assert report.ok, report.render()
    assert report.signature_verified and report.decrypted

    without_keyring = verify_archive(DirectoryArchive(tmp_path / "a"), setup.public_keys)
    assert without_keyring.ok and not without_keyring.decrypted
    assert "not decrypted" in without_keyring.render()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def names_altered(found: list[str], subject: str) -> bool:
    """Both the stored hash and the first chunk's tag name `subject` as altered."""
    return f"{subject}: SHA-256 of ciphertext differs from the manifest" in found and any(
        p.startswith(f"{subject}: chunk 0 fails authentication") for p in found
    )


def test_flipped_byte(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    flip_byte(tmp_path / "a" / "seg-000002.bin", 100)
    assert names_altered(problems(check(setup, tmp_path / "a")), "segment 2 (seg-000002.bin)")


def test_deleted_segment(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    (tmp_path / "a" / "seg-000001.bin").unlink()
    assert problems(check(setup, tmp_path / "a")) == ["segment 1 (seg-000001.bin): missing"]


def test_reordered_segments(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    first, third = tmp_path / "a" / "seg-000000.bin", tmp_path / "a" / "seg-000003.bin"
    first_bytes = first.read_bytes()
    first.write_bytes(third.read_bytes())
    third.write_bytes(first_bytes)
    found = problems(check(setup, tmp_path / "a"))
    for index in (0, 3):
        subject = f"segment {index} ({segment_object_name(index)})"
        assert f"{subject}: SHA-256 of ciphertext differs from the manifest" in found
        assert any(p.startswith(f"{subject}: ciphertext is") for p in found)
        assert any(p.startswith(f"{subject}: chunk 0 fails authentication") for p in found)


def test_truncated_last_segment(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    path = tmp_path / "a" / "seg-000003.bin"
    path.write_bytes(path.read_bytes()[: 4 * (CHUNK + 16)])  # drop the final chunk
    found = problems(check(setup, tmp_path / "a"))
    assert "segment 3 (seg-000003.bin): truncated (no final chunk after 4 chunk(s))" in found
    assert "segment 3 (seg-000003.bin): SHA-256 of ciphertext differs from the manifest" in found


def test_edited_manifest(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    path = tmp_path / "a" / MANIFEST_OBJECT
    path.write_bytes(path.read_bytes().replace(b"sess-1", b"sess-2"))
    found = problems(check(setup, tmp_path / "a"))
    assert found == [f"manifest: signature does not verify with key {setup.signer.key_id}"]

    path.write_bytes(path.read_bytes().replace(b'{"', b'{ "', 1))
    found = problems(check(setup, tmp_path / "a"))
    assert any("not in canonical form" in p for p in found)


def test_segment_from_another_archive_at_same_index(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    seal(setup, tmp_path / "b")  # same keyring, same sizes, same media
    shutil.copy(tmp_path / "b" / "seg-000002.bin", tmp_path / "a" / "seg-000002.bin")
    found = problems(check(setup, tmp_path / "a"))
    assert "segment 2 (seg-000002.bin): SHA-256 of ciphertext differs from the manifest" in found
    assert any(
        p.startswith("segment 2 (seg-000002.bin): chunk 0 fails authentication") for p in found
    )


def test_extra_segment_object(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    shutil.copy(tmp_path / "a" / "seg-000000.bin", tmp_path / "a" / "seg-000004.bin")
    assert problems(check(setup, tmp_path / "a")) == [
        "seg-000004.bin: segment object not listed in the manifest"
    ]


def test_unknown_signing_key(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    stranger = Signer.open(tmp_path / "stranger.pem", create=True)
    report = verify_archive(
        DirectoryArchive(tmp_path / "a"), {stranger.key_id: stranger.public_key_pem()}
    )
    assert problems(report) == [
        f"manifest: signed with key {setup.signer.key_id}, which is not among the public keys "
        f"given ({stranger.key_id})"
    ]
    mislabelled = {setup.signer.key_id: stranger.public_key_pem()}
    found = problems(verify_archive(DirectoryArchive(tmp_path / "a"), mislabelled))
    assert found == [
        f"manifest: the public key given as {setup.signer.key_id} is actually key {stranger.key_id}"
    ]


def test_wrong_or_unknown_data_key(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    other = LocalKeyring.open(tmp_path / "other" / "keyring.json", create=True)
    report = verify_archive(DirectoryArchive(tmp_path / "a"), setup.public_keys, keyring=other)
    [problem] = problems(report)
    assert problem.startswith("manifest: data key cannot be unwrapped: key 'kek-")
    assert "not in the keyring at" in problem
    assert not report.decrypted


def test_wrapped_key_of_the_wrong_size_is_named(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    path = tmp_path / "a" / MANIFEST_OBJECT
    fields = json.loads(path.read_bytes())
    fields["wrapped_key"]["nonce"] = base64.b64encode(b"\x01" * 16).decode("ascii")
    data = canonical_json(fields)  # signed as it is: only the sizes are wrong
    path.write_bytes(data)
    (tmp_path / "a" / SIGNATURE_OBJECT).write_bytes(setup.signer.sign(data))
    [problem] = problems(check(setup, tmp_path / "a"))
    assert "wrapped_key.nonce" in problem and "must encode 12 bytes, not 16" in problem


class _OddKeyWrapper:
    """A key wrapper (a KMS plug-in) that fails with ValueError, or returns a short key."""

    def __init__(self, error: bool) -> None:
        self.error = error

    def wrap(self, data_key: bytes, archive_id: UUID) -> WrappedKey:
        raise NotImplementedError

    def unwrap(self, wrapped: WrappedKey, archive_id: UUID) -> bytes:
        if self.error:
            raise ValueError("Invalid key size (128) for AES")
        return b"\x00" * 16


def test_a_key_wrapper_failing_oddly_is_a_problem_not_a_crash(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    archive = DirectoryArchive(tmp_path / "a")
    report = verify_archive(archive, setup.public_keys, keyring=_OddKeyWrapper(error=True))
    assert problems(report) == [
        "manifest: data key cannot be unwrapped: Invalid key size (128) for AES"
    ]
    report = verify_archive(archive, setup.public_keys, keyring=_OddKeyWrapper(error=False))
    assert problems(report) == ["manifest: data key is 16 bytes, not 32"]
    assert not report.decrypted


def test_previous_manifest_link(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    first = (tmp_path / "a" / MANIFEST_OBJECT).read_bytes()
    seal(setup, tmp_path / "b", previous=first)
    assert check(setup, tmp_path / "b", previous_manifest=first).ok
    found = problems(check(setup, tmp_path / "b", previous_manifest=first + b" "))
    assert len(found) == 1 and "previous_manifest_sha256 is" in found[0]
    found = problems(check(setup, tmp_path / "a", previous_manifest=first))
    assert found == ["manifest: names no previous manifest, but one was given"]


def test_the_link_to_a_purged_manifest_is_checked_against_its_hash(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The predecessor is gone at the end of its retention; its tombstone keeps the hash.
    seal(setup, tmp_path / "a")
    first = (tmp_path / "a" / MANIFEST_OBJECT).read_bytes()
    seal(setup, tmp_path / "b", previous=first)
    digest = manifest_sha256(first)
    report = check(setup, tmp_path / "b", previous_sha256=digest.upper())
    assert report.ok and any("against its SHA-256 alone" in note for note in report.notes)
    found = problems(check(setup, tmp_path / "b", previous_sha256="0" * 64))
    assert found == [
        f"manifest: previous_manifest_sha256 is {digest}, but the given previous manifest "
        f"SHA-256 is {'0' * 64}"
    ]
    key = tmp_path / "bank.pem"
    key.write_bytes(setup.signer.public_key_pem())
    keys = ["--keys", str(key)]
    assert vteller(["verify", *keys, "--previous-sha256", digest, str(tmp_path / "b")]) == 0
    assert vteller(["verify", *keys, "--previous-sha256", "0" * 64, str(tmp_path / "b")]) == 1
    with pytest.raises(SystemExit) as refused:
        vteller(["verify", "--previous-sha256", "not-a-hash", str(tmp_path / "b")])
    assert refused.value.code == 2 and "64 hexadecimal digits" in capsys.readouterr().err


def test_export_package_verifies(setup: Setup, tmp_path: Path) -> None:
    manifest = seal(setup, tmp_path / "a")
    out = export_archive(
        DirectoryArchive(tmp_path / "a"), tmp_path / "out", [setup.signer.public_key_pem()]
    )
    assert (out / "keys" / f"{setup.signer.key_id}.pem").exists()
    readme = (out / "README.txt").read_text()
    assert manifest.archive_id in readme and "vteller verify" in readme
    assert vteller(["verify", str(out)]) == 0
    with pytest.raises(ExportError, match="not empty"):
        export_archive(DirectoryArchive(tmp_path / "a"), out, [setup.signer.public_key_pem()])
    stranger = Signer.open(tmp_path / "stranger.pem", create=True)
    with pytest.raises(ExportError, match="not among the public keys"):
        export_archive(
            DirectoryArchive(tmp_path / "a"), tmp_path / "o2", [stranger.public_key_pem()]
        )
    assert not (tmp_path / "o2").exists()

    (out / "seg-000000.bin").write_bytes(b"x")
    assert vteller(["verify", str(out)]) == 1


# Stand-ins for signature PNGs: verification treats an attachment as bytes, whatever they hold.
SIGNATURES = [b"\x89PNG first signature" * 100, b"\x89PNG second signature" * 3]


def test_signature_images_are_sealed_listed_and_exported(setup: Setup, tmp_path: Path) -> None:
    manifest = seal(setup, tmp_path / "a", signatures=SIGNATURES)
    assert manifest.attachments is not None
    assert [a.object for a in manifest.attachments] == ["att-000000.bin", "att-000001.bin"]
    assert manifest.attachments[1].plaintext_sha256 == sha256_hex(SIGNATURES[1])
    report = check(setup, tmp_path / "a")
    assert report.ok, report.render()
    assert "transaction t-1: signature image in att-000001.bin (image/png)" in report.notes

    out = export_archive(
        DirectoryArchive(tmp_path / "a"), tmp_path / "out", [setup.signer.public_key_pem()]
    )
    assert (out / "att-000001.bin").read_bytes() == (tmp_path / "a" / "att-000001.bin").read_bytes()
    assert "att-NNNNNN.bin" in (out / "README.txt").read_text()
    assert check(setup, out).ok

    # An object the manifest does not list travels too: the recipient must see the finding.
    (tmp_path / "a" / "att-000005.bin").write_bytes(b"unlisted")
    out = export_archive(
        DirectoryArchive(tmp_path / "a"), tmp_path / "out2", [setup.signer.public_key_pem()]
    )
    assert "att-000005.bin: attachment object not listed in the manifest" in problems(
        check(setup, out)
    )
    (tmp_path / "a" / "att-000001.bin").unlink()
    with pytest.raises(ExportError, match=r"att-000001\.bin"):
        export_archive(
            DirectoryArchive(tmp_path / "a"), tmp_path / "o2", [setup.signer.public_key_pem()]
        )


def test_archive_without_its_signature_image_says_so(setup: Setup, tmp_path: Path) -> None:
    manifest = seal(setup, tmp_path / "a", signatures=SIGNATURES[:1], attach=False)
    assert manifest.attachments is None
    assert b"attachments" not in (tmp_path / "a" / MANIFEST_OBJECT).read_bytes()
    report = check(setup, tmp_path / "a")
    assert report.ok, report.render()
    assert (
        "transaction t-0: signature image not in the archive (only its SHA-256 is bound)"
        in report.notes
    )


def test_tampered_missing_and_unlisted_attachments(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a", signatures=SIGNATURES)
    path = tmp_path / "a" / "att-000000.bin"
    flip_byte(path, 5)
    report = check(setup, tmp_path / "a")
    assert names_altered(problems(report), "attachment 0 (att-000000.bin)")
    # Only an image that verified is said to be in the archive.
    assert (
        "transaction t-0: signature image listed as att-000000.bin, not verified (see the "
        "problems)" in report.notes
    )
    assert "transaction t-1: signature image in att-000001.bin (image/png)" in report.notes

    # A segment moved into an attachment's place does not authenticate there (another key).
    shutil.copy(tmp_path / "a" / "seg-000000.bin", tmp_path / "a" / "att-000001.bin")
    (tmp_path / "a" / "att-000007.bin").write_bytes(b"extra")
    found = problems(check(setup, tmp_path / "a"))
    assert "att-000007.bin: attachment object not listed in the manifest" in found
    assert "attachment 1 (att-000001.bin): SHA-256 of ciphertext differs from the manifest" in found

    path.unlink()
    assert "attachment 0 (att-000000.bin): missing" in problems(check(setup, tmp_path / "a"))


def test_a_signature_image_is_read_from_the_archive_only_when_it_verifies(
    setup: Setup, tmp_path: Path
) -> None:
    seal(setup, tmp_path / "a", signatures=SIGNATURES)
    archive = DirectoryArchive(tmp_path / "a")

    def image(transaction_id: str, keys: dict[str, bytes] = setup.public_keys) -> bytes:
        return signature_image(archive, keys, setup.keyring, transaction_id)

    assert image("t-1") == SIGNATURES[1]
    with pytest.raises(ImageUnavailable, match="not signed in this recording") as refused:
        image("t-9")
    assert refused.value.code == "not_signed_here"
    stranger = Signer.open(tmp_path / "stranger.pem", create=True)
    with pytest.raises(ImageUnavailable, match="not among the public keys") as refused:
        image("t-1", {stranger.key_id: stranger.public_key_pem()})
    assert refused.value.code == "not_verified"
    flip_byte(tmp_path / "a" / "att-000001.bin", 3)
    with pytest.raises(ImageUnavailable, match="attachment 1") as refused:
        image("t-1")
    assert refused.value.code == "not_verified"

    seal(setup, tmp_path / "b", signatures=SIGNATURES, attach=False)
    with pytest.raises(ImageUnavailable, match="only the SHA-256") as refused:
        signature_image(DirectoryArchive(tmp_path / "b"), setup.public_keys, setup.keyring, "t-0")
    assert refused.value.code == "image_not_archived"


def test_export_verifies_with_openssl_alone(setup: Setup, tmp_path: Path) -> None:
    seal(setup, tmp_path / "a")
    out = export_archive(
        DirectoryArchive(tmp_path / "a"), tmp_path / "out", [setup.signer.public_key_pem()]
    )
    key = f"keys/{setup.signer.key_id}.pem"
    result = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", key, "-rawin",
         "-in", "manifest.json", "-sigfile", "manifest.sig"],
        cwd=out, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout


def test_verify_names_the_signing_key_and_whether_the_package_supplied_it(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seal(setup, tmp_path / "a")
    package = export_archive(
        DirectoryArchive(tmp_path / "a"), tmp_path / "package", [setup.signer.public_key_pem()]
    )
    bank_key = setup.signer.publish(tmp_path / "bank")
    # Someone re-seals the package with a key of their own, and ships that key with it.
    forger = Setup(setup.keyring, Signer.open(tmp_path / "forger.pem", create=True))
    seal(forger, tmp_path / "f")
    forged = export_archive(
        DirectoryArchive(tmp_path / "f"), tmp_path / "forged", [forger.signer.public_key_pem()]
    )
    from_package = "taken from the package itself: compare it with the bank's published key id"
    capsys.readouterr()

    for directory, signer in ((package, setup.signer), (forged, forger.signer)):
        # Without --keys (or with the package's own): it verifies, and says against what.
        for keys in ([], ["--keys", str(directory / "keys")]):
            assert vteller(["verify", *keys, str(directory)]) == 0
            shown = capsys.readouterr().out
            assert f"  signed by key {signer.key_id}, {from_package}\n" in shown
    assert vteller(["verify", "--keys", str(bank_key), str(package)]) == 0
    shown = capsys.readouterr().out
    assert f"  signed by key {setup.signer.key_id}, one of the public keys in {bank_key}\n" in shown
    assert "package itself" not in shown
    assert vteller(["verify", "--keys", str(bank_key), str(forged)]) == 1
    shown = capsys.readouterr().out
    assert f"signed with key {forger.signer.key_id}, which is not among the public keys" in shown
    assert "signed by key" not in shown

    assert vteller(["verify", "--json", str(forged)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["signing_key_id"], result["keys_from_package"]) == (forger.signer.key_id, True)
    assert vteller(["verify", "--json", "--keys", str(bank_key), str(forged)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["signing_key_id"], result["keys_from_package"]) == (None, False)
