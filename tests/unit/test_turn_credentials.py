"""Short-lived TURN credentials per participant (server/sfu/turn.py; docs/deployment.md, TURN)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from server.settings import Settings
from server.sfu.turn import BrowserIce, TurnConfig, turn_credential, turn_secret

# docs/deployment.md's test vector, computed independently with
# printf '%s' "$username" | openssl dgst -binary -sha1 -hmac "$secret" | base64
VECTOR_SECRET = "vteller-test-vector-secret"
VECTOR_USERNAME = "1700000000:p_0123456789abcdef01234567"
VECTOR_CREDENTIAL = "2lUd0O8Mh0IZlLdCUHmg6vTecvw="

STUN = {"urls": ["stun:stun.bank.example:3478"]}
TURN = "turn:turn.bank.example:3478?transport=udp"


def test_the_credential_is_coturns_rest_api_hmac() -> None:
    assert turn_credential(VECTOR_SECRET, VECTOR_USERNAME) == VECTOR_CREDENTIAL


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


def test_the_secret_is_configured_or_generated_once_owner_only(tmp_path: Path) -> None:
    assert turn_secret(TurnConfig(secret=SecretStr("configured")), tmp_path) == "configured"
    generated = turn_secret(TurnConfig(), tmp_path)
    path = tmp_path / "keys" / "turn-secret"
    assert path.read_text().strip() == generated and len(generated) >= 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert turn_secret(TurnConfig(), tmp_path) == generated
