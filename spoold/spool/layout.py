"""The spool directory on disk: its layout, and what is in the inbox right now."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from spoold.spool import permissions as spoolperms
from spoold.spool.jobdir import JobDir
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX, is_ignored, split_job_file
from spoold.spool.readiness import FileStat, InboxEntry
from spoold.spool.states import JobState


@dataclass(frozen=True)
class Spool:
    root: Path

    def dir(self, state: JobState) -> Path:
        return self.root / state.value

    @property
    def inbox(self) -> Path:
        return self.dir(JobState.INBOX)

    @property
    def processing(self) -> Path:
        return self.dir(JobState.PROCESSING)

    def init(self) -> None:
        """Create the layout (idempotent), setgid and group-writable as `spoold init` makes it."""
        spoolperms.init(self.root, fix=False)  # what it reports is for `spoold init` to print

    def check(self) -> str | None:
        """A reason the spool is unusable, or None."""
        for state in JobState:
            path = self.dir(state)
            if not path.is_dir():
                return f"spool {self.root} has no {state.value}/ folder (run `spoold init --spool {self.root}`)"
            if not os.access(path, os.W_OK | os.X_OK):
                return f"spool folder {path} is not writable by this user"
        return None

    def scan_inbox(self) -> list[InboxEntry]:
        """One look at the inbox: job files by name, regular files only, temp names ignored."""
        found: dict[str, dict[str, FileStat]] = {}
        try:
            entries = list(os.scandir(self.inbox))
        except FileNotFoundError:
            return []
        for entry in entries:
            parts = split_job_file(entry.name)
            if parts is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # claimed or renamed while we looked
            if not stat.S_ISREG(st.st_mode):
                continue
            name, suffix = parts
            found.setdefault(name, {})[suffix] = FileStat(st.st_size, st.st_mtime_ns)
        return [InboxEntry(name, files.get(INPUT_SUFFIX), files.get(SIDECAR_SUFFIX)) for name, files in sorted(found.items())]

    def jobs(self, state: JobState) -> list[JobDir]:
        """Job directories in a state folder (staged claims, hidden, excluded)."""
        try:
            names = sorted(os.listdir(self.dir(state)))
        except FileNotFoundError:
            return []
        return [JobDir(self.dir(state) / n) for n in names if not is_ignored(n) and (self.dir(state) / n).is_dir()]

    def staged_claims(self) -> list[Path]:
        try:
            return [self.processing / n for n in os.listdir(self.processing) if n.startswith(".claim-")]
        except FileNotFoundError:
            return []

    def find(self, name: str) -> tuple[JobState, Path] | None:
        """Where a job named `name` is now (inbox jobs are found by their .jsonl)."""
        if not name or "/" in name or name.startswith("."):
            return None
        if (self.inbox / f"{name}{INPUT_SUFFIX}").exists():
            return JobState.INBOX, self.inbox / f"{name}{INPUT_SUFFIX}"
        for state in (JobState.PROCESSING, JobState.FAILED, JobState.DONE):
            path = self.dir(state) / name
            if path.is_dir():
                return state, path
        return None
