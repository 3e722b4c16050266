"""How the JSON test vectors are written: one layout for all of them, so a regenerated vector
is byte-identical to the committed one and the unit tests can compare the two directly."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def render_json(vector: dict[str, Any]) -> str:
    return json.dumps(vector, ensure_ascii=False, indent=2) + "\n"


def write_vector(render: Callable[[], str], default: Path) -> None:
    """The generators' command line: `python -m tests.vectors.generate_X_v1 [OUT_FILE]`."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
