"""Signed reports added to a sealed archive: bound to its manifest, verified, exported."""

from __future__ import annotations

import shutil
from pathlib import Path

from recorder.export import export_archive
from recorder.seal.manifest import MANIFEST_OBJECT, manifest_sha256, parse_manifest
from recorder.seal.report import next_report_number, report_object_names, sign_report
from recorder.seal.signing import Signer, load_public_keys
from recorder.verify import DirectoryArchive, verify_archive
from tests.vectors.generate_archive_v1 import SIGNING_SEED

VECTOR = Path(__file__).parent.parent / "vectors" / "archive-v1" / "archive"


def _archive(tmp_path: Path) -> tuple[Path, dict[str, object], dict[str, bytes]]:
    directory = tmp_path / "archive"
    # The vector's own signed report (docs/archive-format.md section 9) left out: each test
    # numbers the reports it adds from 001.
    shutil.copytree(VECTOR, directory, ignore=shutil.ignore_patterns("report-*"))
    manifest_bytes = (directory / MANIFEST_OBJECT).read_bytes()
    manifest = parse_manifest(manifest_bytes)
    document: dict[str, object] = {
        "format": "vteller-compliance-report/1",
        "archive_id": manifest.archive_id,
        "manifest_sha256": manifest_sha256(manifest_bytes),
        "decision": "pass",
    }
    return directory, document, load_public_keys(directory / "keys")


def _add(directory: Path, document: dict[str, object], signer: Signer) -> str:
    number = next_report_number(DirectoryArchive(directory).list_names())
    data, signature = sign_report(document, signer)
    json_name, sig_name = report_object_names(number)
    (directory / json_name).write_bytes(data)
    (directory / sig_name).write_bytes(signature)
    return json_name


def test_a_signed_report_verifies_and_travels_with_the_export(tmp_path: Path) -> None:
    directory, document, keys = _archive(tmp_path)
    signer = Signer.from_seed(SIGNING_SEED)
    assert _add(directory, document, signer) == "report-001.json"
    assert _add(directory, document | {"decision": "fail"}, signer) == "report-002.json"
    result = verify_archive(DirectoryArchive(directory), keys)
    assert result.ok, result.render()
    assert result.reports == ["report-001.json", "report-002.json"]
    package = export_archive(DirectoryArchive(directory), tmp_path / "package", list(keys.values()))
    assert (package / "report-002.sig").is_file()
    assert verify_archive(DirectoryArchive(package), keys).reports == result.reports


def test_altered_foreign_or_unsigned_reports_are_named(tmp_path: Path) -> None:
    directory, document, keys = _archive(tmp_path)
    signer = Signer.from_seed(SIGNING_SEED)
    name = _add(directory, document, signer)
    altered = (directory / name).read_bytes().replace(b'"pass"', b'"fail"')
    (directory / name).write_bytes(altered)
    # A report of another archive, correctly signed, copied in.
    _add(directory, document | {"manifest_sha256": "0" * 64}, signer)
    # A report signed by a key the verifier does not trust.
    _add(directory, document, Signer.from_seed(b"\x01" * 32))
    result = verify_archive(DirectoryArchive(directory), keys)
    problems = [str(p) for p in result.problems]
    assert "report-001.json: signature does not verify with key" in problems[0]
    assert problems[1] == "report-002.json: names another manifest (manifest_sha256 differs)"
    assert problems[2].startswith("report-003.json: signed with key")
    assert result.reports == []
    (directory / "report-003.sig").unlink()
    again = verify_archive(DirectoryArchive(directory), keys)
    assert "report-003.json: signature (report-003.sig) is missing" in [
        str(p) for p in again.problems
    ]


def test_a_report_canonical_json_cannot_hold_is_a_problem_of_that_report(tmp_path: Path) -> None:
    directory, document, keys = _archive(tmp_path)
    signer = Signer.from_seed(SIGNING_SEED)
    _add(directory, document, signer)
    planted = document | {"signing_key_id": signer.key_id}
    for number, value in ((2, "9007199254740993"), (3, '"\\ud800"')):
        text = (
            "{" + ",".join(f'"{k}":"{v}"' for k, v in sorted(planted.items())) + f',"zz":{value}}}'
        )
        (directory / f"report-00{number}.json").write_text(text)
    result = verify_archive(DirectoryArchive(directory), keys)
    problems = [str(p) for p in result.problems]
    assert problems[0].startswith("report-002.json: not canonical JSON: ")
    assert "beyond" in problems[0]
    assert problems[1].startswith("report-003.json: not canonical JSON: ")
    assert "surrogate" in problems[1]
    assert result.reports == ["report-001.json"]


def test_a_signature_whose_report_never_arrived_is_ignored_and_keeps_its_number(
    tmp_path: Path,
) -> None:
    directory, document, keys = _archive(tmp_path)
    signer = Signer.from_seed(SIGNING_SEED)
    _add(directory, document, signer)
    (directory / "report-001.json").unlink()  # the store failed between the .sig and the .json
    result = verify_archive(DirectoryArchive(directory), keys)
    assert result.ok and result.reports == [], result.render()
    assert next_report_number(DirectoryArchive(directory).list_names()) == 2
