"""Archive store settings: the S3 endpoint, the bucket, the local spool, the retention rules.

`StoreSettings` is a plain pydantic model so that the server's `Settings` can nest it as
`settings.store` (environment `VTELLER_STORE__ENDPOINT`, `VTELLER_STORE__BUCKET`, ...; TOML table
`[store]`). The three variables that `infra/minio.sh env`, `run.sh` and `test.sh` export,
`VTELLER_S3_ENDPOINT`, `VTELLER_S3_ACCESS_KEY` and `VTELLER_S3_SECRET_KEY`, are read too, by a
validator, for any of those three fields that was not given explicitly: explicit values
(arguments, `VTELLER_STORE__*`, TOML) win over `VTELLER_S3_*`, which win over the defaults. The
validator looks at `os.environ` unless a mapping is passed in the validation context under
`"environ"` (what `from_environment(environ)` does, and what tests use to stay hermetic).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: The variables infra/minio.sh exports, and the StoreSettings field each one fills.
S3_ENVIRONMENT = {
    "VTELLER_S3_ENDPOINT": "endpoint",
    "VTELLER_S3_ACCESS_KEY": "access_key",
    "VTELLER_S3_SECRET_KEY": "secret_key",
}
#: Prefix of the nested form, as the server's Settings (env_nested_delimiter "__") reads it.
NESTED_PREFIX = "VTELLER_STORE__"

# S3 bucket naming rules (the subset every S3 implementation accepts): 3-63 characters, lower-case
# letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class RetentionRules(BaseModel):
    """How long recordings stay under COMPLIANCE retention, by product (see retention.py).

    The defaults are the regulators' minimums for dual recording (双录): bank wealth products at
    least 6 months after the product ends; insurance policies of more than one year 10 years after
    the contract ends, of one year or less 5 years; when the end is not known, a default period
    from the recording. A bank may lengthen any of them; shortening below the regulation is the
    bank's responsibility, not something this code can know.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    wealth_months_after_end: int = Field(default=6, ge=0, le=1200)
    insurance_long_years_after_end: int = Field(default=10, ge=0, le=100)
    insurance_short_years_after_end: int = Field(default=5, ge=0, le=100)
    insurance_short_max_months: int = Field(
        default=12,
        ge=1,
        le=1200,
        description="A policy whose term is at most this long is short-term",
    )
    unknown_end_years: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Retention from the recording when the product's end date is not known "
        "(and for general service sessions, which have no product)",
    )
    minimum_days: int = Field(
        default=183,
        ge=1,
        le=36500,
        description="Floor: never retain for less than this from the recording (a product that "
        "already ended must not yield a date in the past, which S3 would refuse)",
    )


class StoreSettings(BaseModel):
    """Connection to the S3-compatible archive store (MinIO, Ceph RGW, ...) and the local spool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(
        default="http://127.0.0.1:9000",
        description="S3 endpoint URL with scheme and no path: http://127.0.0.1:9000, "
        "https://s3.bank.example",
    )
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    bucket: str = "vteller-archive"
    region: str | None = Field(
        default=None, description="S3 region; empty means ask the server (GetBucketLocation)"
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle for an https endpoint with a private CA; default: system CAs",
    )
    spool_dir: Path | None = Field(
        default=None, description="Local spool for uploads; empty means {data_dir}/archive-spool"
    )
    min_free_mb: int = Field(
        default=1024,
        ge=0,
        le=10**9,
        description="A recording is refused to start while the spool's or the journals' disk "
        "has less free space than this (a two-person call spools about 0.5 GB an hour)",
    )
    retry_backoff_min_seconds: float = Field(default=1.0, gt=0, le=3600)
    retry_backoff_max_seconds: float = Field(default=60.0, gt=0, le=3600)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    retention: RetentionRules = Field(default_factory=lambda: RetentionRules())

    @model_validator(mode="before")
    @classmethod
    def _fill_from_s3_environment(cls, data: Any, info: ValidationInfo) -> Any:
        # infra/minio.sh exports VTELLER_S3_*, not VTELLER_STORE__*: without this, a server nested
        # under Settings (or built with StoreSettings()) would ignore the MinIO that run.sh and
        # test.sh started. Only fields not given explicitly are filled.
        if not isinstance(data, Mapping):
            return data
        context = info.context if isinstance(info.context, Mapping) else {}
        environ: Mapping[str, str] = context.get("environ", os.environ)
        filled = dict(data)
        for variable, field_name in S3_ENVIRONMENT.items():
            value = environ.get(variable)
            if value and field_name not in filled:
                filled[field_name] = value
        return filled

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http:// or https:// URL, got {value!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(
                f"endpoint must be scheme://host[:port] only (the bucket is separate), "
                f"got {value!r}"
            )
        _ = parts.port  # urlsplit checks the port only when asked: raises for "host:abc"
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not _BUCKET_NAME.match(value) or ".." in value:
            raise ValueError(
                f"bucket {value!r} is not a valid S3 bucket name (3-63 lower-case letters, "
                "digits, '.' and '-', starting and ending with a letter or digit)"
            )
        return value

    @field_validator("region")
    @classmethod
    def _empty_region_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.retry_backoff_min_seconds > self.retry_backoff_max_seconds:
            raise ValueError("retry_backoff_min_seconds must not exceed retry_backoff_max_seconds")
        return self

    @property
    def secure(self) -> bool:
        """True for https: the minio SDK takes host:port and a flag rather than a URL."""
        return urlsplit(self.endpoint).scheme == "https"

    @property
    def host_port(self) -> str:
        """host:port as the minio SDK wants it (the scheme's default port when none is given)."""
        parts = urlsplit(self.endpoint)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = parts.port or (443 if self.secure else 80)
        return f"{host}:{port}"

    def spool_path(self, data_dir: Path) -> Path:
        """The spool directory: `spool_dir` if set, else `{data_dir}/archive-spool`."""
        return self.spool_dir if self.spool_dir is not None else data_dir / "archive-spool"

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> StoreSettings:
        """Settings from `VTELLER_STORE__<FIELD>` and `VTELLER_S3_*` alone (no server Settings).

        For tools and tests that need the store without the whole server configuration. Nested
        retention rules come as JSON in `VTELLER_STORE__RETENTION`. `overrides` win over both.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, value in env.items():
            if key.upper().startswith(NESTED_PREFIX):
                field_name = key[len(NESTED_PREFIX) :].lower()
                if field_name == "retention":
                    values[field_name] = RetentionRules.model_validate_json(value)
                elif field_name in cls.model_fields:
                    values[field_name] = value
        values.update(overrides)
        return cls.model_validate(values, context={"environ": env})
