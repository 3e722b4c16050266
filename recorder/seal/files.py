"""Owner-only creation of secret files that must never be clobbered."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) owner-only; an existing directory keeps the operator's mode."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def create_private_file(path: Path, data: bytes) -> None:
    """Write a new 0600 file; fail with FileExistsError rather than replace an existing one."""
    ensure_private_dir(path.parent)
    create_file(path, data, PRIVATE_FILE_MODE)


def create_file(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with exactly `mode`; FileExistsError rather than replace an existing one.

    The file appears whole or not at all: written aside, then linked into place, which fails if
    the name exists. Workers start together, and one that found the name taken reads the file at
    once: created in place, it could read a key half written.
    """
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            # The umask may have removed bits, never added them; fchmod makes the mode exact.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(staging, path)
    finally:
        with contextlib.suppress(OSError):
            staging.unlink()
    _fsync_dir(path.parent)


def replace_private_file(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`: readers see the old or the new file, never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    create_private_file(temporary, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        # Left behind, it would make every later attempt fail with FileExistsError.
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_dir(path.parent)


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def generated_secret(path: Path, generate: Callable[[], str] = _new_token) -> str:
    """The secret text in `path`, generated there (0600) by `generate` first if there is none.

    Workers start together: the file appears whole (create_file), and a worker that finds it
    made by another reads theirs, so all of them read the same secret.
    """
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            create_private_file(path, generate().encode())
    if not is_private(path):
        raise PermissionError(f"{path} is readable by others; chmod 600 it")
    token = path.read_text().strip()
    if not token:
        raise RuntimeError(f"{path} is empty: delete it and restart to generate a new token")
    return token


def is_private(path: Path) -> bool:
    """True when neither group nor others have any access to `path`."""
    return path.stat().st_mode & 0o077 == 0


def _fsync_dir(path: Path) -> None:
    # Without syncing the directory a crash can lose the new name even though the data is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
