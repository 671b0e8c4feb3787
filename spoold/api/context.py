"""What every request needs, built once from the config (and by tests without one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from spoold.api.area import ApiArea
from spoold.api.batches.create import Settings
from spoold.api.keys import ApiKey, KeyRing


@dataclass
class ApiContext:
    area: ApiArea
    keys: KeyRing
    settings: Settings
    max_file_bytes: int
    node: str
    handlers: list[Any] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    """openai.types.Model objects: the profiles, then their adapters."""


def context(request: Request) -> ApiContext:
    return request.app.state.spoold


def api_key(request: Request) -> ApiKey:
    """The FastAPI dependency of every /v1 route: the caller's key, or a 401."""
    return context(request).keys.authenticate(request.headers.get("authorization"))
