"""Short-lived TURN credentials per participant (server/sfu/turn.py; docs/deployment.md, TURN)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from server.settings import Settings
from server.sfu.turn import (
    BrowserIce,
    TurnConfig,
    TurnServer,
    turn_credential,
    turn_secret,
    turn_server,
)

# docs/deployment.md's test vector, computed independently with
# printf '%s' "$username" | openssl dgst -binary -sha1 -hmac "$secret" | base64
VECTOR_SECRET = "vteller-test-vector-secret"
VECTOR_USERNAME = "1700000000:p_0123456789abcdef01234567"
VECTOR_CREDENTIAL = "2lUd0O8Mh0IZlLdCUHmg6vTecvw="

STUN = {"urls": ["stun:stun.bank.example:3478"]}
TURN = "turn:turn.bank.example:3478?transport=udp"


def test_the_credential_is_coturns_rest_api_hmac() -> None:
    assert turn_credential(VECTOR_SECRET, VECTOR_USERNAME) == VECTOR_CREDENTIAL


def test_the_documented_vector_holds_and_is_this_one() -> None:
    """docs/deployment.md's vector row and its openssl command, read from the document."""
    text = (Path(__file__).parents[2] / "docs" / "deployment.md").read_text("utf-8")
    doc = text[text.index("Test vector (`tests/unit/test_turn_credentials.py`") :]
    doc = doc[: doc.index("\n\n**")]  # up to the next paragraph after the vector's table
    (command,) = re.findall(r"independently\s+with `(printf .*? \| base64)`", doc)
    (row,) = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \| `([^`]+)` \|$", doc, re.MULTILINE)
    secret, username, credential = row
    assert (secret, username, credential) == (VECTOR_SECRET, VECTOR_USERNAME, VECTOR_CREDENTIAL)
    assert turn_credential(secret, username) == credential
    openssl = subprocess.run(
        ["bash", "-c", command],
        env=os.environ | {"username": username, "secret": secret},
        capture_output=True,
        text=True,
        check=True,
    )
    assert openssl.stdout.strip() == credential


def test_each_participant_gets_its_own_expiring_credential() -> None:
    ice = BrowserIce([STUN], TurnConfig(urls=[TURN], credential_minutes=60), VECTOR_SECRET)
    stun, relay = ice.servers("p_0123456789abcdef01234567", 1_699_996_400.7)
    assert stun == STUN
    assert relay == {
        "urls": [TURN],
        "username": VECTOR_USERNAME,  # 1_699_996_400 + 60 minutes
        "credential": VECTOR_CREDENTIAL,
    }
    other = ice.servers("p_other", 1_699_996_400)[-1]
    assert other["username"] == "1700000000:p_other"
    assert other["credential"] != VECTOR_CREDENTIAL
    assert ice.transport_policy == "all"


def test_relay_only_and_no_turn() -> None:
    relayed = BrowserIce([], TurnConfig(urls=[TURN], relay_only=True), VECTOR_SECRET)
    assert relayed.transport_policy == "relay"
    plain = BrowserIce([STUN], TurnConfig(relay_only=True), None)
    assert plain.servers("p_1", 0) == [STUN]
    assert plain.transport_policy == "all"  # relay-only without a relay would connect nobody
    with pytest.raises(ValueError, match="without a secret"):
        BrowserIce([], TurnConfig(urls=[TURN]), None)


def test_turn_urls_are_turn_uris() -> None:
    with pytest.raises(ValidationError, match="STUN servers go into ice_servers"):
        TurnConfig(urls=["stun:stun.bank.example:3478"])
    settings = Settings.model_validate({"turn": {"urls": [TURN], "relay_only": True}})
    assert settings.turn.enabled and settings.turn.relay_only


def test_turns_urls_are_tls_over_tcp() -> None:
    assert turn_server("turns:turn.bank.example:443?transport=tcp") == TurnServer(
        "turn.bank.example", 443, "tcp", tls=True
    )
    assert turn_server("turns:[2001:db8::7]") == TurnServer("2001:db8::7", 5349, "tcp", tls=True)
    assert turn_server("turn:10.0.8.5?transport=tcp") == TurnServer("10.0.8.5", 3478, "tcp", False)
    # Browsers refuse these (Chrome throws from RTCPeerConnection): refused at settings load.
    for url, fix in (
        ("turns:turn.bank.example:443?transport=udp", "write ?transport=tcp"),
        ("turn:turn.bank.example?transport=tls", "?transport=udp or ?transport=tcp"),
        ("turn:turn.bank.example:3478:1", "turn:HOST:PORT"),
        ("turns::443", "turn:HOST:PORT"),
    ):
        with pytest.raises(ValidationError, match=re.escape(fix)):
            Settings.model_validate({"turn": {"urls": [TURN, url]}})


def test_the_secret_is_configured_or_generated_once_owner_only(tmp_path: Path) -> None:
    assert turn_secret(TurnConfig(secret=SecretStr("configured")), tmp_path) == "configured"
    generated = turn_secret(TurnConfig(), tmp_path)
    path = tmp_path / "keys" / "turn-secret"
    assert path.read_text().strip() == generated and len(generated) >= 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert turn_secret(TurnConfig(), tmp_path) == generated
