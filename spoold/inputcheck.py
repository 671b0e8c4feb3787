"""Is a claimed job's input safe to read? Regular files with one name, readable by the daemon, only.

A submitter controls what lands in inbox/: a symlink would make the daemon
read (and echo into results) a file the submitter may not read, a FIFO would
block it forever, a hard link with a second name may be someone else's file.
Right after the claim rename, `refuse_unsafe` looks at `input.jsonl` and
`meta.yaml` in the job folder with lstat and, for what passes, opens it
without following links and without blocking and checks fstat again (the
name could have been swapped in between). A refused entry is renamed, unread,
to `NAME.refused` in the job folder (nothing in spoold reads that name, so no
handler or later step follows it), and the reason becomes the job's failure:
one sentence in batch.json and the log. A regular file the daemon may not
read stays where it is, so its owner can fix its mode and `spoold requeue`.

`refusal` is pure; `refuse_unsafe` is the one call the claim makes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_LINE_BYTES = 16 << 20
"""Default `max_line_bytes` (16 MiB): a 1M-token prompt as text (~4 MB) or as token ids (~7 MB) fits
with room to spare; parsing a line costs about twice its size again (benchmarks/long_line.md)."""

CHECKED = ("input.jsonl", "meta.yaml")
REFUSED_SUFFIX = ".refused"
ADVICE = "spoold reads only regular files with a single name: copy the file into inbox/, do not link it"


def refusal(st: os.stat_result, *, one_name: bool = True) -> str | None:
    """Why a file with this lstat/fstat may not be read, or None (pure). `one_name`: refuse hard links too."""
    mode = st.st_mode
    kinds = (
        (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
    )  # fmt: skip
    for test, kind in kinds:
        if test(mode):
            return f"is {kind}"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if one_name and st.st_nlink != 1:
        return f"is a hard link with {st.st_nlink} names"
    return None


def examine(path: Path) -> str | None:
    """Why `path` may not be read (refused kind, or unreadable); None if it is fine or absent."""
    try:
        reason = refusal(os.lstat(path))
    except FileNotFoundError:
        return None
    if reason:
        return reason
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        return "unreadable"
    except OSError as exc:  # ELOOP: it became a symlink since the lstat
        return f"could not be opened safely ({exc.strerror})"
    try:
        return refusal(os.fstat(fd))
    finally:
        os.close(fd)


def safe_opener(path: str | os.PathLike[str], flags: int) -> int:
    """An `open(..., opener=safe_opener)` for reading input: no symlink followed, no blocking,
    regular files only (the claim has checked the hard-link count); anything else is EACCES with the reason."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(errno.EACCES, f"it is a symbolic link ({ADVICE})", os.fspath(path)) from None
        raise
    reason = refusal(os.fstat(fd), one_name=False)
    if reason:
        os.close(fd)
        raise PermissionError(errno.EACCES, f"it {reason} ({ADVICE})", os.fspath(path))
    return fd


def read_regular(path: Path) -> bytes:
    """A sidecar's bytes, read with `safe_opener` (a FIFO planted in its place must not hang the daemon)."""
    with open(path, "rb", opener=safe_opener) as fh:
        return fh.read()


def refuse_unsafe(job_dir: Path) -> str | None:
    """Check a just-claimed job's files; move refused ones aside unread. Returns the job's failure reason, or None.

    Safe to repeat after a crash: an entry already moved aside is found again under its `.refused` name.
    """
    reasons = []
    for name in CHECKED:
        path, aside = job_dir / name, job_dir / f"{name}{REFUSED_SUFFIX}"
        if os.path.lexists(aside):
            reason = refusal(os.lstat(aside)) or "could not be read safely"
            reasons.append(f"{name} {reason}; it was left unread as {aside.name}")
            continue
        found = examine(path)
        if found is None:
            continue
        reason = found
        if reason == "unreadable":
            st = os.lstat(path)
            reasons.append(
                f"{name} is not readable by the daemon (mode {stat.filemode(st.st_mode)}): "
                "make it readable by the spool's group (chmod g+r) and `spoold requeue` the job"
            )  # fmt: skip
        elif reason:
            os.rename(path, aside)
            reasons.append(f"{name} {reason}; it was left unread as {aside.name}")
    if not reasons:
        return None
    refused_kind = any(REFUSED_SUFFIX in r for r in reasons)
    return "; ".join(reasons) + (f" ({ADVICE})" if refused_kind else "")
