"""Who may do what in the spool: the folder modes that let group members submit, and nobody else in.

The spool root's group is the submitters' group. Every folder is setgid (new
files and job folders keep that group), the four state folders are
group-writable (submitters drop files in inbox/, `spoold cancel` and
`spoold requeue` move jobs between the others), and nothing is open to
others. `wanted_mode` and `problems` are pure; `inspect` and `apply` touch
the disk. Used by `spoold init` (report, `--fix`) and by the daemon at start
(one warning per problem).
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from spoold.spool.states import JobState

ROOT_NEEDS = stat.S_ISGID | 0o750
"""The root: setgid, owner rwx, group may enter and list (submitters write only below it)."""
FOLDER_NEEDS = stat.S_ISGID | 0o770
"""inbox/, processing/, done/, failed/: setgid, owner and group rwx."""
ROOT_FORBIDS = 0o007
FOLDER_FORBIDS = stat.S_ISVTX | 0o007
"""No access for others; no sticky bit (the daemon must move submitters' files out of inbox/)."""
CREATE_MODE = stat.S_ISGID | 0o770
SPOOL_UMASK = 0o007
"""What spoold's own commands create in the spool is shared with the group and nobody else."""


@dataclass(frozen=True)
class Folder:
    """What `inspect` saw of one spool folder; `mode` None: it does not exist."""

    path: Path
    is_root: bool
    mode: int | None
    gid: int | None
    is_dir: bool = True


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    mode: int | None = None
    """The mode `apply` sets (None: leave the mode)."""
    gid: int | None = None
    """The group `apply` sets (None: leave the group)."""
    create: bool = False


def wanted_mode(mode: int, is_root: bool) -> int:
    """The nearest good mode: add what is missing, drop what is too much, keep the rest (pure)."""
    needs, forbids = (ROOT_NEEDS, ROOT_FORBIDS) if is_root else (FOLDER_NEEDS, FOLDER_FORBIDS)
    return (stat.S_IMODE(mode) | needs) & ~forbids


def describe(mode: int) -> str:
    """`drwxrws---`: the mode as `ls -l` shows it."""
    return stat.filemode(stat.S_IFDIR | stat.S_IMODE(mode))


def problems(folders: list[Folder], group_name: str = "the spool's group") -> list[Problem]:
    """Each folder whose mode or group keeps submitters out or lets others in, in one line each (pure)."""
    root_gid = folders[0].gid if folders and folders[0].is_root else None
    found = []
    for f in folders:
        if f.mode is None:
            found.append(Problem(f.path, f"{f.path} is missing", CREATE_MODE, root_gid, create=True))
            continue
        if not f.is_dir:
            found.append(Problem(f.path, f"{f.path} is not a directory (move it away, then run `spoold init`)"))
            if f.is_root:
                break  # nothing below it to look at
            continue
        want = wanted_mode(f.mode, f.is_root)
        if stat.S_IMODE(f.mode) != want:
            found.append(Problem(f.path, f"{f.path} is {describe(f.mode)}, wants {describe(want)}: {_why(f.mode, f.is_root)}", want))
        if not f.is_root and root_gid is not None and f.gid != root_gid:
            found.append(
                Problem(f.path, f"{f.path} belongs to group {_group(f.gid)}, not {group_name} (the spool root's group)", gid=root_gid)
            )
    return found


def _why(mode: int, is_root: bool) -> str:
    m = stat.S_IMODE(mode)
    reasons = []
    if not m & stat.S_ISGID:
        reasons.append("not setgid, so new files would not keep the group")
    if is_root and (m & 0o050) != 0o050:
        reasons.append("group members cannot enter it")
    if not is_root and (m & 0o070) != 0o070:
        reasons.append("group members cannot write in it")
    if m & 0o007:
        reasons.append("others have access")
    if not is_root and m & stat.S_ISVTX:
        reasons.append("sticky, so the daemon cannot move submitters' files")
    if (m & 0o700) != 0o700:
        reasons.append("its owner lacks access")
    return "; ".join(reasons)


def _group(gid: int | None) -> str:
    if gid is None:
        return "?"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ---- I/O -------------------------------------------------------------------------------------


def layout(root: Path) -> list[Path]:
    return [root, *(root / s.value for s in JobState)]


def inspect(root: Path) -> list[Folder]:
    """The root and its four state folders as they are on disk now."""
    folders = []
    for path in layout(root):
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            folders.append(Folder(path, path == root, None, None))
            continue
        folders.append(Folder(path, path == root, st.st_mode, st.st_gid, stat.S_ISDIR(st.st_mode)))
    return folders


def group_name(root: Path) -> str:
    try:
        return _group(root.stat().st_gid)
    except FileNotFoundError:
        return "the spool's group"


def check(root: Path) -> list[str]:
    """One line per problem with the spool's modes (empty: all good)."""
    return [p.message for p in problems(inspect(root), group_name(root))]


def apply(problem: Problem) -> str | None:
    """Fix one problem; returns what was done, or None if it needs a person."""
    path = problem.path
    if problem.create:
        path.mkdir()
        if problem.gid is not None and path.stat().st_gid != problem.gid:
            os.chown(path, -1, problem.gid)
        os.chmod(path, CREATE_MODE)  # explicitly: mkdir drops setgid and obeys the umask
        return f"created {path} ({describe(CREATE_MODE)}, group {_group(path.stat().st_gid)})"
    if problem.gid is not None:
        os.chown(path, -1, problem.gid)
        return f"set the group of {path} to {_group(problem.gid)}"
    if problem.mode is not None:
        before = path.stat().st_mode
        os.chmod(path, problem.mode)
        return f"changed {path} from {describe(before)} to {describe(problem.mode)}"
    return None


def init(root: Path, fix: bool) -> tuple[list[str], list[str], bool]:
    """`spoold init`: create what is missing, fix the rest only if `fix`.
    Returns (what was done, problems left, whether `--fix` would fix some of them)."""
    done, left, fixable = [], [], False
    if not root.exists():
        root.mkdir(parents=True)
        os.chmod(root, CREATE_MODE)
        done.append(f"created {root} ({describe(CREATE_MODE)}, group {_group(root.stat().st_gid)})")
    for problem in problems(inspect(root), group_name(root)):
        if not (problem.create or fix):
            left.append(problem.message)
            fixable = fixable or problem.mode is not None or problem.gid is not None
            continue
        try:
            did = apply(problem)
        except OSError as exc:
            left.append(f"{problem.message} (cannot fix: {exc.strerror})")
            continue
        (done if did else left).append(did or problem.message)
    return done, left, fixable


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(SPOOL_UMASK)
    os.umask(old)
    return old


def umask_problem(umask: int) -> str | None:
    """What a daemon umask does wrong to the results it writes (pure); None if fine."""
    wrong = []
    if umask & 0o070:
        wrong.append("group members could not read its results or cancel running jobs")
    if (umask & 0o007) != 0o007:
        wrong.append("others could read what it writes")
    if not wrong:
        return None
    return (f"umask {umask:04o}: {' and '.join(wrong)}; run the daemon with umask 0007 "
            "(the systemd units set UMask=0007; by hand: `umask 0007; spoold run`)")  # fmt: skip


def start_warnings(root: Path) -> list[str]:
    """What the daemon warns about once at start: each wrong folder, and a umask that keeps results from the group."""
    found = [f"spool permissions: {line} (`spoold init --fix` fixes it)" for line in check(root)]
    umask = umask_problem(current_umask())
    return found + ([umask] if umask else [])
