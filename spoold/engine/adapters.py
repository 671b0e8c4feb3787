"""LoRA adapters of a base model (SPEC section 12): where their files are, their rank, what the engine needs.

A profile declares adapters (`adapters: [{name, path}]`); an adapter is named
like a model (sidecar `model`, lines' `body.model`) and runs on its base's
engine. `path` is a local PEFT folder (adapter_config.json + weights), or
`builtin:NAME` for the tiny adapters spoold builds itself under the state dir.

Every problem is an `AdapterError` with one sentence naming the adapter, found
before any GPU time (when a job starts, and by `spoold validate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spoold import tinymodel
from spoold.errors import UnknownModel

if TYPE_CHECKING:
    from spoold.engine.profiles import ModelProfile

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM 0.32 takes for max_lora_rank (its LoRAConfig.MaxLoRARanks)."""
DEFAULT_MAX_LORAS = 4
DEFAULT_RANK = 8
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(UnknownModel):
    """An adapter cannot run (unknown, of another base, rank too high, files missing): one sentence naming it."""


class AdapterSpec(BaseModel):
    """One adapter as a profile declares it; `rank` is filled in when its files are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    """A local PEFT folder, or `builtin:tiny-random-lora-a`."""
    rank: int | None = Field(None, exclude=True)
    """Read from adapter_config.json `r` (set by `check_adapter`; not a profile key)."""

    @field_validator("path")
    @classmethod
    def _where(cls, value: str) -> str:
        if tinymodel.is_builtin(value):
            if value.removeprefix(tinymodel.BUILTIN_PREFIX) not in tinymodel.BUILTIN_ADAPTERS:
                known = ", ".join(tinymodel.BUILTIN_PREFIX + n for n in sorted(tinymodel.BUILTIN_ADAPTERS))
                raise ValueError(f"unknown built-in adapter {value!r} (known: {known})")
        elif not Path(value).expanduser().is_absolute():
            raise ValueError(f"{value!r} must be an absolute path to a PEFT folder, or builtin:NAME")
        return value


@dataclass(frozen=True)
class AdapterInfo:
    """One row of `adapter_rows`: what `spoold models` and the API's /v1/models list."""

    name: str
    base: str
    path: str
    present: bool
    where: str
    rank: int | None


def adapter_dir(spec: AdapterSpec, state_dir: Path, build: bool = False) -> Path:
    """The PEFT folder of `spec` (a built-in one under the state dir, built first if `build`)."""
    if tinymodel.is_builtin(spec.path):
        try:
            if build:
                return tinymodel.ensure_builtin_adapter(spec.path, state_dir)
            return tinymodel.builtin_adapter_dir(spec.path, state_dir)
        except (ValueError, OSError) as exc:
            raise AdapterError(f"adapter {spec.name}: cannot build {spec.path} ({exc})") from None
    return Path(spec.path).expanduser()


def read_adapter_config(spec: AdapterSpec, folder: Path) -> dict[str, Any]:
    """adapter_config.json of a PEFT folder, checked: readable JSON, LoRA, weights beside it."""
    config_path = folder / tinymodel.ADAPTER_CONFIG
    if not folder.is_dir():
        raise AdapterError(f"adapter {spec.name}: its folder {folder} does not exist")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"adapter {spec.name}: {config_path} is missing (not a PEFT adapter folder)") from None
    except OSError as exc:
        raise AdapterError(f"adapter {spec.name}: cannot read {config_path} ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter {spec.name}: {config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {spec.name}: {config_path} is not a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"adapter {spec.name}: peft_type is {config.get('peft_type')!r}, only LORA adapters run")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"adapter {spec.name}: {config_path} has no valid rank `r` (got {rank!r})")
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    if not weights:
        raise AdapterError(f"adapter {spec.name}: no weights in {folder} (expected {' or '.join(WEIGHT_FILES)})")
    try:
        with open(weights[0], "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise AdapterError(f"adapter {spec.name}: cannot read {weights[0]} ({exc.strerror})") from None
    return config


def engine_rank(profile: ModelProfile) -> int:
    """The engine's max_lora_rank: the profile's, else the smallest vLLM value at or above every declared rank."""
    if profile.max_lora_rank is not None:
        return profile.max_lora_rank
    ranks = [spec.rank or DEFAULT_RANK for spec in profile.adapters]
    highest = max(ranks, default=DEFAULT_RANK)
    return next((r for r in VLLM_RANKS if r >= highest), VLLM_RANKS[-1])


def check_adapter(profile: ModelProfile, state_dir: Path, others: dict[str, ModelProfile] | None = None) -> AdapterSpec:
    """Check the adapter `profile` asks for (built-ins are built here); the spec with its folder and rank.

    `others`: every profile, to tell an adapter trained for another known base model."""
    spec = profile.adapter
    assert spec is not None
    folder = adapter_dir(spec, state_dir, build=True)
    config = read_adapter_config(spec, folder)
    rank = int(config["r"])
    trained_for = config.get("base_model_name_or_path")
    if isinstance(trained_for, str) and trained_for:
        other = _other_base(trained_for, profile, others or {})
        if other is not None:
            raise AdapterError(
                f"adapter {spec.name} was made for model {other} (adapter_config.json base_model_name_or_path), not {profile.name}"
            )
    limit = profile.max_lora_rank if profile.max_lora_rank is not None else VLLM_RANKS[-1]
    if rank > limit:
        raise AdapterError(f"adapter {spec.name} has rank {rank}, above the engine's max_lora_rank {limit} for model {profile.name}")
    return spec.model_copy(update={"path": str(folder), "rank": rank})


def _other_base(trained_for: str, profile: ModelProfile, others: dict[str, ModelProfile]) -> str | None:
    """The name of another known base model that `trained_for` names (None: this base, or unknown)."""
    own = {profile.name, profile.model, profile.model.removeprefix(tinymodel.BUILTIN_PREFIX)}
    if trained_for in own or trained_for.removeprefix(tinymodel.BUILTIN_PREFIX) in own:
        return None
    for name, other in others.items():
        if name != profile.name and other.model not in own and trained_for in (name, other.model):
            return name
    return None


def lora_engine_args(profile: ModelProfile, state_dir: Path) -> dict[str, Any]:
    """enable_lora, max_loras, max_lora_rank for a base that declares adapters ({} when it declares none)."""
    if not profile.adapters:
        return {}
    ranked = []
    for spec in profile.adapters:
        rank: int | None
        try:
            rank = int(read_adapter_config(spec, adapter_dir(spec, state_dir))["r"])
        except AdapterError:
            rank = tinymodel.ADAPTER_RANK if tinymodel.is_builtin(spec.path) else None  # checked again per job
        ranked.append(spec.model_copy(update={"rank": rank}))
    rank = engine_rank(profile.model_copy(update={"adapters": ranked}))
    # One slot more than the declared adapters: with every LoRA slot of a batch taken, vLLM 0.32 (CPU build,
    # measured) applied an adapter to the base-model requests batched beside it (wrong answers, no error).
    max_loras = max(profile.max_loras or DEFAULT_MAX_LORAS, len(ranked) + 1)
    return {"enable_lora": True, "max_loras": max_loras, "max_lora_rank": rank, "max_cpu_loras": max_loras}


def adapter_rows(profiles: dict[str, ModelProfile], state_dir: Path) -> list[AdapterInfo]:
    """Every declared adapter: (name, base, path, present, where, rank), sorted by name. For `spoold models`
    and the OpenAI API's /v1/models (an adapter is listed with `parent` = its base)."""
    rows = []
    for base in profiles.values():
        for spec in base.adapters:
            try:
                folder = adapter_dir(spec, state_dir)
                if tinymodel.is_builtin(spec.path) and not tinymodel.is_built(folder):
                    rows.append(
                        AdapterInfo(
                            spec.name, base.name, spec.path, False, "not built yet (built on first use, or by `spoold models build`)", None
                        )
                    )
                    continue
                rank = int(read_adapter_config(spec, folder)["r"])
                rows.append(AdapterInfo(spec.name, base.name, str(folder), True, f"PEFT folder {folder}", rank))
            except AdapterError as exc:
                rows.append(AdapterInfo(spec.name, base.name, spec.path, False, str(exc).split(": ", 1)[-1], None))
    return sorted(rows, key=lambda row: row.name)
