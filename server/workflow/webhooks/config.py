"""Settings of the delivery of approved transactions to the core bank (docs/webhooks.md)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class WebhookConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        default="",
        description="where approved transactions are POSTed (http or https); empty: delivery "
        "disabled, deliveries wait and their status says so",
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="per attempt, connect to end"
    )
    max_attempts: int = Field(
        default=12,
        ge=1,
        le=1000,
        description="attempts before a delivery fails (and an operator retries)",
    )
    backoff_initial_seconds: float = Field(default=10.0, gt=0, le=86400)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)
    backoff_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    poll_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="how often each worker looks for deliveries queued or retried elsewhere",
    )
    secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC key shared with the core bank; empty: generated into "
        "{data_dir}/keys/webhook-secret",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM bundle of the CAs the receiver's certificate is checked against",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            # Credentials in the URL would end up in logs; the signature authenticates us.
            raise ValueError("webhook url must not contain a user name or password")
        if parts.fragment:
            raise ValueError("webhook url must not contain a #fragment")
        return value

    @model_validator(mode="after")
    def _backoff_bounds(self) -> WebhookConfig:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be at least backoff_initial_seconds")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failed attempt (1-based), before jitter."""
        try:
            delay = self.backoff_initial_seconds * self.backoff_multiplier ** max(attempt - 1, 0)
        except OverflowError:  # thousands of attempts: long past the cap
            return self.backoff_max_seconds
        return min(delay, self.backoff_max_seconds)
