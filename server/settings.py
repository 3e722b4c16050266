"""Typed settings: environment variables (VTELLER_*) over an optional TOML file over defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recorder.store.config import StoreSettings
from server.auditor.config import AuditorConfig
from server.identity.config import IdentityConfig
from server.sfu.turn import TurnConfig
from server.workflow.queue.config import QueueConfig
from server.workflow.transactions.config import WorkflowConfig
from server.workflow.webhooks.config import WebhookConfig


class IceServer(BaseModel):
    """One STUN/TURN server, exactly as the browser's RTCIceServer takes it."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VTELLER_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str = Field(
        "",
        description="Origin the browsers use (https://video.bank.example); "
        "empty means http://{host}:{port}",
    )
    advertise_url: str = Field(
        "",
        description="URL browsers reach this worker's signaling at; '{port}' is replaced by "
        "the worker's port; empty means http://{host}:{port}",
    )
    worker_heartbeat_seconds: float = Field(2.0, gt=0, le=60)
    worker_dead_after_heartbeats: int = Field(3, ge=2)
    worker_max_sessions: int = Field(
        10,
        ge=0,
        description="open sessions (invited, in a call or interrupted) a worker may be given; "
        "past what a core carries every call on it loses frames at once (docs/benchmarks.md, "
        "docs/deployment.md); 0 means no limit",
    )
    data_dir: Path = Path("var")
    database_url: str = Field(
        "", description="SQLAlchemy async URL; empty means SQLite in {data_dir}/vteller.db"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    cookie_secure: bool = Field(False, description="Set when served over TLS")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="the TLS proxies and load balancers in front of vteller (addresses or "
        "networks); for their requests the client's address comes from X-Forwarded-For",
    )
    staff_session_hours: float = Field(10.0, gt=0, le=24 * 7)
    invitation_ttl_minutes: int = Field(30, ge=1, le=1440)
    login_max_failures_per_user: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)
    login_window_seconds: int = Field(900, ge=1)

    metrics_token: str = Field(
        "", description="bearer token for /metrics; empty: generated into {data_dir}/metrics.token"
    )
    ice_servers: list[IceServer] = Field(default_factory=list)
    turn: TurnConfig = Field(
        default_factory=TurnConfig,
        description="TURN relay for browsers without a direct path to the SFU, with short-lived "
        "credentials per participant (docs/deployment.md, TURN)",
    )
    ice_host_addresses: list[str] = Field(
        default_factory=list,
        description="Offer the SFU's ICE host candidates only on these local addresses; empty "
        "means every interface",
    )
    ice_peer_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Accept remote ICE candidates and connectivity checks only from these "
        "networks; empty (production) means from anywhere: customers and TURN relays",
    )
    video_codec: Literal["VP8", "H264"] = Field(
        "VP8", description="the one video codec every participant uses (media is never transcoded)"
    )
    store: StoreSettings = Field(
        default_factory=StoreSettings,
        description="archive store (S3/MinIO) and spool; VTELLER_S3_* fill the connection",
    )
    identity: IdentityConfig = Field(
        default_factory=IdentityConfig,
        description="identity verification models (docs/identity.md)",
    )
    workflow: WorkflowConfig = Field(
        default_factory=WorkflowConfig,
        description="transactions and their approval rules (docs/workflow.md)",
    )
    webhook: WebhookConfig = Field(
        default_factory=WebhookConfig,
        description="delivery of approved transactions to the core bank (docs/webhooks.md)",
    )
    queue: QueueConfig = Field(
        default_factory=QueueConfig,
        description="public queue, teller skills and routing (docs/workflow-queue.md)",
    )
    auditor: AuditorConfig = Field(
        default_factory=AuditorConfig,
        description="auditor portal: search page size, playback memory (docs/auditor.md)",
    )
    compliance_scripts_dir: Path | None = Field(
        None,
        description="the bank's sales scripts (YAML); they override the shipped ones by id "
        "(docs/compliance.md)",
    )
    compliance_analysis: bool = Field(
        True,
        description="analyse each sealed recording against its sales script (speech "
        "recognition in a child process; docs/compliance.md)",
    )
    live_speech: bool = Field(
        True,
        description="recognise the teller's speech during the call and warn while a required "
        "phrase of the open moment is not yet heard (docs/compliance.md)",
    )
    bank_name: str = Field(
        "", max_length=64, description="the {bank_name} the sales scripts read out; empty: asked"
    )
    recording_segment_seconds: float = Field(
        2.0, gt=0, le=5, description="how much media at most is not yet sealed and spooled"
    )
    recording_keyframe_seconds: float = Field(
        10.0,
        ge=2,
        le=60,
        description="how often each recorded camera and screen is asked for a keyframe (and at "
        "every moment start): how far playback and the face analysis decode to reach a moment",
    )
    rejoin_grace_seconds: float = Field(30.0, gt=0, le=600)
    ws_max_message_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    ws_max_messages_per_second: int = Field(50, ge=1)
    ws_heartbeat_seconds: float = Field(10.0, gt=0)
    # How often a staff member's open WebSocket checks that its login still stands (logout,
    # account disabled): the connection is closed within this time.
    ws_login_check_seconds: float = Field(30.0, gt=0)

    @property
    def origin(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def worker_url(self) -> str:
        if self.advertise_url:
            return self.advertise_url.replace("{port}", str(self.port)).rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'vteller.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFromEnv(settings_cls))


class _TomlFromEnv(TomlConfigSettingsSource):
    """Reads the TOML file named by VTELLER_CONFIG, if any."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        path = os.environ.get("VTELLER_CONFIG")
        super().__init__(settings_cls, toml_file=Path(path) if path else None)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the settings, named as an operator sets them: `VTELLER_STORE__ENDPOINT`
    in the environment, or `endpoint` under `[store]` in the VTELLER_CONFIG file."""
    lines = ["error: the settings are not valid; fix these and start again:"]
    for item in error.errors():
        # Field names only: an index into a list (trusted_proxies.0) is not part of the name.
        path = [part for part in item["loc"] if isinstance(part, str)]
        variable = "VTELLER_" + "__".join(path).upper()
        where = f"[{'.'.join(path[:-1])}] {path[-1]}" if len(path) > 1 else path[0] if path else ""
        lines.append(f"  {variable} (or {where} in the VTELLER_CONFIG file): {item['msg']}")
    return "\n".join(lines)
