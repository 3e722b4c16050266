"""The keys of every machine sharing a database are compared by check value at start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import select

from recorder.seal.keyring import LocalKeyring, key_check_value
from server.crypto.deployment_keys import (
    DeploymentKeysDiffer,
    check_deployment_keys,
    local_check_values,
)
from server.db.models import DeploymentKey
from tests.support.database import migrated_database

KEYS = Path("/srv/vteller/var/keys")  # only named in messages


def test_check_values_are_equal_for_equal_keys_and_reveal_nothing() -> None:
    key = bytes(range(32))
    assert key_check_value(key) == key_check_value(bytes(key))
    assert key_check_value(key) != key_check_value(bytes(32))
    assert len(key_check_value(key)) == 16 and key.hex()[:16] not in key_check_value(key)


def _key_files(keys_dir: Path) -> LocalKeyring:
    """A data directory's key files, as a first start makes them; returns the queue keyring."""
    for name in ("keyring.json", "identity-keyring.json", "signature-keyring.json"):
        LocalKeyring.open(keys_dir / name, create=True)
    (keys_dir / "id-index-key.hex").write_text("ab" * 32 + "\n")
    return LocalKeyring.open(keys_dir / "queue-keyring.json", create=True)


def test_a_data_directorys_keys_are_read_from_its_files(tmp_path: Path) -> None:
    queue = _key_files(tmp_path)
    values = local_check_values(tmp_path, "signer-1", "webhook secret")
    assert (
        values[("queue-keyring.json", queue.current_key_id)]
        == queue.check_values()[queue.current_key_id]
    )
    assert values[("signing-key.pem", "")] == "signer-1"
    assert values[("webhook-secret", "")] == key_check_value(b"webhook secret")
    assert values[("id-index-key.hex", "")] == key_check_value(bytes.fromhex("ab" * 32))
    assert len(values) == 7


async def test_the_first_machine_records_its_keys_and_equal_keys_pass(tmp_path: Path) -> None:
    mine = {("keyring.json", "kek-1"): "aa", ("signing-key.pem", ""): "signer-1"}
    async with migrated_database(tmp_path / "db.sqlite") as db:
        await check_deployment_keys(db, KEYS, mine)
        await check_deployment_keys(db, KEYS, dict(mine))  # a second machine, keys copied
        async with db() as session:
            rows = list(await session.scalars(select(DeploymentKey)))
    assert {(r.file, r.key_id, r.check_value) for r in rows} == {
        ("keyring.json", "kek-1", "aa"),
        ("signing-key.pem", "", "signer-1"),
    }
    assert {r.hostname for r in rows} == {socket.gethostname()}


@pytest.mark.parametrize(
    ("theirs", "problem"),
    [
        ({("keyring.json", "kek-1"): "bb"}, "keyring.json key kek-1 is another key here than on"),
        ({("signing-key.pem", ""): "signer-2"}, "signing-key.pem is another key here than on"),
        ({}, "keyring.json key kek-1 is missing here"),
    ],
)
async def test_a_machine_with_other_keys_is_refused_and_told_what_to_copy(
    tmp_path: Path, theirs: dict[tuple[str, str], str], problem: str
) -> None:
    first = {("keyring.json", "kek-1"): "aa", ("signing-key.pem", ""): "signer-1"}
    # A machine that generated keys of its own: it holds different ones (or none of kek-1).
    second = {("signing-key.pem", ""): "signer-1"} | theirs
    async with migrated_database(tmp_path / "db.sqlite") as db:
        await check_deployment_keys(db, KEYS, first)
        with pytest.raises(DeploymentKeysDiffer) as refused:
            await check_deployment_keys(db, KEYS, second)
        async with db() as session:
            rows = list(await session.scalars(select(DeploymentKey)))
    message = str(refused.value)
    assert problem in message
    assert f"copy the keys directory from {socket.gethostname()}" in message
    assert str(KEYS) in message
    assert len(rows) == 2  # nothing of the refused machine was recorded


async def test_a_rotated_keyring_adds_its_new_key(tmp_path: Path) -> None:
    before = {("keyring.json", "kek-1"): "aa"}
    after = before | {("keyring.json", "kek-2"): "cc"}
    async with migrated_database(tmp_path / "db.sqlite") as db:
        await check_deployment_keys(db, KEYS, before)
        await check_deployment_keys(db, KEYS, after)
        with pytest.raises(DeploymentKeysDiffer, match="kek-2 is missing here"):
            await check_deployment_keys(db, KEYS, before)  # a machine not given the new key


async def test_the_turn_secret_is_compared_only_by_machines_that_relay(tmp_path: Path) -> None:
    keys = {("signing-key.pem", ""): "signer-1"}
    turn = key_check_value(b"turn secret")
    async with migrated_database(tmp_path / "db.sqlite") as db:
        await check_deployment_keys(db, KEYS, keys | {("turn-secret", ""): turn})
        # A machine without TURN configured holds no TURN secret: nothing to compare.
        await check_deployment_keys(db, KEYS, dict(keys))
        await check_deployment_keys(db, KEYS, keys | {("turn-secret", ""): turn})
        # One that relays with another secret hands out credentials coturn refuses.
        with pytest.raises(DeploymentKeysDiffer, match="turn-secret is another key here"):
            await check_deployment_keys(
                db, KEYS, keys | {("turn-secret", ""): key_check_value(b"another")}
            )
    _key_files(tmp_path)
    values = local_check_values(tmp_path, "signer-1", "webhook secret", "turn secret")
    assert values[("turn-secret", "")] == turn
