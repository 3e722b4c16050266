"""Key-encryption keys (KEKs) that wrap each archive's random data key.

The local keyring is one JSON file, owner-only, that keeps every KEK it has ever had: rotation adds
a key and makes it current, and older keys stay to unwrap older archives. A KMS can replace it by
implementing `KeyWrapper`. The file is never silently created by readers nor replaced by anything
but a rotation that keeps every existing key.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from recorder.seal.files import create_private_file, is_private, replace_private_file
from recorder.seal.stream import KEY_SIZE

KEYRING_FORMAT = "vteller-keyring/1"
WRAP_NONCE_SIZE = 12
WRAPPED_KEY_SIZE = KEY_SIZE + 16  # the data key and its AES-GCM tag


class KeyringError(Exception):
    """The keyring cannot provide or use a key."""


class KeyringMissing(KeyringError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no keyring at {path}. To read existing archives, restore the keyring file from your "
            "key backup to this path (mode 0600). To start a new deployment, create one "
            "(LocalKeyring.open(path, create=True), which the recorder does on first start); a "
            "new keyring cannot open archives sealed under another one."
        )
        self.path = path


class KeyringInsecure(KeyringError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"keyring {path} is readable by other users; refusing to use it. "
            f"Run: chmod 600 {path}, and consider its keys exposed."
        )
        self.path = path


class KeyringCorrupt(KeyringError):
    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"keyring {path} is not a valid {KEYRING_FORMAT} file: {why}")
        self.path = path


class UnknownKeyId(KeyringError):
    def __init__(self, key_id: str, path: Path | str, known: list[str]) -> None:
        super().__init__(
            f"key {key_id!r} is not in the keyring at {path} (it holds: "
            f"{', '.join(known) or 'no keys'}); restore a keyring backup that contains it"
        )
        self.key_id = key_id
        self.path = path


class KeyUnwrapError(KeyringError):
    def __init__(self, key_id: str, archive_id: UUID) -> None:
        super().__init__(
            f"the data key wrapped with {key_id} does not unwrap for archive {archive_id}: the "
            "wrapped key or archive id was altered, or this keyring holds a different key "
            "under that id"
        )
        self.key_id = key_id
        self.archive_id = archive_id


@dataclass(frozen=True)
class WrappedKey:
    """A data key sealed under one KEK: AES-256-GCM, associated data = the archive id's bytes."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


class KeyWrapper(Protocol):
    """What sealing and verification need from key management (local keyring or a KMS)."""

    def wrap(self, data_key: bytes, archive_id: UUID) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, archive_id: UUID) -> bytes: ...


def generate_data_key() -> bytes:
    """A fresh random 256-bit data key, one per archive."""
    return AESGCM.generate_key(bit_length=8 * KEY_SIZE)


def wrap_data_key(
    kek: bytes, key_id: str, data_key: bytes, archive_id: UUID, *, nonce: bytes | None = None
) -> WrappedKey:
    """Seal `data_key` under `kek`; `nonce` is random unless given (only test vectors fix it)."""
    if len(data_key) != KEY_SIZE:
        raise ValueError(f"data key must be {KEY_SIZE} bytes, got {len(data_key)}")
    if nonce is None:
        nonce = secrets.token_bytes(WRAP_NONCE_SIZE)
    ciphertext = AESGCM(kek).encrypt(nonce, data_key, archive_id.bytes)
    return WrappedKey(key_id=key_id, nonce=nonce, ciphertext=ciphertext)


def unwrap_data_key(kek: bytes, wrapped: WrappedKey, archive_id: UUID) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped.nonce, wrapped.ciphertext, archive_id.bytes)
    except (InvalidTag, ValueError):
        raise KeyUnwrapError(wrapped.key_id, archive_id) from None


class LocalKeyring:
    """KEKs in a local JSON file. The file is read on every use, so a rotation done by another
    process (an operator's command) takes effect without restarting the recorder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> LocalKeyring:
        """Open the keyring at `path`; with `create`, make a new one (one KEK) if there is none."""
        keyring = cls(path)
        if create and not path.exists():
            # If another process created it first, use theirs: never replace a keyring.
            with suppress(FileExistsError):
                create_private_file(path, _dump(*_new_key()))
        keyring._load()
        return keyring

    @property
    def current_key_id(self) -> str:
        return self._load()[0]

    @property
    def key_ids(self) -> list[str]:
        return list(self._load()[1])

    def rotate(self) -> str:
        """Add a new KEK and make it current; return its id. Older keys keep unwrapping."""
        with self._locked():
            _, keys = self._load()
            new_id, new_keys = _new_key()
            keys.update(new_keys)
            replace_private_file(self.path, _dump(new_id, keys))
        return new_id

    def check_values(self) -> dict[str, str]:
        """Each key's check value by key id: tells whether two keyrings hold the same keys
        without revealing them (server/crypto/deployment_keys.py)."""
        return {key_id: key_check_value(key) for key_id, key in self._load()[1].items()}

    def wrap(self, data_key: bytes, archive_id: UUID) -> WrappedKey:
        current, keys = self._load()
        return wrap_data_key(keys[current], current, data_key, archive_id)

    def unwrap(self, wrapped: WrappedKey, archive_id: UUID) -> bytes:
        _, keys = self._load()
        kek = keys.get(wrapped.key_id)
        if kek is None:
            raise UnknownKeyId(wrapped.key_id, self.path, sorted(keys))
        return unwrap_data_key(kek, wrapped, archive_id)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Two rotations racing would each drop the other's new key, which may already have wrapped
        # an archive's data key; a lock next to the file serialises them.
        if not self.path.exists():
            raise KeyringMissing(self.path)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with suppress(FileExistsError):
            create_private_file(lock_path, b"")
        with lock_path.open("rb") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _load(self) -> tuple[str, dict[str, bytes]]:
        try:
            if not is_private(self.path):
                raise KeyringInsecure(self.path)
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise KeyringMissing(self.path) from None
        return _parse(self.path, raw)


def key_check_value(key: bytes) -> str:
    """A MAC of a fixed label under `key`, as banks compare keys without showing them: equal for
    equal keys, and revealing nothing of the key (64 bits: a mismatch, not a secret, is what it
    finds)."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(b"vteller key check value v1")
    return mac.finalize()[:8].hex()


def _new_key() -> tuple[str, dict[str, bytes]]:
    key_id = f"kek-{secrets.token_hex(8)}"
    return key_id, {key_id: AESGCM.generate_key(bit_length=8 * KEY_SIZE)}


def _dump(current: str, keys: dict[str, bytes]) -> bytes:
    document = {
        "format": KEYRING_FORMAT,
        "current": current,
        "keys": [
            {"id": key_id, "key": base64.b64encode(key).decode("ascii")}
            for key_id, key in keys.items()
        ],
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _parse(path: Path, raw: bytes) -> tuple[str, dict[str, bytes]]:
    try:
        document: Any = json.loads(raw)
        if document.get("format") != KEYRING_FORMAT:
            raise KeyringCorrupt(path, f"format is {document.get('format')!r}")
        keys = {
            str(entry["id"]): base64.b64decode(entry["key"], validate=True)
            for entry in document["keys"]
        }
        current = str(document["current"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        raise KeyringCorrupt(path, str(error)) from None
    if current not in keys:
        raise KeyringCorrupt(path, f"current key {current!r} is not among its keys")
    if any(len(key) != KEY_SIZE for key in keys.values()):
        raise KeyringCorrupt(path, f"every key must be {KEY_SIZE} bytes")
    return current, keys
