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
    """Never readable by scripts nor sent by other sites; over HTTPS only unless configured off."""
    response.set_cookie(
        name,
        token,
        httponly=True,
        samesite="Strict",
        secure=settings.cookie_secure,
        path=path,
        max_age=max_age,
    )
