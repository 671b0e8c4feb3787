"""spoold.yaml (SPEC section 7): validated at the edge so the daemon never sees a typo."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from spoold.durations import Seconds
from spoold.errors import ConfigError, describe_validation_error, load_yaml_mapping
from spoold.handlers.config import HandlerConfig
from spoold.inputcheck import MAX_LINE_BYTES

DEFAULT_CONFIG_PATH = Path("/etc/spoold/spoold.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WatchConfig(Strict):
    mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: Seconds = Field(2.0, gt=0)
    settle_seconds: Seconds = Field(2.0, ge=0)
    require_sidecar: bool = True
    orphan_seconds: Seconds = Field(300.0, ge=0)
    # spoold's own addition (not in SPEC; documented in docs/configuration.md):
    rescan_seconds: Seconds = Field(30.0, gt=0)
    """inotify mode: a full look at the inbox this often, for events inotify lost (poll mode rescans every poll_interval)."""


class EngineConfig(Strict):
    backend: Literal["vllm", "echo"] = "vllm"
    default_model: str = "tiny-random"
    model_dirs: list[Path] = []
    max_attempts: int = Field(3, ge=1)
    idle_unload_seconds: Seconds = Field(0.0, ge=0)
    max_active_jobs: int = Field(8, ge=1)
    """Jobs of the loaded model fed to the engine at once (SPEC section 7)."""
    # spoold's own additions (not in SPEC; documented in docs/configuration.md):
    window: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    """Requests kept in flight in the engine; chunk boundaries do not drain it. `auto`: twice the
    loaded engine's batch (vLLM's max_num_seqs), so its scheduler always has the next requests queued."""
    model_switch_after: Seconds = Field(600.0, ge=0)
    """Switch away from the loaded model once another model's oldest job waited this long."""
    state_dir: Path = Path("/var/lib/spoold")
    """Where built-in models (tiny-random) are built and cached."""
    engine_args: dict[str, object] = {}
    """Extra vLLM engine arguments applied to every model (e.g. device settings)."""
    step_timeout_seconds: Seconds = Field(30.0, gt=0)
    """A vLLM engine step that returns nothing for this long means a hung engine (a stopped engine core,
    a GPU that stopped answering): it is ended and reloaded like a dead one (docs/decisions.md, "When the engine dies")."""


class MetricsConfig(Strict):
    listen: str = "127.0.0.1:9464"


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class HealthConfig(Strict):
    """Stop claiming new jobs while a GPU is unhealthy (issue 4)."""

    max_gpu_temperature: float | None = None


class RetentionConfig(Strict):
    """How long finished jobs stay (SPEC section 7); null keeps them forever."""

    done: Seconds | None = Field(None, ge=0)
    failed: Seconds | None = Field(None, ge=0)
    archive_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.done is not None or self.failed is not None

    def keep(self, state: str) -> float | None:
        """Seconds a job in done/ or failed/ stays after it ended; None: forever."""
        return {"done": self.done, "failed": self.failed}[state]


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(value: object) -> object:
    """Turn "10GiB" into 10737418240; leave numbers (and anything else) to pydantic."""
    if isinstance(value, str):
        number, unit = value.strip(), ""
        while number and not (number[-1].isdigit() or number[-1] == "."):
            number, unit = number[:-1], number[-1] + unit
        try:
            return int(float(number) * _SIZE_UNITS[unit.strip().lower()])
        except (KeyError, ValueError):
            raise ValueError(f"not a size: {value!r} (use bytes, or e.g. '200MiB', '10GiB')") from None
    return value


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class ApiConfig(Strict):
    """`spoold api` (SPEC section 11): the OpenAI Files and Batches API over the spool."""

    listen: str = "127.0.0.1:8080"
    keys_file: Path | None = Path("/etc/spoold/api-keys")
    allow_anonymous: bool = False
    """Serve requests without a key (as the tenant `anonymous`); refused unless `listen` is a loopback address."""
    max_file_bytes: ByteSize = Field(10 << 30, ge=1)
    """Largest upload: 10 GiB (OpenAI allows 200 MB; spoold is for big jobs; uploads stream, memory stays flat)."""
    max_queued_requests_per_key: int | None = Field(None, ge=1)
    """Requests of one key's unfinished batches at most; a create past it is a 429. null: no limit."""
    metrics_listen: str = ""
    """The API's own Prometheus metrics (requests, bytes, latency); "" disables them."""

    @model_validator(mode="after")
    def _anonymous_on_loopback_only(self) -> ApiConfig:
        host = self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"
        if self.allow_anonymous and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise ValueError(f"allow_anonymous is only honoured on a loopback listen address, not {self.listen!r}")
        return self


class Config(Strict):
    spool_dir: Path = Path("/var/spool/spoold")
    node_id: str | None = None
    watch: WatchConfig = WatchConfig()
    engine: EngineConfig = EngineConfig()
    chunk_size: int = Field(1000, ge=1)
    shard_min_lines: int | None = Field(100_000, ge=1)
    """Jobs with more lines than this are split into shards of at least this many lines (shards.py); None: only when a
    sidecar asks. 100,000 from the shards benchmark: a shard's fixed cost is tens of milliseconds, its lines take minutes."""
    max_line_bytes: int = Field(MAX_LINE_BYTES, ge=1024)
    """A longer input line is that line's error (line_too_long), skipped without being read whole."""
    retention: RetentionConfig = RetentionConfig()
    lease_seconds: Seconds = Field(60.0, gt=0)
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    health: HealthConfig = HealthConfig()
    handlers: list[HandlerConfig] = []
    api: ApiConfig = ApiConfig()

    @model_validator(mode="after")
    def _unique_handler_names(self) -> Config:
        names = [h.name for h in self.handlers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"handler names must be unique, repeated: {', '.join(dupes)}")
        return self

    @property
    def node(self) -> str:
        """$SPOOLD_NODE_ID (set per GPU by spoold@.service) wins over node_id, then the hostname."""
        return os.environ.get("SPOOLD_NODE_ID") or self.node_id or socket.gethostname()


def config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, then $SPOOLD_CONFIG, then /etc/spoold/spoold.yaml if it exists."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SPOOLD_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def parse_config(text: str, source: str = "config") -> Config:
    data = load_yaml_mapping(text, source, ConfigError)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = config_path(explicit)
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    return parse_config(text, str(path))
