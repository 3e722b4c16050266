"""Generate the keyed ID-number hash v1 test vector (docs/auditor.md section 2).

    python -m tests.vectors.generate_auditor_idhash_v1 [OUT_FILE]

writes OUT_FILE (default: tests/vectors/auditor-idhash-v1.json): a fixed key, and for a few
spellings of ID numbers their normalized form and keyed hash. Every input is fixed, so the output
is identical on every run; tests/unit/test_auditor_idhash.py checks that and recomputes each hash
from the specification with the standard library's hmac.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.auditor.idhash import CONTEXT, IdNumberHasher, normalize
from tests.vectors.vector_file import render_json, write_vector

OUT_FILE = Path(__file__).parent / "auditor-idhash-v1.json"
KEY = bytes(range(0x40, 0x60))
INPUTS = [
    "11010519491231002X",
    "11010519491231002x",
    " 110105 19491231 002× ",
    "440524188001010014",
]


def vector() -> dict[str, Any]:
    hasher = IdNumberHasher(KEY)
    return {
        "format": "vteller-id-number/1",
        "context_hex": CONTEXT.hex(),
        "key_hex": KEY.hex(),
        "cases": [
            {"input": raw, "normalized": normalize(raw), "hmac_sha256": hasher.hash(raw)}
            for raw in INPUTS
        ],
    }


def render() -> str:
    return render_json(vector())


if __name__ == "__main__":
    write_vector(render, OUT_FILE)
