"""Queue settings (nested in server.settings.Settings as `queue`; docs/workflow-queue.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Business = Literal["wealth", "insurance", "general"]


class QueueConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Selling wealth or insurance products needs a qualification, so a teller serves them only
    # once a supervisor (or admin) grants it; card and account services are open by default.
    default_skills: tuple[Business, ...] = ("general",)
    poll_seconds: float = Field(
        default=3.0, gt=0, le=30, description="how often the waiting page asks"
    )
    abandon_after_seconds: float = Field(
        default=45.0, gt=0, le=3600, description="a ticket whose page stopped asking is removed"
    )
    max_wait_minutes: int = Field(
        default=120, ge=1, le=24 * 60, description="then the ticket expires"
    )
    tickets_per_address: int = Field(
        default=10, ge=1, description="new tickets per address per window"
    )
    requests_per_address: int = Field(
        default=240, ge=1, description="public queue requests per address per window"
    )
    address_window_seconds: float = Field(default=600.0, gt=0)
    # The waiting estimate: median handling time of recent sessions (docs/workflow-queue.md).
    handling_sample: int = Field(default=20, ge=1, le=500)
    handling_min_samples: int = Field(default=3, ge=1)
    default_handling_seconds: int = Field(default=300, ge=30, le=7200)
