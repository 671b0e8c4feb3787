"""Throwaway Unix users for tests that run the real CLI and daemon as several people (needs root).

`UnixUsers` creates a group and users with unique names (`useradd`/`groupadd`) and removes them
afterwards; `run_as` runs a command as one of them with `setpriv` (no PAM, no login shell) under
a given umask. The venv's interpreter may live under a folder others cannot enter (CI's
/root/.pyenv): `opened_for_others` adds o+x to such ancestors for the test and restores them.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spoold_helpers import child_env


class UnixUsers:
    def __init__(self) -> None:
        self.prefix = f"spt{secrets.token_hex(3)}"
        self.group = f"{self.prefix}-spool"
        self.users: list[str] = []
        self.groups: list[str] = []

    def add_group(self) -> str:
        _root("groupadd", self.group)
        self.groups.append(self.group)
        return self.group

    def add_user(self, role: str, *, primary: str | None = None, member_of: str | None = None) -> str:
        name = f"{self.prefix}-{role}"
        args = ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
        if primary:
            args += ["--gid", primary]
        else:
            args += ["--user-group"]
        if member_of:
            args += ["--groups", member_of]
        _root(*args, name)
        self.users.append(name)
        return name

    def remove(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", name], capture_output=True)
        for name in self.groups:
            subprocess.run(["groupdel", name], capture_output=True)
        left = [n for n in self.users if _exists(pwd.getpwnam, n)] + [n for n in self.groups if _exists(grp.getgrnam, n)]
        assert not left, f"could not remove test users/groups {left}"

    def gid(self, name: str) -> int:
        return grp.getgrnam(name).gr_gid

    def uid(self, name: str) -> int:
        return pwd.getpwnam(name).pw_uid


def as_user_argv(user: str, argv: list[str], umask: str = "022", *, runuser: bool = False) -> list[str]:
    """`argv` as `user` (with their groups) under `umask`: by `setpriv`, or `runuser` as the install docs do."""
    shell = ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *argv]
    if runuser:
        return ["runuser", "-u", user, "--", *shell]
    primary = pwd.getpwnam(user).pw_gid
    return ["setpriv", f"--reuid={user}", f"--regid={primary}", "--init-groups", "--", *shell]


def run_as(
    user: str, *argv: str, umask: str = "022", cwd: Path | None = None, env: dict[str, str] | None = None, runuser: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user_argv(user, list(argv), umask, runuser=runuser), capture_output=True, text=True, timeout=120,
        cwd=cwd or "/", env=child_env(env),
    )  # fmt: skip


def spoold_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "spoold", *args]


@contextmanager
def opened_for_others(paths: list[Path]) -> Iterator[None]:
    """Let other users reach `paths` (o+x on each ancestor that lacks it), restoring the modes afterwards."""
    changed: dict[Path, int] = {}
    for path in paths:
        for folder in [path, *path.parents]:
            if folder in changed or not folder.is_dir():
                continue
            mode = stat.S_IMODE(folder.stat().st_mode)
            if not mode & stat.S_IXOTH:
                changed[folder] = mode
                os.chmod(folder, mode | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, mode in changed.items():
            os.chmod(folder, mode)


def code_paths() -> list[Path]:
    """What a child `python -m spoold` needs to reach: the interpreter, the venv, and spoold's source."""
    import spoold

    paths = [Path(os.path.realpath(sys.executable)).parent, Path(sys.prefix), Path(sys.base_prefix), Path(spoold.__file__).resolve().parent]
    paths += [Path(p).resolve() for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return paths


def _root(*argv: str) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr.strip()}"


def _exists(lookup, name: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        lookup(name)
    except KeyError:
        return False
    return True
