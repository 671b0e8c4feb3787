"""`spoold submit`: drop a job safely — temp names, renames, sidecar last (SPEC section 2)."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spoold.errors import SpooldError
from spoold.fsutil import atomic_write_text, fsync_dir
from spoold.job.sidecar import parse_sidecar
from spoold.spool.layout import Spool
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX, is_ignored


def apply_settings(data: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """`--set sampling.max_tokens=64` style overrides; values are read as YAML scalars (pure)."""
    out = dict(data)
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpooldError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return out


@dataclass(frozen=True)
class Submitted:
    name: str
    identity: tuple[int, int]
    """(st_dev, st_ino) of the input: renames keep it, so `--wait` follows the job to processing/ and done/."""


def submit(
    spool: Spool,
    source: Path,
    *,
    name: str | None = None,
    sidecar_file: Path | None = None,
    model: str | None = None,
    settings: list[str] | None = None,
    handler_names: set[str] | None = None,
) -> Submitted:
    """Copy `source` into the inbox as NAME.jsonl, then write NAME.yaml."""
    if not source.is_file():
        raise SpooldError(f"{source} is not a file")
    job = name or (source.name[: -len(INPUT_SUFFIX)] if source.name.endswith(INPUT_SUFFIX) else source.stem)
    if not job or "/" in job or is_ignored(job + INPUT_SUFFIX):
        raise SpooldError(f"{job!r} cannot be a job name (no leading dot, no temp suffix)")
    if not spool.inbox.is_dir():
        raise SpooldError(f"{spool.inbox} does not exist (run `spoold init --spool {spool.root}`)")
    target, marker = spool.inbox / f"{job}{INPUT_SUFFIX}", spool.inbox / f"{job}{SIDECAR_SUFFIX}"
    if target.exists() or marker.exists():
        raise SpooldError(f"a job named {job} is already waiting in {spool.inbox}")
    beside = source.with_name(source.name[: -len(INPUT_SUFFIX)] + SIDECAR_SUFFIX) if source.name.endswith(INPUT_SUFFIX) else None
    sidecar_path = sidecar_file or (beside if beside and beside.is_file() else None)
    data = _read_sidecar(sidecar_path) if sidecar_path else {}
    if model:
        data["model"] = model
    data = apply_settings(data, settings or [])
    text = yaml.safe_dump(data, sort_keys=False) if data else "{}\n"
    parse_sidecar(text, handler_names)  # refuse now what the daemon would fail later
    tmp = spool.inbox / f".{job}{INPUT_SUFFIX}.{uuid.uuid4().hex[:8]}.part"
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
            st = os.fstat(dst.fileno())
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(spool.inbox)
    atomic_write_text(marker, text)  # the sidecar last: it marks the job complete
    return Submitted(job, (st.st_dev, st.st_ino))


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpooldError(f"cannot read sidecar {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SpooldError(f"sidecar {path} must be a YAML mapping")
    return data
