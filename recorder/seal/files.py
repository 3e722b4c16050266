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
    """Write a new 0600 file; fail with FileExistsError rather than replace an existing one.

    O_EXCL makes "never overwrite" hold even when two processes race to create the same key.
    """
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        # The umask may have removed bits, never added them; fchmod makes the mode exact anyway.
        os.fchmod(fd, PRIVATE_FILE_MODE)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
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

    Workers start together: the file appears atomically (written aside, then linked into place,
    which fails if another worker got there first), so all of them read the same secret.
    """
    if not path.exists():
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        create_private_file(staging, generate().encode())
        with contextlib.suppress(FileExistsError):
            os.link(staging, path)
        staging.unlink()
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
