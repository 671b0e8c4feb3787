"""Handler settings as written under `handlers:` in spoold.yaml (SPEC section 10).

One strict model per handler type, joined into a union on `type`, so a typo in
a handler's settings is a config error at start-up, not a lost notification later.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spoold.durations import Seconds

JobOutcome = Literal["completed", "failed", "cancelled"]
"""The final job statuses a handler can be run `on`."""

ResultFile = Literal["output.jsonl", "errors.jsonl", "batch.json", "input.jsonl", "meta.yaml"]
LAYOUT_FIELDS = frozenset({"job", "status", "batch_id"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Strict):
    """Exponential backoff with jitter, bounded by attempts and by age.

    Defaults retry for about an hour (12 attempts, 5 s doubling to 10 min) and
    never past a day. The first attempt always happens, even for a run that
    waited out a long daemon outage.
    """

    max_attempts: int = Field(12, ge=1)
    max_age: Seconds = Field(86400.0, gt=0)
    initial_backoff: Seconds = Field(5.0, ge=0)
    max_backoff: Seconds = Field(600.0, ge=0)
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.2, ge=0.0, le=1.0)
    """Each delay is drawn from [delay * (1 - jitter), delay]."""


class HandlerBase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Used in sidecars, batch.json, metric labels and idempotency keys."""
    on: list[JobOutcome] = Field(min_length=1)
    retry: RetryPolicy = RetryPolicy()

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        """YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True; take it back."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class WebhookConfig(HandlerBase):
    type: Literal["webhook"]
    url: str
    secret_env: str | None = None
    """Name of an environment variable holding the HMAC secret."""
    secret_file: Path | None = None
    """File holding the HMAC secret (surrounding whitespace is stripped)."""
    timeout: Seconds = Field(10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if self.secret_env and self.secret_file:
            raise ValueError("give secret_env or secret_file, not both")
        return self


class ExecConfig(HandlerBase):
    type: Literal["exec"]
    command: list[str] = Field(min_length=1)
    """An argv list; no shell is involved."""
    timeout: Seconds = Field(300.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    cwd: Path | None = None
    """Working directory; default: the job directory."""


class CopyConfig(HandlerBase):
    type: Literal["copy"]
    target_dir: Path
    """Must exist (an unmounted outbox must not fill the root file system)."""
    layout: str = "{job}"
    """Sub-directory of target_dir per job; fields: {job}, {status}, {batch_id}."""
    files: list[ResultFile] = ["output.jsonl", "errors.jsonl", "batch.json"]
    link: bool = True
    """Hard-link instead of copying when source and target share a file system."""

    @field_validator("layout")
    @classmethod
    def _safe_layout(cls, value: str) -> str:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        unknown = fields - LAYOUT_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; use {{job}}, {{status}}, {{batch_id}}")
        sample = value.format(job="j", status="completed", batch_id="b")
        parts = Path(sample).parts
        if not sample or Path(sample).is_absolute() or ".." in parts:
            raise ValueError("must be a relative path inside target_dir")
        return value


class PythonConfig(HandlerBase):
    type: Literal["python"]
    class_: str = Field(alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    """`package.module:ClassName`, a subclass of spoold.handlers.base.Handler."""
    settings: dict[str, Any] = Field(default_factory=dict, repr=False)
    """Passed to the class's constructor as a plain dict."""


_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
MIB = 1 << 20
LabelStudioSource = Literal["prompt", "answer", "custom_id", "model", "status_code", "error", "request", "response"]
"""What a Label Studio task data key can be filled from (see handlers/README.md)."""


def _http_url_value(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


class S3Settings(_Strict):
    bucket: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
    prefix: str = ""
    """Keys are PREFIX{job}/{file}; end it with / for a folder."""
    endpoint_url: str | None = None
    """An S3-compatible store (MinIO, Ceph, R2); None for AWS."""
    region: str | None = None
    credentials_file: Path | None = None
    """An AWS shared-credentials file (INI: aws_access_key_id, aws_secret_access_key); default: boto3's usual chain."""
    profile: str | None = None
    """The section of credentials_file (default `default`), or a profile of boto3's own config files."""
    files: list[ResultFile] = Field(["output.jsonl", "errors.jsonl", "batch.json"], min_length=1)
    multipart_threshold: int = Field(64 * MIB, ge=5 * MIB)
    """Files at least this big go up in parts."""
    multipart_chunksize: int = Field(16 * MIB, ge=5 * MIB)
    """Part size (S3's minimum is 5 MiB); memory is about max_concurrency x this."""
    max_concurrency: int = Field(4, ge=1, le=64)
    timeout: Seconds = Field(60.0, gt=0)
    """Connect and read timeout of each request."""

    @field_validator("prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must not start with / or hold a .. segment")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _http_url_value(value)


class S3Config(HandlerBase):
    type: Literal["s3"]
    settings: S3Settings


class PostgresSettings(_Strict):
    dsn_file: Path | None = None
    """A file holding a libpq connection string or URI; default: libpq's environment (PGHOST, PGPASSFILE, ...)."""
    table: str = Field("spoold_results", pattern=rf"^{_SQL_NAME}(\.{_SQL_NAME})?$")
    """A plain (optionally schema-qualified) identifier."""
    create_table: bool = False
    connect_timeout: Seconds = Field(10.0, gt=0)
    statement_timeout: Seconds = Field(600.0, gt=0)
    """Bounds each statement, so a lock held elsewhere cannot hang a worker for ever."""


class PostgresConfig(HandlerBase):
    type: Literal["postgres"]
    settings: PostgresSettings = PostgresSettings()


class LabelStudioSettings(_Strict):
    url: str
    token_file: Path | None = None
    """A file holding the API token; default: the LABEL_STUDIO_API_KEY environment variable."""
    project_id: int = Field(ge=1)
    data: dict[str, LabelStudioSource] = Field({"prompt": "prompt", "answer": "answer"}, min_length=1)
    """Task data key -> what fills it; the keys must be the $variables of the project's labelling config."""
    files: list[Literal["output.jsonl", "errors.jsonl"]] = Field(["output.jsonl", "errors.jsonl"], min_length=1)
    batch_size: int = Field(500, ge=1, le=10_000)
    """Tasks per import request."""
    timeout: Seconds = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url_value(value).rstrip("/")


class LabelStudioConfig(HandlerBase):
    type: Literal["label_studio"]
    settings: LabelStudioSettings


HandlerConfig = Annotated[
    WebhookConfig | ExecConfig | CopyConfig | PythonConfig | S3Config | PostgresConfig | LabelStudioConfig,
    Field(discriminator="type"),
]
"""One item of `handlers:`; pick the model by its `type`."""

AnyHandlerConfig = Union[  # noqa: UP007 (a runtime union object for pydantic's TypeAdapter)
    WebhookConfig, ExecConfig, CopyConfig, PythonConfig, S3Config, PostgresConfig, LabelStudioConfig
]
"""The same union without the discriminator, for plain annotations."""
