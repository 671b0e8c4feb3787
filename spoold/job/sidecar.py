"""NAME.yaml (SPEC section 3): per-job settings. Unknown keys are an error: typos must not pass."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from spoold.engine.sampling import sampling_field
from spoold.errors import SidecarError, describe_validation_error, load_yaml_mapping


def _stringify(value: Any) -> Any:
    """metadata is a string map; `year: 2026` in YAML should not be a user error."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = str(item)
        out[str(key)] = item
    return out


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    sampling: dict[str, Any] = {}
    chunk_size: int | None = Field(None, ge=1)
    priority: int = 0
    handlers: list[str] | None = None
    max_error_ratio: float | None = Field(None, ge=0, le=1)
    metadata: Annotated[dict[str, str], BeforeValidator(_stringify)] = {}
    shards: int | None = Field(None, ge=1, le=64)
    """Split the job so up to this many daemons work on it at once (shards.py); None: by size (shard_min_lines)."""

    @field_validator("sampling")
    @classmethod
    def _known_sampling(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The same check the engine applies to a profile's defaults: a typo is an error."""
        return sampling_field(value)


def parse_sidecar(text: str | bytes, handler_names: set[str] | None = None) -> Sidecar:
    """Parse and check a sidecar; `handler_names` are the configured handlers it may pick."""
    data = load_yaml_mapping(text, "sidecar", SidecarError)
    try:
        sidecar = Sidecar.model_validate(data)
    except ValidationError as exc:
        raise SidecarError(f"invalid sidecar: {describe_validation_error(exc)}") from None
    if handler_names is not None and sidecar.handlers:
        unknown = [h for h in sidecar.handlers if h not in handler_names]
        if unknown:
            known = ", ".join(sorted(handler_names)) or "none configured"
            raise SidecarError(f"invalid sidecar: unknown handler(s) {', '.join(unknown)} (configured: {known})")
    return sidecar
