"""Operator commands fail with what to fix, never a traceback."""

from __future__ import annotations

import io
import os
import pwd
from pathlib import Path

import pytest

from server.cli import main as vteller


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No VTELLER_* from the test run (infra/test.sh exports the local MinIO's credentials)."""
    for name in list(os.environ):
        if name.startswith("VTELLER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VTELLER_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data" / "keys" / "public").mkdir(parents=True)
    return tmp_path


def test_a_bad_setting_is_named_as_the_operator_sets_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VTELLER_PORT", "eighty")
    monkeypatch.setenv("VTELLER_STORE__ENDPOINT", "minio:9000")
    assert vteller(["verify", str(clean_env)]) == 2
    err = capsys.readouterr().err
    assert "VTELLER_PORT (or port in the VTELLER_CONFIG file)" in err
    assert "VTELLER_STORE__ENDPOINT (or [store] endpoint in the VTELLER_CONFIG file)" in err
    assert "Traceback" not in err


def test_verify_reads_the_store_from_the_config_file_and_says_when_it_is_down(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = clean_env / "vteller.toml"
    # Credentials only in the file: the command must use them, as the server does.
    config.write_text(
        '[store]\nendpoint = "http://127.0.0.1:1"\naccess_key = "operator"\n'
        'secret_key = "not-a-real-secret"\n'
    )
    monkeypatch.setenv("VTELLER_CONFIG", str(config))
    assert vteller(["verify", "s3://vteller-archive/archives/a1"]) == 2
    err = capsys.readouterr().err
    assert "error: archive store unreachable" in err
    assert "no S3 credentials" not in err


def test_create_user_applies_the_account_rules_before_touching_the_database(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    code = vteller(
        ["admin", "create-user", "--username", "wang teller", "--role", "teller",
         "--display-name", "王" * 65, "--password-stdin"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "error: --username: String should match pattern" in err
    assert "error: --display-name: String should have at most 64 characters" in err
    assert not (clean_env / "data" / "vteller.db").exists()


def test_create_user_says_when_the_database_cannot_be_used(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VTELLER_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/vteller")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    code = vteller(
        ["admin", "create-user", "--username", "wang", "--role", "teller", "--password-stdin"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "error: the database cannot be used" in err and "VTELLER_DATABASE_URL" in err


@pytest.mark.parametrize(
    "command",
    [
        ["admin", "create-user", "--username", "wang", "--role", "teller", "--password-stdin"],
        ["db", "upgrade"],
        ["audit", "tail"],
        ["webhooks", "secret"],
        ["webhooks", "retry", "wh_1"],
        ["compliance", "analyze", "recording.mkv"],
    ],
)
def test_a_command_that_writes_into_the_data_dir_runs_only_as_its_owner(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    # Run as root on the server's directory, they left files there that the server could not use.
    data = clean_env / "data"
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert vteller(command) == 2
    err = capsys.readouterr().err
    assert f"error: {data} belongs to nobody" in err
    assert f"`sudo -E -u nobody vteller {' '.join(command[:2])} ...`" in err
    assert [path.relative_to(data) for path in sorted(data.rglob("*"))] == [
        Path("keys"),
        Path("keys/public"),
    ]
