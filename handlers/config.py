"""Handler settings as written under `handlers:` in spoold.yaml (placeholder, see issue 5)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

HandlerEvent = Literal["completed", "failed", "cancelled"]


class HandlerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    on: list[HandlerEvent] = ["completed"]
