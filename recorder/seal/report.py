"""Signed reports added to a sealed archive (docs/archive-format.md section 11).

A compliance report is produced after the recording is sealed, so it cannot be in the manifest;
it is stored next to it as `report-NNN.sig`, then `report-NNN.json` (NNN counting from 001, since
objects under retention are never overwritten: a re-run adds the next number). The report is
canonical JSON naming the archive and the SHA-256 of its manifest, signed like the manifest with
the recorder's key, so it cannot be moved to another archive or altered unnoticed.
"""

from __future__ import annotations

import re
from typing import Any

from recorder.seal.canonical import canonical_json, parse_json
from recorder.seal.signing import Signer

REPORT_OBJECT_PATTERN = re.compile(r"^report-(\d{3,})\.json$")
REPORT_SIGNATURE_PATTERN = re.compile(r"^report-(\d{3,})\.sig$")
REPORT_FORMAT_PREFIX = "vteller-compliance-report/"


class ReportError(ValueError):
    """Bytes that are not a signed report of this archive."""


def report_object_names(number: int) -> tuple[str, str]:
    return f"report-{number:03d}.json", f"report-{number:03d}.sig"


def next_report_number(names: set[str] | list[str]) -> int:
    # A signature is stored before its report: a lone .sig (the store failed in between) still
    # takes its number, which can never be written again under retention.
    numbers = [
        int(m[1])
        for n in names
        if (m := REPORT_OBJECT_PATTERN.fullmatch(n) or REPORT_SIGNATURE_PATTERN.fullmatch(n))
    ]
    return max(numbers, default=0) + 1


def sign_report(document: dict[str, Any], signer: Signer) -> tuple[bytes, bytes]:
    """Canonical bytes of the report (with `signing_key_id` set) and their signature."""
    data = canonical_json(document | {"signing_key_id": signer.key_id})
    return data, signer.sign(data)


def parse_report(data: bytes, archive_id: str, manifest_sha256: str) -> dict[str, Any]:
    """The report document, if these bytes are a canonical report bound to this manifest."""
    try:
        document = parse_json(data)
        # Valid JSON can still hold what canonical JSON cannot (an integer beyond 2^53, a lone
        # surrogate): re-encoding raises CanonicalJsonError, a ValueError. Python itself raises
        # ValueError for an integer of thousands of digits and RecursionError for deep nesting.
        canonical = canonical_json(document)
    except (ValueError, RecursionError) as exc:
        raise ReportError(f"not canonical JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ReportError("not a JSON object")
    if canonical != data:
        raise ReportError("not in canonical form (altered, or not written by vteller)")
    fmt = document.get("format")
    if not isinstance(fmt, str) or not fmt.startswith(REPORT_FORMAT_PREFIX):
        raise ReportError(f"format is {fmt!r}, not {REPORT_FORMAT_PREFIX}N")
    if document.get("archive_id") != archive_id:
        raise ReportError(f"is about archive {document.get('archive_id')!r}, not this one")
    if document.get("manifest_sha256") != manifest_sha256:
        raise ReportError("names another manifest (manifest_sha256 differs)")
    if not isinstance(document.get("signing_key_id"), str):
        raise ReportError("names no signing_key_id")
    return document
