"""Where the API keeps its own few facts, inside the spool it serves (no second database).

    SPOOL/.spoold/api/files/file-<hex>/content      an upload, exactly as sent
    SPOOL/.spoold/api/files/file-<hex>/file.json    its FileObject and owning key
    SPOOL/.spoold/api/files/file-<hex>/summary.json what a create learnt from scanning it (a cache)
    SPOOL/.spoold/api/files/.up-*                   uploads in flight (never visible as files)
    SPOOL/.spoold/api/batches/batch_<hex>.json      the owner and create request of an API batch

An upload becomes visible by one rename of its finished folder; a batch record is
created exclusively (link(2)) before its inbox job exists. Every file is immutable
once visible, except file.json when a delete turns it into a tombstone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from spoold.spool.layout import Spool

API_DIR = Path(".spoold") / "api"
STALE_UPLOAD_SECONDS = 3600.0
"""An upload folder untouched this long belongs to a process that died (a live upload writes every second)."""


@dataclass(frozen=True)
class ApiArea:
    spool: Spool

    @property
    def root(self) -> Path:
        return self.spool.root / API_DIR

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    def ensure(self) -> None:
        for path in (self.files, self.batches):
            path.mkdir(parents=True, exist_ok=True)

    def sweep_stale_uploads(self, now: float | None = None) -> list[Path]:
        """Remove what uploads killed mid-way left (`.up-*` folders, `.rec-*` temp records); returns what went."""
        import shutil

        now = time.time() if now is None else now
        removed = []
        for folder, prefix in ((self.files, ".up-"), (self.batches, ".rec-"), (self.spool.inbox, ".batch_")):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.name.startswith(prefix):
                    continue
                try:
                    newest = _newest_mtime(Path(entry.path))
                except FileNotFoundError:
                    continue
                if now - newest > STALE_UPLOAD_SECONDS:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
        return removed


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            newest = max(newest, child.lstat().st_mtime)
    return newest
