"""Auditor portal settings (nested in server.settings.Settings as `auditor`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuditorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    page_size: int = Field(default=20, ge=1, le=100, description="search results per page")
    playback_cache_mb: int = Field(
        default=512,
        ge=16,
        le=16384,
        description="decrypted recordings prepared for playback are kept in memory (never on "
        "disk) up to this size, the least recently used going first; a larger recording is not "
        "played in the browser (export it instead)",
    )
    playback_ttl_minutes: int = Field(
        default=60, ge=1, le=24 * 60, description="how long a started playback can be streamed"
    )
    index_wait_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="how long a sealed archive is waited for in the store to index its product",
    )
