"""Running the operator scripts in infra/ from tests, as an operator runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_infra(script: str, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`bash infra/{script} {command} {options}`, whatever its exit status."""
    return subprocess.run(
        ["bash", str(REPO / "infra" / script), command, *options],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def infra(script: str, command: str, *options: str) -> str:
    """`bash infra/{script} {command} {options}`; its standard output. Fails the test with the
    script's own message when it exits non-zero."""
    done = run_infra(script, command, *options)
    assert done.returncode == 0, f"infra/{script} {command} failed: {done.stderr}"
    return done.stdout
