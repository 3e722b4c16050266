"""Random bearer tokens; only their digests are stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(_bytes(token)).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(_bytes(a), _bytes(b))


def _bytes(token: str) -> bytes:
    # Header bytes that are not UTF-8 reach us as lone surrogates (aiohttp decodes with
    # surrogateescape). Such a token is merely wrong, never an error: our tokens are ASCII.
    return token.encode("utf-8", "surrogatepass")
