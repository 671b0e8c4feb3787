"""Model profiles: models/*.yaml shipped with spoold plus `engine.model_dirs`.

A sidecar names a profile, or a local model directory (an absolute path).
Profiles are validated when loaded, so a typo in an engine argument or a
sampling default is a config error at start-up, not a failed job later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spoold import tinymodel
from spoold.engine.adapters import VLLM_RANKS, AdapterError, AdapterSpec, adapter_rows, check_adapter
from spoold.errors import ConfigError, UnknownModel, describe_validation_error

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "models"

Task = Literal["generate", "embed", "score"]
TASK_KINDS: dict[str, frozenset[str]] = {
    "generate": frozenset({"chat", "completion"}),
    "embed": frozenset({"embeddings", "score", "rerank"}),
    "score": frozenset({"score", "rerank"}),
}
"""Which line kinds each task serves (as vLLM's server enables its endpoints for such a model)."""


class EngineArgsSpec(BaseModel):
    """The vLLM engine arguments a profile may set (a checked subset of vLLM's EngineArgs)."""

    model_config = ConfigDict(extra="forbid")

    max_model_len: int | None = Field(None, ge=16)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    pipeline_parallel_size: int | None = Field(None, ge=1)
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    enforce_eager: bool | None = None
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    trust_remote_code: bool | None = None
    revision: str | None = None
    tokenizer: str | None = None
    tokenizer_mode: str | None = None
    download_dir: str | None = None
    load_format: str | None = None
    seed: int | None = None
    cpu_offload_gb: float | None = Field(None, ge=0)
    kv_cache_memory_bytes: int | None = Field(None, ge=1)
    max_logprobs: int | None = Field(None, ge=0)
    limit_mm_per_prompt: dict[str, Any] | None = None
    language_model_only: bool | None = None
    hf_overrides: dict[str, Any] | None = None
    generation_config: str | None = None
    disable_log_stats: bool | None = None
    runner: Literal["auto", "generate", "pooling"] | None = None
    convert: Literal["auto", "none", "embed", "classify"] | None = None
    pooler_config: dict[str, Any] | None = None


class ModelProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    """Hugging Face id, a local path, or `builtin:tiny-random` (built by spoold itself)."""
    description: str = ""
    engine_args: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    """Default sampling for this model, below the sidecar's and the line's own values."""
    gpu_memory_gb: float | None = Field(None, gt=0)
    """GPU memory the model needs at its engine_args (weights plus a useful KV cache)."""
    task: Task | None = "generate"
    """What the model does: generate (chat, completions), embed (embeddings, and score/rerank by
    cosine similarity) or score (a cross-encoder: score and rerank). None (a local model directory
    named in a sidecar): unknown until loaded; vLLM's model detection decides."""

    tool_call_parser: str | None = None
    """vLLM's tool-call parser for this model (`--tool-call-parser`, e.g. hermes, llama3_json): without one,
    chat lines may carry tools only with tool_choice "none"."""
    reasoning_parser: str | None = None
    """vLLM's reasoning parser (`--reasoning-parser`, e.g. qwen3): the thinking goes to
    message.reasoning_content, and reasoning_effort is accepted."""

    adapters: list[AdapterSpec] = []
    """LoRA adapters of this model (engine/adapters.py): each is named like a model and runs on this
    model's engine (loaded with enable_lora), never a model switch."""
    max_loras: int | None = Field(None, ge=2)
    """Adapters in one engine batch (vLLM's max_loras; default 4); more in use take turns. At least 2: with 1,
    vLLM 0.32 (CPU build, measured) applies the adapter to base-model requests batched beside it."""
    max_lora_rank: int | None = None
    """The highest adapter rank the engine takes (vLLM's max_lora_rank; default: the declared adapters' highest)."""
    adapter: AdapterSpec | None = Field(None, exclude=True)
    """Set by `resolve_model` when a job names one of `adapters` (not a profile key)."""

    @property
    def served_name(self) -> str:
        """The name a job's results carry: the adapter's, else the model's (as vLLM's server names them)."""
        return self.adapter.name if self.adapter else self.name

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, value: int | None) -> int | None:
        if value is not None and value not in VLLM_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, VLLM_RANKS))} (vLLM's max_lora_rank values)")
        return value

    @field_validator("adapters")
    @classmethod
    def _unique_adapters(cls, value: list[AdapterSpec]) -> list[AdapterSpec]:
        names = [a.name for a in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"adapter names must be unique: {', '.join(twice)} declared twice")
        return value

    @property
    def serves(self) -> frozenset[str] | None:
        """The line kinds (lines.URL_KINDS values) this model answers; None: not known offline."""
        return TASK_KINDS[self.task] if self.task else None

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, value: str) -> str:
        if tinymodel.is_builtin(value):
            tinymodel.builtin_name(value)  # raises ValueError for an unknown built-in
        return value

    @model_validator(mode="after")
    def _pooling_runner(self) -> ModelProfile:
        """A pooling task runs on vLLM's pooling runner unless the profile says otherwise."""
        if self.task in ("embed", "score"):
            self.engine_args.setdefault("runner", "pooling")
        elif self.task == "generate" and self.engine_args.get("runner") == "pooling":
            raise ValueError("engine_args.runner is pooling: set task to embed or score")
        return self

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return EngineArgsSpec.model_validate(value).model_dump(exclude_unset=True)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc)) from None

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Imported here: spoold.engine imports this module (a cycle at import time).
        from spoold.engine.sampling import sampling_field

        return sampling_field(value)


def load_profiles(model_dirs: list[Path] | None = None) -> dict[str, ModelProfile]:
    profiles: dict[str, ModelProfile] = {}
    for directory in [BUILTIN_DIR, *(model_dirs or [])]:
        for path in sorted(Path(directory).glob("*.yaml")):
            profile = _load_one(path)
            profiles[profile.name] = profile
    _check_adapter_names(profiles)
    return profiles


def adapter_index(profiles: dict[str, ModelProfile]) -> dict[str, tuple[ModelProfile, AdapterSpec]]:
    """Adapter name -> (its base profile, its spec)."""
    return {spec.name: (base, spec) for base in profiles.values() for spec in base.adapters}


def resolve_model(name: str, profiles: dict[str, ModelProfile], state_dir: Path | None = None) -> ModelProfile:
    """The profile a job's model names. An adapter gives its base profile with `adapter` set; with
    `state_dir` its files are checked too (built-ins built), raising AdapterError before any GPU time."""
    if name in profiles:
        return profiles[name]
    found = adapter_index(profiles).get(name)
    if found is not None:
        base, spec = found
        if base.task not in (None, "generate"):
            raise AdapterError(f"adapter {name}: its base model {base.name} is a {base.task} model; adapters run on generating models only")
        resolved = base.model_copy(update={"adapter": spec})
        if state_dir is not None:
            resolved = base.model_copy(update={"adapter": check_adapter(resolved, state_dir, profiles)})
        return resolved
    path = Path(name)
    if path.is_absolute() and path.is_dir():
        return ModelProfile(name=name, model=str(path), task=None)
    adapters = sorted(adapter_index(profiles))
    also = f", an adapter ({', '.join(adapters)})" if adapters else ""
    raise UnknownModel(f"unknown model {name!r}: not a profile ({', '.join(sorted(profiles)) or 'none'}){also} nor a local model directory")


def engine_model(name: str, profiles: dict[str, ModelProfile]) -> str:
    """The engine a model name runs on: an adapter's base, else the name itself (admission groups jobs by it)."""
    found = adapter_index(profiles).get(name) if name not in profiles else None
    return found[0].name if found else name


def profile_available(profile: ModelProfile, state_dir: Path) -> tuple[bool, str]:
    """Whether the weights are on this machine (nothing would be downloaded), and where or why not."""
    if tinymodel.is_builtin(profile.model):
        path = tinymodel.builtin_dir(profile.model, state_dir)
        if tinymodel.is_built(path):
            return True, f"built at {path}"
        return False, "not built yet (built on first use, or by `spoold models build`)"
    local = Path(profile.model).expanduser()
    if local.is_absolute() or profile.model.startswith("."):
        if (local / "config.json").is_file():
            return True, f"local directory {local}"
        return False, f"no model at {local} (config.json missing)"
    snapshot = hf_snapshot(profile.model, profile.engine_args.get("download_dir"))
    if snapshot is not None:
        return True, f"in the Hugging Face cache ({snapshot})"
    return False, f"not downloaded (huggingface-cli download {profile.model})"


def hf_snapshot(repo_id: str, download_dir: str | None = None) -> Path | None:
    """The newest cached snapshot of `repo_id` holding a config.json, or None."""
    folder = "models--" + repo_id.replace("/", "--")
    for cache in _hf_caches(download_dir):
        snapshots = cache / folder / "snapshots"
        if not snapshots.is_dir():
            continue
        found = [s for s in snapshots.iterdir() if (s / "config.json").exists()]
        if found:
            return max(found, key=lambda s: s.stat().st_mtime)
    return None


def _hf_caches(download_dir: str | None) -> list[Path]:
    """Where vLLM would look: its download_dir, else the Hub cache ($HF_HUB_CACHE, $HF_HOME/hub)."""
    if download_dir:
        return [Path(download_dir).expanduser()]
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"]).expanduser()]
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return [home.expanduser() / "hub"]


def models_report(profiles: dict[str, ModelProfile], state_dir: Path) -> str:
    """The `spoold models` table: one row per profile, with whether its weights are here."""
    header = ("NAME", "MODEL", "MAX LEN", "GPU GB", "TASK", "LOCAL", "WHERE / HOW")
    rows = [header]
    for name in sorted(profiles):
        profile = profiles[name]
        ok, where = profile_available(profile, state_dir)
        max_len = profile.engine_args.get("max_model_len")
        gpu = profile.gpu_memory_gb
        rows.append(
            (
                name,
                profile.model,
                str(max_len) if max_len else "-",
                f"{gpu:g}" if gpu else "-",
                profile.task or "-",
                "yes" if ok else "no",
                where,
            )
        )
    for info in adapter_rows(profiles, state_dir):
        rank = f", rank {info.rank}" if info.rank else ""
        rows.append((info.name, f"adapter of {info.base}", "-", "-", "generate", "yes" if info.present else "no", info.where + rank))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows)


def _check_adapter_names(profiles: dict[str, ModelProfile]) -> None:
    """An adapter's name must name nothing else: no profile, no other base's adapter."""
    seen: dict[str, str] = {}
    for base in profiles.values():
        for spec in base.adapters:
            if spec.name in profiles:
                raise ConfigError(f"model profile {base.name}: adapter {spec.name} has the name of a model profile")
            if spec.name in seen:
                raise ConfigError(f"adapter {spec.name} is declared by both {seen[spec.name]} and {base.name}")
            seen[spec.name] = base.name


def _load_one(path: Path) -> ModelProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict):
            data.setdefault("name", path.stem)
            if "adapter" in data:
                raise ConfigError(f"model profile {path}: adapter: unknown key (declare adapters as `adapters: [{{name, path}}]`)")
        return ModelProfile.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"model profile {path}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"model profile {path}: {describe_validation_error(exc)}") from None
