"""The webhook format: the test vector, recomputed from docs/webhooks.md, and the documented
receiver-side check run on it; how answers are judged and how long vteller waits between tries."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from recorder.seal.signing import public_key_id
from server.workflow.webhooks.config import WebhookConfig
from server.workflow.webhooks.http import Verdict, classify
from tests.support.webhook_receiver import DOC, documented_verifier
from tests.vectors.generate_webhook_v1 import OUT_FILE, render


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(OUT_FILE.read_text("utf-8"))
    return loaded


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return documented_verifier()


def _headers(vector: dict[str, Any], **changes: str) -> CIMultiDictProxy[str]:
    # Receivers see headers case-insensitively, whatever case they were sent in.
    headers = CIMultiDict({name.lower(): value for name, value in vector["headers"].items()})
    for name, value in changes.items():
        headers[name.replace("_", "-")] = value
    return CIMultiDictProxy(headers)


def test_generator_is_deterministic() -> None:
    assert render() == OUT_FILE.read_text("utf-8")


def test_body_is_the_canonical_envelope(vector: dict[str, Any]) -> None:
    envelope = vector["envelope"]
    assert set(envelope) == {
        "version", "event_type", "delivery_id", "transaction_id", "created_at", "event",
    }  # fmt: skip
    assert envelope["version"] == 1 and envelope["event_type"] == "transaction.approved"
    # For the vector's values (ASCII member names, no floats) JCS is exactly this.
    spec = json.dumps(envelope, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert spec == vector["body"]
    assert "稳健理财" in vector["body"]  # UTF-8, not \u escapes


def test_signatures_recomputed_from_the_spec(vector: dict[str, Any]) -> None:
    headers = vector["headers"]
    signed = str(vector["timestamp"]).encode() + b"." + vector["body"].encode("utf-8")
    assert signed == vector["signed_bytes"].encode("utf-8")
    mac = hmac.new(vector["secret"].encode(), signed, hashlib.sha256).hexdigest()
    assert mac == vector["hmac_sha256"]
    assert headers["Vteller-Signature"] == f"v1={mac}"
    seed = bytes.fromhex(vector["signing_seed_hex"])
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert key.sign(signed).hex() == vector["ed25519_signature"]
    key.public_key().verify(bytes.fromhex(headers["Vteller-Ed25519-Signature"]), signed)
    assert public_key_id(vector["public_key_pem"].encode()) == headers["Vteller-Key-Id"]
    assert headers["Vteller-Timestamp"] == str(vector["timestamp"])
    assert headers["Idempotency-Key"] == vector["envelope"]["transaction_id"]
    assert headers["Vteller-Delivery-Id"] == vector["envelope"]["delivery_id"]


def test_the_document_quotes_the_vector(vector: dict[str, Any]) -> None:
    text = DOC.read_text("utf-8")
    for name in ("Vteller-Timestamp", "Vteller-Key-Id", "Vteller-Signature"):
        assert f"| `{name}` | `{vector['headers'][name]}` |" in text
    assert f"| `Vteller-Ed25519-Signature` | `{vector['ed25519_signature']}` |" in text
    assert f"`{vector['secret']}`" in text
    (begins, ends) = re.findall(r"The body begins `(.+?)` and ends `(.+?)`\.", text)[0]
    assert vector["body"].startswith(begins) and vector["body"].endswith(ends)


def test_documented_check_accepts_the_vector(vector: dict[str, Any], doc: dict[str, Any]) -> None:
    keys = {vector["key_id"]: vector["public_key_pem"].encode()}
    body = vector["body"].encode("utf-8")
    for now in (vector["timestamp"], vector["timestamp"] + 300, vector["timestamp"] - 300):
        envelope = doc["verify_webhook"](
            vector["secret"], _headers(vector), body, public_keys=keys, now=now
        )
        assert envelope == vector["envelope"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("body", "Vteller-Signature does not match"),
        ("secret", "Vteller-Signature does not match"),
        ("stale", "more than 5 minutes off"),
        ("future", "more than 5 minutes off"),
        ("timestamp", "Vteller-Signature does not match"),
        ("no_timestamp", "malformed Vteller-Timestamp"),
        ("odd_digits", "malformed Vteller-Timestamp"),
        ("ed25519", "Vteller-Ed25519-Signature does not match"),
        ("ed25519_garbage", "Vteller-Ed25519-Signature does not match"),
        ("key_id", "names no known vteller key"),
        ("idempotency", "Idempotency-Key differs"),
    ],
)
def test_documented_check_refuses(
    vector: dict[str, Any], doc: dict[str, Any], change: str, why: str
) -> None:
    secret = vector["secret"]
    body = vector["body"].encode("utf-8")
    now = vector["timestamp"]
    headers = _headers(vector)
    stamp = str(vector["timestamp"])
    if change == "body":
        body = body.replace(b"5000000", b"9000000")
    elif change == "secret":
        secret += "x"
    elif change == "stale":
        now += 301
    elif change == "future":
        now -= 301
    elif change == "timestamp":
        headers = _headers(vector, Vteller_Timestamp=str(vector["timestamp"] + 1))
    elif change == "no_timestamp":
        headers = _headers(vector, Vteller_Timestamp="")
    elif change == "odd_digits":
        headers = _headers(vector, Vteller_Timestamp="١" + stamp[1:])  # an Arabic-Indic digit
    elif change == "ed25519":
        flipped = "0" if vector["ed25519_signature"][0] != "0" else "1"
        headers = _headers(
            vector, Vteller_Ed25519_Signature=flipped + vector["ed25519_signature"][1:]
        )
    elif change == "ed25519_garbage":
        headers = _headers(vector, Vteller_Ed25519_Signature="not hex")
    elif change == "key_id":
        headers = _headers(vector, Vteller_Key_Id="0" * 16)
    elif change == "idempotency":
        headers = _headers(vector, Idempotency_Key="t_another")
    keys = {vector["key_id"]: vector["public_key_pem"].encode()}
    with pytest.raises(doc["WebhookRejected"], match=why):
        doc["verify_webhook"](secret, headers, body, public_keys=keys, now=now)


def test_hmac_alone_is_enough_without_public_keys(
    vector: dict[str, Any], doc: dict[str, Any]
) -> None:
    headers = _headers(vector, Vteller_Ed25519_Signature="")
    envelope = doc["verify_webhook"](
        vector["secret"], headers, vector["body"].encode(), now=vector["timestamp"]
    )
    assert envelope["transaction_id"] == vector["envelope"]["transaction_id"]


def _answer(status: int, **headers: str) -> Any:
    return classify(status, CIMultiDictProxy(CIMultiDict(headers)), b"core says no")


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    outcome = _answer(status)
    assert outcome.verdict is Verdict.DELIVERED and outcome.error is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 499])
def test_4xx_is_refused_for_good(status: int) -> None:
    outcome = _answer(status)
    assert outcome.verdict is Verdict.REFUSED
    assert f"HTTP {status}: core says no" in (outcome.error or "")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(status: int) -> None:
    outcome = _answer(status, Location="https://elsewhere.example/hook")
    assert outcome.verdict is Verdict.REFUSED
    assert "https://elsewhere.example/hook" in (outcome.error or "")
    assert "not followed" in (outcome.error or "")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retried(status: int) -> None:
    assert _answer(status).verdict is Verdict.RETRY


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _answer(503, **{"Retry-After": "120"}).retry_after == 120.0
    assert _answer(429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after == 0.0
    assert _answer(503, **{"Retry-After": "soon"}).retry_after is None
    assert _answer(503).retry_after is None


def test_backoff_is_exponential_and_capped() -> None:
    config = WebhookConfig(
        backoff_initial_seconds=10, backoff_multiplier=2, backoff_max_seconds=3600
    )
    delays = [config.backoff(n) for n in range(1, 12)]
    assert delays[:9] == [10, 20, 40, 80, 160, 320, 640, 1280, 2560]
    assert delays[9:] == [3600, 3600]
    assert WebhookConfig(backoff_multiplier=10, max_attempts=1000).backoff(1000) == 3600


@pytest.mark.parametrize(
    "url",
    [
        "ftp://core.bank.example/hook",
        "file:///etc/passwd",
        "core.bank.example/hook",
        "https://user:pw@core.bank.example/hook",
        "https:///hook",
        "https://core.bank.example/hook#x",
    ],
)
def test_only_http_and_https_urls_with_a_host(url: str) -> None:
    with pytest.raises(ValidationError, match="webhook url"):
        WebhookConfig(url=url)


def test_accepted_urls_and_disabled() -> None:
    assert WebhookConfig(url=" https://core.bank.example:8443/hook?x=1 ").enabled
    assert WebhookConfig(url="http://127.0.0.1:9000/hook").enabled
    assert not WebhookConfig().enabled
    with pytest.raises(ValidationError, match="backoff_max_seconds"):
        WebhookConfig(backoff_initial_seconds=100, backoff_max_seconds=10)
