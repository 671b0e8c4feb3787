"""Result segments: each lease generation of a job (or shard) appends to files of its own.

`<state>/seg.<gen>.output.jsonl` and `seg.<gen>.errors.jsonl` hold the records
one generation committed; its checkpoint names their good lengths and those
of the generations before it (checkpoint.py). Generation 0 is the top-level
`output.jsonl`/`errors.jsonl` of jobs begun before segments existed.

When a job ends, `merge` writes the final `output.jsonl` and `errors.jsonl`
from exactly the bytes the deciding checkpoints name, in order; bytes a
frozen former owner appended later are never copied. A job that ran in one
generation (the usual case) has its own segment renamed into place, no copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from spoold.fsutil import FILE_MODE, fsync_dir, truncate_to, write_all
from spoold.job.checkpoint import Checkpoint
from spoold.spool.jobdir import STATE_DIR

KINDS = ("output", "errors")
COPY_BLOCK = 8 << 20


def segment_path(job_path: Path, state: Path, gen: int, kind: str) -> Path:
    """Where generation `gen` of the unit whose state folder is `state` appends its `kind` records."""
    if gen == 0:
        return job_path / f"{kind}.jsonl"
    return state / f"seg.{gen}.{kind}.jsonl"


def merge(job_path: Path, parts: list[tuple[Path, Checkpoint]], own: tuple[Path, int] | None = None, sync: bool = True) -> None:
    """Write `job_path/output.jsonl` and `errors.jsonl` from the segments each (state, checkpoint) names.

    `own` is (state, gen) of the segment the caller itself wrote and holds the lease of: when it
    is the only one with records of a kind, it is cut to its good length and renamed into place.
    Any other segment is only read (a frozen former owner may still append to it): copied up to
    its good length. Crash-safe: temp + fsync + rename + fsync dir; running it again gives the same files.
    """
    for i, kind in enumerate(KINDS):
        pieces = [
            (segment_path(job_path, state, gen, kind), sizes[i], (state, gen) == own)
            for state, ckpt in parts
            for gen, sizes in sorted(ckpt.segments().items())
            if sizes[i] > 0
        ]  # fmt: skip
        final = job_path / f"{kind}.jsonl"
        # a segment renamed into place by a merge that a crash interrupted later is read from there
        pieces = [(path if path.exists() or not final.exists() else final, length, mine) for path, length, mine in pieces]
        if len(pieces) == 1 and pieces[0][0] != final:
            path, length, mine = pieces[0]
            if mine:
                truncate_to(path, length)  # a torn tail of our own past the last checkpoint
                os.replace(path, final)
                continue
        if not pieces:
            truncate_to(final, 0)  # no records of this kind: an empty file (the directory fsync below names it)
            continue
        if len(pieces) == 1 and pieces[0][0] == final:
            truncate_to(final, pieces[0][1])  # already in place: only a tail past the good length to cut
            continue
        _concatenate(final, [(path, length) for path, length, _ in pieces])
    if sync:  # sync=False: the caller fsyncs the folder itself before anything depends on the names (finish_job)
        fsync_dir(job_path)


def discard(job_path: Path) -> None:
    """Remove the segments of a finished job (its output.jsonl and errors.jsonl hold their records):
    in its state folder and, for a sharded job, in each shard's (one listing per folder)."""
    folders = [job_path / STATE_DIR]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("seg.") and entry.name.endswith(".jsonl"):
                    Path(entry.path).unlink(missing_ok=True)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))


def _concatenate(final: Path, pieces: list[tuple[Path, int]]) -> None:
    tmp = final.with_name(f".{final.name}.merge-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        for path, length in pieces:
            _copy(path, fd, length)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, final)


def _copy(path: Path, out_fd: int, length: int) -> None:
    """Append the first `length` bytes of `path` to `out_fd`, in the kernel where it can."""
    with open(path, "rb", buffering=0) as src:
        size = os.fstat(src.fileno()).st_size
        if size < length:
            raise ValueError(f"{path} is {size} bytes, shorter than its recorded good length {length}")
        left = length
        while left:
            try:
                n = os.copy_file_range(src.fileno(), out_fd, min(left, COPY_BLOCK))
            except OSError:
                n = 0
            if n == 0:  # not supported here (or an old kernel): copy through user space
                block = src.read(min(left, COPY_BLOCK))
                if not block:
                    raise ValueError(f"{path} ended before its recorded good length {length}")
                write_all(out_fd, block)
                n = len(block)
            left -= n
