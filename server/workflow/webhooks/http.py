"""One HTTP attempt at a webhook, and what its answer means (docs/webhooks.md, section 5)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path

import aiohttp
from multidict import CIMultiDictProxy

from server.db.models import utcnow
from server.workflow.webhooks.signing import USER_AGENT

# Enough of an error answer to tell the operator what the receiver said, not a whole page.
ERROR_BODY_BYTES = 300
# 408 and 429 are "not now" rather than "never": retried like 5xx.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None  # None: no HTTP answer (timeout, connection refused, TLS failure)
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait


def client_session(timeout_seconds: float, ca_file: Path | None) -> aiohttp.ClientSession:
    # Certificates are always checked; a bank's internal CA is added, never a way around it.
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_seconds),
        connector=aiohttp.TCPConnector(ssl=context),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
    )


async def attempt(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> Outcome:
    try:
        # Redirects are not followed: a signed transaction goes only where it was configured to.
        async with http.post(url, data=body, headers=headers, allow_redirects=False) as response:
            excerpt = await response.content.read(ERROR_BODY_BYTES)
            return classify(response.status, response.headers, excerpt)
    except TimeoutError:
        timeout = http.timeout.total
        return Outcome(Verdict.RETRY, None, f"no answer within {timeout:g} s")
    except aiohttp.ClientError as exc:
        return Outcome(Verdict.RETRY, None, f"could not reach the webhook: {_describe(exc)}")


def classify(status: int, headers: CIMultiDictProxy[str], excerpt: bytes) -> Outcome:
    if 200 <= status < 300:
        return Outcome(Verdict.DELIVERED, status)
    said = excerpt.decode("utf-8", "replace").strip()
    said = f": {said}" if said else ""
    if 300 <= status < 400:
        location = headers.get("Location", "?")
        return Outcome(
            Verdict.REFUSED,
            status,
            f"the webhook answered HTTP {status}, a redirect to {location}; redirects are not "
            "followed: configure webhook.url with the final address",
        )
    if 400 <= status < 500 and status not in RETRYABLE_CLIENT_ERRORS:
        return Outcome(
            Verdict.REFUSED,
            status,
            f"the webhook refused the delivery with HTTP {status}{said}; it is not retried "
            "until the receiver is fixed and an operator retries it",
        )
    return Outcome(
        Verdict.RETRY,
        status,
        f"the webhook answered HTTP {status}{said}",
        retry_after=_retry_after(headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - utcnow()).total_seconds(), 0.0)


def _describe(exc: aiohttp.ClientError) -> str:
    text = str(exc) or type(exc).__name__
    return (
        text if isinstance(exc, aiohttp.ClientConnectorError) else f"{type(exc).__name__}: {text}"
    )
