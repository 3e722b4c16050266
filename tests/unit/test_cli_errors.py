"""Operator commands fail with what to fix, never a traceback."""

from __future__ import annotations

import errno
import io
import os
import pwd
import socket
from pathlib import Path
from typing import Any

import pytest

from server.cli import main as vteller
from server.commands import sqlite_in_data_dir
from server.settings import Settings


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


@pytest.fixture
def owner(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The data directory's owner (the user running the tests) as the commands see it when run
    by someone else: their check is told another effective uid, so no chown (nor root) is
    needed."""
    me = os.geteuid()
    monkeypatch.setattr("server.commands.os.geteuid", lambda: me + 1)
    return pwd.getpwuid(me).pw_name


def _data_dir_files(clean_env: Path) -> list[Path]:
    data = clean_env / "data"
    return [path.relative_to(data) for path in sorted(data.rglob("*"))]


CREATE_USER = ["admin", "create-user", "--username", "wang", "--role", "teller", "--password-stdin"]


@pytest.mark.parametrize(
    "command",
    [
        CREATE_USER,
        ["admin", "list-users"],
        ["admin", "disable-user", "--username", "wang", "--reason", "left the bank"],
        ["admin", "enable-user", "--username", "wang"],
        ["admin", "unlock-user", "--username", "wang"],
        ["admin", "reset-password", "--username", "wang", "--password-stdin"],
        ["db", "upgrade"],
        ["audit", "verify"],
        ["audit", "checkpoint"],
        ["audit", "tail"],
        ["webhooks", "secret"],
        ["webhooks", "list"],
        ["webhooks", "retry", "wh_1"],
        ["compliance", "analyze", "recording.mkv"],
    ],
)
def test_a_command_that_writes_into_the_data_dir_runs_only_as_its_owner(
    clean_env: Path,
    owner: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    # Run as root on the server's directory, they left files there that the server could not use
    # (here the database is SQLite in the data directory, as by default).
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert vteller(command) == 2
    err = capsys.readouterr().err
    assert f"error: {clean_env / 'data'} belongs to {owner}" in err
    assert f"`sudo -E -u {owner} vteller {' '.join(command[:2])} ...`" in err
    assert _data_dir_files(clean_env) == [Path("keys"), Path("keys/public")]


def test_commands_that_write_nothing_into_the_data_dir_run_as_anyone(
    clean_env: Path,
    owner: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # With the database elsewhere (PostgreSQL, usually), an auditor's account verifies the log.
    monkeypatch.setenv("VTELLER_DATABASE_URL", f"sqlite+aiosqlite:///{clean_env}/copy/vteller.db")
    monkeypatch.setenv("VTELLER_WEBHOOK__SECRET", "configured-not-generated")
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    for command, code in [
        (["db", "upgrade"], 0),
        (CREATE_USER, 0),
        (["audit", "verify"], 0),
        (["audit", "tail"], 0),
        (["webhooks", "secret"], 0),
        (["webhooks", "list"], 0),
        (["webhooks", "retry", "wh_1"], 1),
    ]:
        assert vteller(command) == code, command
        assert "belongs to" not in capsys.readouterr().err
    # Signing still writes audit-signed.json there, whatever the database.
    assert vteller(["audit", "checkpoint"]) == 2
    assert f"belongs to {owner}" in capsys.readouterr().err
    assert _data_dir_files(clean_env) == [Path("keys"), Path("keys/public")]


@pytest.mark.parametrize(
    ("database_url", "in_data_dir"),
    [
        ("", True),  # the default: {data_dir}/vteller.db
        ("sqlite+aiosqlite:///var/db/vteller.db", True),  # relative, like the data directory
        ("sqlite+aiosqlite:///elsewhere/vteller.db", False),
        ("sqlite+aiosqlite:///:memory:", False),
        ("postgresql+asyncpg://vteller@db.bank.example/vteller", False),
        ("not a url", False),  # left to the command, which names the setting
    ],
)
def test_only_an_sqlite_database_under_the_data_dir_lands_there(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, in_data_dir: bool
) -> None:
    monkeypatch.chdir(clean_env)
    settings = Settings.model_validate({"data_dir": "var", "database_url": database_url})
    assert sqlite_in_data_dir(settings) is in_data_dir


def test_the_owner_without_a_name_is_quoted_for_the_shell(
    clean_env: Path,
    owner: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Pasted unquoted, `sudo -u #1001 ...` is `sudo -u` and a comment.
    uid = (clean_env / "data").stat().st_uid
    real = pwd.getpwuid

    def no_name(looked_up: int) -> pwd.struct_passwd:
        if looked_up == uid:
            raise KeyError(looked_up)
        return real(looked_up)

    monkeypatch.setattr("server.commands.pwd.getpwuid", no_name)
    assert vteller(["audit", "checkpoint"]) == 2
    assert f"`sudo -E -u '#{uid}' vteller audit checkpoint ...`" in capsys.readouterr().err


def test_a_data_dir_this_account_cannot_look_into_is_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Faked: root (as CI runs) may look into any directory.
    data = clean_env / "data"
    real = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if isinstance(path, str | os.PathLike) and Path(path) == data:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr("server.commands.os.stat", stat)
    assert vteller(["audit", "checkpoint"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot tell who owns {data} (Permission denied)" in err
    assert "VTELLER_DATA_DIR" in err and "Traceback" not in err


def test_serve_as_another_user_than_the_owner_warns(
    clean_env: Path, owner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not refused (a container's root can use what it writes), but a later switch to the owner
    # would find files it cannot read. The port is taken so that the server stops right there.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = vteller(["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"warning: {clean_env / 'data'} belongs to {owner}" in err
    assert f"`sudo -E -u {owner} vteller serve ...`" in err
    assert "error: cannot listen on 127.0.0.1" in err
