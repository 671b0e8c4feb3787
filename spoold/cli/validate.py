"""`spoold validate FILE.jsonl [SIDECAR]`: what the daemon would decide, without running anything."""

from __future__ import annotations

from pathlib import Path

from spoold.config import Config
from spoold.engine.profiles import load_profiles, resolve_model
from spoold.errors import SpooldError, UnknownModel
from spoold.job.sidecar import Sidecar, parse_sidecar
from spoold.job.validate import fatal_reason, validate_file
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX


def validate_command(config: Config, path: Path, sidecar_path: Path | None) -> int:
    if not path.is_file():
        raise SpooldError(f"{path} is not a file")
    if sidecar_path is None and path.name.endswith(INPUT_SUFFIX):
        beside = path.with_name(path.name[: -len(INPUT_SUFFIX)] + SIDECAR_SUFFIX)
        sidecar_path = beside if beside.is_file() else None
    sidecar = Sidecar()
    if sidecar_path is not None:
        try:
            text = sidecar_path.read_bytes()
        except OSError as exc:
            raise SpooldError(f"cannot read sidecar {sidecar_path}: {exc.strerror}") from None
        sidecar = parse_sidecar(text, {h.name for h in config.handlers})
    model = sidecar.model or config.engine.default_model
    where = f" with sidecar {sidecar_path}" if sidecar_path else " (no sidecar: defaults)"
    try:
        profile = resolve_model(model, load_profiles(config.engine.model_dirs), config.engine.state_dir)  # an adapter's files too
    except UnknownModel as exc:  # as the daemon fails the job: unknown model, bad adapter
        print(f"FAIL {path}{where}: {exc}")
        return 1
    summary = validate_file(
        path.resolve(), model, max_line_bytes=config.max_line_bytes, serves=profile.serves
    )  # a user's own symlink is fine here; the daemon never follows one
    for error in summary.errors:
        print(f"line {error.line}: {error.code}: {error.message}")
    if summary.invalid > len(summary.errors):
        print(f"... and {summary.invalid - len(summary.errors)} more invalid lines")
    reason = fatal_reason(summary, sidecar.max_error_ratio)
    if reason:
        print(f"FAIL {path}{where}: {reason}")
        return 1
    print(f"OK {path}{where}: {summary.lines} requests for model {model}, {summary.valid} valid, {summary.invalid} invalid")
    return 0
