"""StoreSettings: endpoint parsing, and where the values come from (recorder/store/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from recorder.store.config import StoreSettings

S3_ENV = {
    "VTELLER_S3_ENDPOINT": "http://127.0.0.1:9100",
    "VTELLER_S3_ACCESS_KEY": "vteller-abc",
    "VTELLER_S3_SECRET_KEY": "s3cr3t",
}


def test_endpoint_url_becomes_host_port_and_secure_flag() -> None:
    plain = StoreSettings.from_environment({}, endpoint="http://127.0.0.1:9000/")
    assert (plain.endpoint, plain.host_port, plain.secure) == (
        "http://127.0.0.1:9000",
        "127.0.0.1:9000",
        False,
    )
    tls = StoreSettings.from_environment({}, endpoint="https://s3.bank.example")
    assert (tls.host_port, tls.secure) == ("s3.bank.example:443", True)
    ipv6 = StoreSettings.from_environment({}, endpoint="http://[::1]:9000")
    assert ipv6.host_port == "[::1]:9000"


@pytest.mark.parametrize(
    "endpoint",
    ["127.0.0.1:9000", "ftp://host", "http://host:abc", "http://host/bucket", "http://u:p@host"],
)
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValidationError, match=r"endpoint|port"):
        StoreSettings.from_environment({}, endpoint=endpoint)


def test_bucket_name_is_checked() -> None:
    assert StoreSettings.from_environment({}).bucket == "vteller-archive"
    for bad in ("Vteller", "ab", "a_b", "-ab", "a..b"):
        with pytest.raises(ValidationError, match="bucket"):
            StoreSettings.from_environment({}, bucket=bad)


def test_minio_sh_variables_are_read() -> None:
    settings = StoreSettings.from_environment(S3_ENV)
    assert settings.endpoint == "http://127.0.0.1:9100"
    assert settings.access_key == "vteller-abc"
    assert settings.secret_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(settings)


def test_nested_variables_win_over_the_plain_ones() -> None:
    environ = S3_ENV | {
        "VTELLER_STORE__ENDPOINT": "https://s3.bank.example",
        "VTELLER_STORE__BUCKET": "bank-archive",
        "VTELLER_STORE__RETRY_BACKOFF_MAX_SECONDS": "120",
        "VTELLER_STORE__RETENTION": '{"unknown_end_years": 15}',
    }
    settings = StoreSettings.from_environment(environ)
    assert settings.endpoint == "https://s3.bank.example"
    assert settings.access_key == "vteller-abc"  # not given in the nested form: the plain one
    assert settings.bucket == "bank-archive"
    assert settings.retry_backoff_max_seconds == 120
    assert settings.retention.unknown_end_years == 15
    assert settings.retention.wealth_months_after_end == 6


def test_plain_variables_fill_a_nested_model_through_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What happens when the server's Settings nests StoreSettings: it validates a dict of the
    # VTELLER_STORE__* values, and the validator adds VTELLER_S3_* from the process environment.
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    settings = StoreSettings.model_validate({"bucket": "bank-archive"})
    assert settings.endpoint == "http://127.0.0.1:9100"
    assert settings.secret_key.get_secret_value() == "s3cr3t"
    explicit = StoreSettings(endpoint="http://10.0.0.5:9000")
    assert explicit.endpoint == "http://10.0.0.5:9000"
    assert explicit.access_key == "vteller-abc"


def test_spool_directory_defaults_under_the_data_dir() -> None:
    assert StoreSettings.from_environment({}).spool_path(Path("var")) == Path("var/archive-spool")
    custom = StoreSettings.from_environment({}, spool_dir=Path("/srv/spool"))
    assert custom.spool_path(Path("var")) == Path("/srv/spool")


def test_backoff_bounds_are_consistent() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        StoreSettings.from_environment(
            {}, retry_backoff_min_seconds=10, retry_backoff_max_seconds=5
        )
