"""Key files appear whole: a worker starting beside another reads them the moment it finds the
name taken (seen: a worker died on a public key half written, at a fresh install's first start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recorder.seal.files import create_private_file, generated_secret, is_private
from recorder.seal.signing import Signer


def _name_taken_while_written(target: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    taken: list[bool] = []
    write = os.write

    def watched(fd: int, data: bytes | memoryview) -> int:
        taken.append(target.exists())
        return write(fd, data)

    monkeypatch.setattr(os, "write", watched)
    return taken


def test_a_private_file_is_named_only_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "keys" / "signing-key.pem"
    taken = _name_taken_while_written(target, monkeypatch)
    create_private_file(target, b"secret")
    monkeypatch.undo()
    assert taken == [False]
    assert target.read_bytes() == b"secret" and is_private(target)
    with pytest.raises(FileExistsError):
        create_private_file(target, b"other")
    assert target.read_bytes() == b"secret"
    assert generated_secret(target) == "secret"
    assert [p.name for p in target.parent.iterdir()] == ["signing-key.pem"]  # nothing left aside


def test_a_public_key_is_named_only_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = Signer.from_seed(bytes(32))
    target = tmp_path / "public" / f"{signer.key_id}.pem"
    taken = _name_taken_while_written(target, monkeypatch)
    assert signer.publish(tmp_path / "public") == target
    monkeypatch.undo()
    assert taken == [False]
    assert target.read_bytes() == signer.public_key_pem()
    assert target.stat().st_mode & 0o777 == 0o644
    assert signer.publish(tmp_path / "public") == target  # again: the same key, no error
    assert [p.name for p in target.parent.iterdir()] == [target.name]
