"""`type: copy`: place a job's results in a directory (an outbox for rsync pickup).

Each file appears under its final name only when complete: it is hard-linked
or copied to a hidden temp name (`.NAME.spoold-tmp-PID-TID`), fsynced and
renamed. batch.json comes last, so a reader that waits for
`target/JOB/batch.json` knows the other files are whole. Running again
replaces the files with the same content, so a retry or a repeat after a
restart is harmless.

A hard link shares the file with `done/`: a consumer must replace or delete
outbox files, never edit them in place (set `link: false` if it might).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from pathlib import Path

from spoold.fsutil import fsync_dir
from spoold.handlers.base import Handler, HandlerError, HandlerEvent
from spoold.handlers.config import CopyConfig
from spoold.inputcheck import refusal, safe_opener

TEMP_MARK = ".spoold-tmp-"
_NO_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES})


class CopyHandler(Handler):
    def __init__(self, config: CopyConfig) -> None:
        super().__init__(config.model_dump(mode="json"))
        self.config = config

    def handle(self, event: HandlerEvent) -> None:
        root = self.config.target_dir
        if not root.is_dir():
            raise HandlerError(f"target_dir {root} does not exist or is not a directory (not mounted?)")
        dest = self.destination(event)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(dest)
            for name in sorted(self.config.files, key=lambda n: n == "batch.json"):
                if name == "batch.json":  # the final object, without the live handler results
                    data = json.dumps(event.batch, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
                    place_bytes(data, dest / name)
                    continue
                source = event.job_dir / name
                if os.path.lexists(source):
                    refuse_planted(source)
                    place_file(source, dest / name, link=self.config.link)
            fsync_dir(dest)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise HandlerError(f"copy to {dest} failed: {exc.strerror or exc}{where}") from None

    def destination(self, event: HandlerEvent) -> Path:
        sub = self.config.layout.format(job=event.job, status=event.status, batch_id=event.batch.get("id", event.job))
        dest = self.config.target_dir / sub
        if not dest.resolve().is_relative_to(self.config.target_dir.resolve()):
            raise HandlerError(f"layout {self.config.layout!r} leads outside target_dir for job {event.job}")
        return dest


def refuse_planted(source: Path) -> None:
    """A job folder is group-writable: never copy out what a symlink or FIFO planted there points to."""
    reason = refusal(os.lstat(source), one_name=False)
    if reason:
        raise HandlerError(f"{source} {reason}; spoold copies only regular files")


def place_file(source: Path, final: Path, *, link: bool) -> None:
    """Make `final` a complete copy of `source` in one rename; readers never see a partial file."""
    if link and _same_file(source, final):
        return
    tmp = _temp_name(final)
    try:
        if not (link and _try_link(source, tmp)):
            with open(source, "rb", opener=safe_opener) as src, open(tmp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(tmp, final)
    finally:
        _unlink_missing_ok(tmp)


def place_bytes(data: bytes, final: Path) -> None:
    """Write `data` as `final` in one rename."""
    tmp = _temp_name(final)
    try:
        with open(tmp, "xb") as dst:
            dst.write(data)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, final)
    finally:
        _unlink_missing_ok(tmp)


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files that other (dead) processes left behind; ours are cleaned as we go."""
    own = f"{TEMP_MARK}{os.getpid()}-"
    for entry in directory.iterdir():
        if entry.name.startswith(".") and TEMP_MARK in entry.name and own not in entry.name:
            _unlink_missing_ok(entry)


def _try_link(source: Path, tmp: Path) -> bool:
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno in _NO_LINK_ERRNOS:
            return False
        raise
    return True


def _temp_name(final: Path) -> Path:
    """Hidden (rsync and spoold skip dot files) and unique to this process and thread."""
    tmp = final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}")
    _unlink_missing_ok(tmp)
    return tmp


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _unlink_missing_ok(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
