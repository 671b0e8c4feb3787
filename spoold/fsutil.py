"""Crash-safe file primitives: temp + fsync + rename + fsync dir, and append with a good length.

Everything spoold commits to disk goes through here, so a power cut leaves
either the old state or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

FILE_MODE = 0o666
"""New files get 0666 less the umask, like any program's: 0660 under the units' UMask=0007,
so the spool's group (the submitters) can read results and nobody else can."""
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""A job folder is group-writable: a symlink planted there is never followed by a write
(ELOOP), and a FIFO never blocks one (ENXIO; O_NONBLOCK means nothing to regular files)."""


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True, sync_dir: bool = True) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix.

    durable=False skips both fsyncs, for files whose loss in a power cut is harmless
    (a lease's timestamp, live progress, a claimer note): readers still never see a mix.
    sync_dir=False keeps the file's fsync but not its folder's: after a power cut the path
    holds the old file or the whole new one. For a caller that fsyncs the folder itself
    later (finish_job, before the move), or whose update may be lost in a power cut.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, durable: bool = True, indent: int | None = None, sync_dir: bool = True) -> None:
    """Compact by default (spoold's own state: json's C encoder, several times faster than an indented dump);
    indent=2 for files people read (batch.json)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"), durable, sync_dir)


def read_json(path: Path) -> Any:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def append_durably(path: Path, data: bytes) -> int:
    """Append `data`, fsync, and return the file's new length (its new good length)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def truncate_to(path: Path, length: int) -> int:
    """Cut a torn tail: make `path` exactly `length` bytes (creating it if absent). Returns bytes cut."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size < length:
            raise ValueError(f"{path} is {size} bytes, shorter than its recorded good length {length}")
        if size != length:
            os.ftruncate(fd, length)
            os.fsync(fd)
        return size - length
    finally:
        os.close(fd)


def mtime_or_now(path: Path) -> float:
    """A file's mtime; now if it vanished meanwhile (claimed or renamed by another process)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
