"""Which mount holds a path (from /proc/self/mountinfo), and whether the spool's folders share one.

Jobs move between inbox/, processing/, done/ and failed/ by rename(2), which fails
with EXDEV across filesystems, and across mount points even of one filesystem
(bind mounts). A spool split that way can never run a job, so the daemon refuses
to start on one. The parsing is pure: mountinfo text and a stat function come in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spoold.spool.states import JobState

MOUNTINFO = Path("/proc/self/mountinfo")
MOVES = ((JobState.INBOX, JobState.PROCESSING), (JobState.PROCESSING, JobState.DONE), (JobState.PROCESSING, JobState.FAILED))
"""The renames a job goes through (a requeue makes the way back the same pairs)."""
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_id: int
    mount_point: str
    fstype: str
    source: str

    def describe(self) -> str:
        return f"{self.mount_point} ({self.fstype} {self.source})"


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in /proc/self/mountinfo order (a later mount on the same point hides an earlier one)."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2 or not fields[0].isdigit():
            continue
        mounts.append(Mount(int(fields[0]), _unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\040, \\011, \\012, \\134."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mountinfo() -> str | None:
    try:
        return MOUNTINFO.read_text()
    except OSError:
        return None


def mount_of(path: Path | str, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path` (an absolute, resolved path): the longest mount point above it."""
    target = str(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    return best


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem holding `path` ("unknown" without /proc)."""
    text = read_mountinfo() if mountinfo is None else mountinfo
    mount = mount_of(Path(path).resolve(), parse_mountinfo(text or ""))
    return mount.fstype if mount else "unknown"


def split_spool_problem(
    root: Path, mountinfo: str | None = None, device_of: Callable[[Path], int] = lambda p: os.stat(p).st_dev
) -> str | None:
    """One sentence if two spool folders a job is renamed between are on different mounts; else None.
    Missing folders are left to Spool.check."""
    text = read_mountinfo() if mountinfo is None else mountinfo
    mounts = parse_mountinfo(text or "")
    try:
        root_path = root.resolve()
        root_mount = mount_of(root_path, mounts)
        for a, b in MOVES:
            pa, pb = (root / a.value).resolve(), (root / b.value).resolve()
            ma, mb = mount_of(pa, mounts), mount_of(pb, mounts)
            if device_of(pa) == device_of(pb) and (ma is None or mb is None or ma.mount_id == mb.mount_id):
                continue
            return _explain(root_path, root_mount, (a, pa, ma), (b, pb, mb))
    except FileNotFoundError:
        return None
    return None


def _explain(root: Path, root_mount: Mount | None, *sides: tuple[JobState, Path, Mount | None]) -> str:
    where = ", ".join(f"{state.value}/ on {mount.describe() if mount else 'an unknown mount'}" for state, _, mount in sides)
    odd = [state.value for state, _, mount in sides if root_mount is None or mount is None or mount.mount_id != root_mount.mount_id]
    fix = f"mount the volume on {root} itself rather than on {odd[0]}/" if odd else f"keep the spool {root} on one filesystem"
    return (f"spool folders {sides[0][0].value}/ and {sides[1][0].value}/ are on different mounts ({where}): "
            f"jobs move between them by rename, which cannot cross mounts; {fix}, or use one spool per volume")  # fmt: skip
