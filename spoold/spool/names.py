"""Which inbox names are jobs, and how a job gets a name nobody else holds (pure)."""

from __future__ import annotations

from collections.abc import Callable

IGNORED_SUFFIXES = (".part", ".tmp", ".filepart", ".partial", "~")
INPUT_SUFFIX = ".jsonl"
SIDECAR_SUFFIX = ".yaml"


def is_ignored(filename: str) -> bool:
    """Upload temp files (rsync's `.NAME.XXXXXX`, `.part`, ...) are never jobs."""
    return filename.startswith(".") or filename.endswith(IGNORED_SUFFIXES)


def split_job_file(filename: str) -> tuple[str, str] | None:
    """`reviews.jsonl` -> ("reviews", ".jsonl"); None for names that are not job files."""
    if is_ignored(filename):
        return None
    for suffix in (INPUT_SUFFIX, SIDECAR_SUFFIX):
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], suffix
    return None


def unique_name(name: str, taken: Callable[[str], bool]) -> str:
    """`name`, else `name.2`, `name.3`, ...: never overwrite an existing job."""
    if not taken(name):
        return name
    n = 2
    while taken(f"{name}.{n}"):
        n += 1
    return f"{name}.{n}"
