"""Ed25519 signing of manifests, and the public keys anyone needs to check them."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recorder.seal.digest import sha256_hex
from recorder.seal.files import create_file, create_private_file, is_private

SIGNATURE_SIZE = 64
KEY_ID_HEX_CHARS = 16


class SigningKeyError(Exception):
    """The signing key file is missing, unreadable or not private."""


class PublicKeyError(ValueError):
    """Bytes given as a public key are not an Ed25519 public key in PEM."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of SHA-256 over the 32-byte raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:KEY_ID_HEX_CHARS]


def load_public_key(public_key_pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as error:
        raise PublicKeyError(f"not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PublicKeyError(f"not an Ed25519 public key but {type(key).__name__}")
    return key


def public_key_id(public_key_pem: bytes) -> str:
    return key_id(load_public_key(public_key_pem))


def verify(public_key_pem: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `data` by this public key."""
    try:
        load_public_key(public_key_pem).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def load_public_keys(path: Path) -> dict[str, bytes]:
    """Public keys from one PEM file or every *.pem in a directory, by their computed key id.

    Ids are computed rather than taken from file names, so a misnamed file cannot pass for
    another key.
    """
    files = sorted(path.glob("*.pem")) if path.is_dir() else [path]
    keys: dict[str, bytes] = {}
    for file in files:
        pem = file.read_bytes()
        keys[public_key_id(pem)] = pem
    return keys


class Signer:
    """An Ed25519 private key that signs manifests."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> Signer:
        """Load the PEM key at `path`; with `create`, generate it first if there is none (0600)."""
        if create and not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # Created concurrently: keep theirs, a key in use must never be replaced.
            with suppress(FileExistsError):
                create_private_file(path, pem)
        try:
            if not is_private(path):
                raise SigningKeyError(f"signing key {path} is readable by others; chmod 600 it")
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise SigningKeyError(
                f"no signing key at {path}: restore it from backup, or let the recorder create "
                "one on first start (Signer.open(path, create=True))"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        """A signer from a 32-byte RFC 8032 seed (test vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def public_key_pem(self) -> bytes:
        return self._private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def publish(self, directory: Path) -> Path:
        """Write the public key as `<key id>.pem` in `directory` (idempotent, never replaces)."""
        return write_public_key(directory, self.public_key_pem())


def write_public_key(directory: Path, public_key_pem: bytes) -> Path:
    """Write a public key as `<key id>.pem`; an existing file must already hold the same key."""
    path = directory / f"{public_key_id(public_key_pem)}.pem"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        create_file(path, public_key_pem, 0o644)  # public: anyone may verify with it
    except FileExistsError:
        if path.read_bytes() != public_key_pem:
            raise FileExistsError(f"{path} exists and holds a different key") from None
    return path
