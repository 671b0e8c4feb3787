"""Model profiles: models/*.yaml shipped with spoold plus `engine.model_dirs`.

A sidecar names a profile, or a local model directory (an absolute path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from spoold.errors import ConfigError, UnknownModel, describe_validation_error

BUILTIN_DIR = Path(__file__).resolve().parent / "models"


class ModelProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    """Hugging Face id, a local path, or `builtin:tiny-random` (built by spoold itself)."""
    description: str = ""
    engine_args: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    gpu_memory_gb: float | None = None


def load_profiles(model_dirs: list[Path] | None = None) -> dict[str, ModelProfile]:
    profiles: dict[str, ModelProfile] = {}
    for directory in [BUILTIN_DIR, *(model_dirs or [])]:
        for path in sorted(Path(directory).glob("*.yaml")):
            profile = _load_one(path)
            profiles[profile.name] = profile
    return profiles


def resolve_model(name: str, profiles: dict[str, ModelProfile]) -> ModelProfile:
    if name in profiles:
        return profiles[name]
    path = Path(name)
    if path.is_absolute() and path.is_dir():
        return ModelProfile(name=name, model=str(path))
    raise UnknownModel(f"unknown model {name!r}: not a profile ({', '.join(sorted(profiles)) or 'none'}) nor a local model directory")


def _load_one(path: Path) -> ModelProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            data.setdefault("name", path.stem)
        return ModelProfile.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"model profile {path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"model profile {path}: {describe_validation_error(exc)}") from None
