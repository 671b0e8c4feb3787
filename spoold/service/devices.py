"""Do a model's engine arguments fit the GPUs this daemon sees? (Pure: the environment comes in.)

A model larger than one GPU runs with vLLM's `tensor_parallel_size` (times
`pipeline_parallel_size`) GPUs, and a `spoold@` instance sees the GPUs its
`CUDA_VISIBLE_DEVICES` names. When the variable is set and a model needs more
GPUs than it lists, vLLM would fail minutes into the load with a CUDA or Ray
error; spoold says why in one line instead: `spoold run` refuses a site-wide
`engine.engine_args` that can never fit, and a daemon leaves a job whose model
does not fit to another daemon (a GPU group) on the spool. Unset means every
GPU of the host: nothing is checked then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def devices_needed(engine_args: Mapping[str, Any]) -> int:
    """GPUs one engine uses: tensor_parallel_size x pipeline_parallel_size (1 each by default)."""
    return int(engine_args.get("tensor_parallel_size") or 1) * int(engine_args.get("pipeline_parallel_size") or 1)


def visible_devices(value: str | None) -> list[str] | None:
    """The entries of $CUDA_VISIBLE_DEVICES (indices, GPU-UUIDs or MIG names); None when unset.

    CUDA's rules: an empty value hides every GPU, and the list ends at the first negative index.
    """
    if value is None:
        return None
    found: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("-"):
            break
        found.append(part)
    return found


def does_not_fit(name: str, engine_args: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """One sentence if the engine needs more GPUs than CUDA_VISIBLE_DEVICES lists; else None."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    seen = visible_devices(value)
    need = devices_needed(engine_args)
    if seen is None or need <= len(seen):
        return None
    how = f"tensor_parallel_size {engine_args.get('tensor_parallel_size') or 1}"
    if engine_args.get("pipeline_parallel_size"):
        how += f" x pipeline_parallel_size {engine_args['pipeline_parallel_size']}"
    return f"{name} needs {need} GPUs ({how}) but this daemon sees {len(seen)} (CUDA_VISIBLE_DEVICES={value})"


def site_problem(site_args: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """`engine.engine_args` apply to every model: if they cannot fit, this daemon can serve nothing."""
    reason = does_not_fit("engine.engine_args", site_args, environ)
    if reason is None:
        return None
    return f"{reason}: give this instance a GPU group of that size (systemd/README.md, models larger than one GPU) or lower the setting"


def model_problem(name: str, profile_args: Mapping[str, Any], site_args: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """The profile's arguments with the site's on top (as the vLLM backend merges them)."""
    return does_not_fit(f"model {name}", {**profile_args, **site_args}, environ)
