"""The cookies that carry a credential (staff login, customer link, queue ticket)."""

from __future__ import annotations

from aiohttp import web

from server.settings import Settings


def set_credential_cookie(
    response: web.StreamResponse,
    settings: Settings,
    name: str,
    token: str,
    *,
    path: str,
    max_age: int,
) -> None:
    """Never readable by scripts nor sent by other sites; over HTTPS only behind TLS."""
    response.set_cookie(
        name,
        token,
        httponly=True,
        samesite="Strict",
        # Browsers reach an https:// public_url over TLS whatever vteller itself speaks: a
        # forgotten cookie_secure must not let a credential travel over plain HTTP.
        secure=settings.cookie_secure or settings.origin.startswith("https://"),
        path=path,
        max_age=max_age,
    )
