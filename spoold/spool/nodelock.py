"""One name, one daemon: a lock per node id under `SPOOL/.spoold/nodes/`, kept alive by a heartbeat.

Leases and staged claims say which node owns a job, so two live daemons with one
node id would each believe they own the other's jobs. The lock makes the second
one refuse to start. Files are `<node>.<gen>.json` (the node id quoted); the
highest generation holds, and taking over a dead daemon's name creates the next
generation exclusively with link(2), which NFS honours too (as lease.py does).

Is the holder alive? Where this process can look at it (same boot and pid
namespace: the same kernel sees both), its pid and the pid's start time decide
at once, so a daemon restarted after a crash starts without waiting and a
reused pid is not mistaken for the old daemon. Elsewhere (another host, or a
boot since) the heartbeat decides: a holder renewed within `lease_seconds` is
watched; it is alive if it renews, dead if it does not for `lease_seconds`.
A clean stop removes the lock. `judge` is pure; the probes are passed in.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from spoold.errors import SpooldError
from spoold.fsutil import atomic_write_json, fsync_dir, read_json

log = logging.getLogger(__name__)

NODES_DIR = Path(".spoold") / "nodes"
WATCH_STEP = 0.25
"""Seconds between looks while watching a holder on another host for a heartbeat."""


class NodeTaken(SpooldError):
    """Another live daemon uses this node id on this spool."""


class NodeLost(Exception):
    """Another daemon took this node id over (we were thought dead)."""


class Holder(BaseModel):
    """What a lock file says about the daemon holding a node id."""

    node: str
    host: str
    pid: int
    scope: str = ""
    """boot id + pid namespace: where `pid` means this very process."""
    started: int = 0
    """The process's start time (clock ticks after boot, /proc/PID/stat), so a reused pid is told apart."""
    run: str = ""
    """Unique per daemon process; job records name the run that opened an attempt."""
    since: float = 0.0
    renewed_at: float = 0.0
    gen: int = 0

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {since}"


class Verdict(str, Enum):
    FREE = "free"
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"  # another host or boot, heartbeat fresh: watch it


@dataclass(frozen=True)
class Me:
    host: str
    pid: int
    scope: str
    started: int


PidProbe = Callable[[int], int | None]
"""pid -> its start time, or None when no such (live, non-zombie) process exists."""


def judge(holder: Holder | None, me: Me, now: float, lease_seconds: float, probe: PidProbe) -> Verdict:
    """Pure (the probe aside): whether a holder's lock may be taken over."""
    if holder is None:
        return Verdict.FREE
    if holder.scope and holder.scope == me.scope:
        if holder.pid == me.pid and holder.started == me.started:
            return Verdict.DEAD  # this very process: a daemon object it made earlier and dropped
        return Verdict.ALIVE if probe(holder.pid) == holder.started else Verdict.DEAD
    if now - holder.renewed_at > lease_seconds:
        return Verdict.DEAD
    return Verdict.UNKNOWN


def run_is_alive(holder: Holder | None, run: str, me: Me, now: float, lease_seconds: float, probe: PidProbe) -> bool:
    """Pure (the probe aside): whether the daemon run `run` still holds its node and lives."""
    if holder is None or not run or holder.run != run:
        return False
    if holder.scope and (holder.scope, holder.pid, holder.started) == (me.scope, me.pid, me.started):
        return True  # this very process
    return judge(holder, me, now, lease_seconds, probe) in (Verdict.ALIVE, Verdict.UNKNOWN)


# ---- this host ------------------------------------------------------------------------------


def proc_start(pid: int) -> int | None:
    """A live process's start time in clock ticks after boot; None if gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def current_me() -> Me:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot, pidns = "", ""
    pid = os.getpid()
    return Me(socket.gethostname(), pid, f"{boot}/{pidns}" if boot else "", proc_start(pid) or 0)


# ---- the lock files -------------------------------------------------------------------------


def _stem(node: str) -> str:
    return "node-" + quote(node, safe="")


def _generations(folder: Path, node: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(_stem(node))}\.(\d+)\.json$")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [int(m.group(1)) for m in map(pattern.match, names) if m]


def current(folder: Path, node: str) -> Holder | None:
    for _ in range(5):  # a file may vanish between the listing and the read (a takeover, a clean stop)
        gens = _generations(folder, node)
        if not gens:
            return None
        gen = max(gens)
        try:
            holder = Holder.model_validate(read_json(folder / f"{_stem(node)}.{gen}.json"))
        except FileNotFoundError:
            continue
        except (ValueError, ValidationError):
            return Holder(node=node, host="?", pid=0, gen=gen)  # unreadable: as old as can be
        holder.gen = gen
        return holder
    return None


def live_run(spool_root: Path, node: str | None, run: str, lease_seconds: float) -> Holder | None:
    """The holder of `node` if it is the daemon run `run` and still alive, else None."""
    if not node or not run:
        return None
    holder = current(spool_root / NODES_DIR, node)
    return holder if run_is_alive(holder, run, current_me(), time.time(), lease_seconds, proc_start) else None


class NodeLock:
    """This daemon's hold on its node id: `acquire`, then `keep` (heartbeat thread), `release` on a clean stop."""

    def __init__(self, folder: Path, holder: Holder, interval: float) -> None:
        self.folder = folder
        self.holder = holder
        self.interval = interval
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.folder / f"{_stem(self.holder.node)}.{self.holder.gen}.json"

    @property
    def run(self) -> str:
        return self.holder.run

    def renew(self) -> None:
        """Refresh the heartbeat; raises NodeLost if a newer generation exists."""
        newest = max(_generations(self.folder, self.holder.node), default=0)
        if newest > self.holder.gen:
            other = current(self.folder, self.holder.node)
            raise NodeLost(f"another daemon took node id {self.holder.node} over ({other.describe() if other else 'gone again'})")
        self.holder = self.holder.model_copy(update={"renewed_at": time.time()})
        atomic_write_json(self.path, self.holder.model_dump(exclude={"gen"}))

    def keep(self, on_lost: Callable[[str], None], alive: Callable[[], bool] | None = None) -> None:
        """Renew every `interval` seconds on a thread of its own; `on_lost(message)` once if taken over.

        `alive`: while it says False (the daemon's loop is wedged), the heartbeat pauses, so daemons on
        other hosts see this one as gone after `lease_seconds`, as they would a crashed one."""

        def beat() -> None:
            while not self._done.wait(self.interval):
                if alive is not None and not alive():
                    continue
                try:
                    self.renew()
                except NodeLost as exc:
                    on_lost(str(exc))
                    return
                except OSError as exc:  # a passing NFS error: keep trying, a lapse would invite a takeover
                    log.warning("renewing the node lock %s failed (%s); retrying", self.path, exc.strerror)

        self._thread = threading.Thread(target=beat, name="node-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """A clean stop: stop the heartbeat and remove the lock, if it is still ours."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            now = current(self.folder, self.holder.node)
            if now is not None and now.run == self.holder.run:
                self.path.unlink(missing_ok=True)
                fsync_dir(self.folder)
        except OSError as exc:
            log.warning("could not remove the node lock %s (%s); the next start checks whether it is stale", self.path, exc.strerror)


def acquire(
    spool_root: Path, node: str, lease_seconds: float, run: str | None = None,
    *, me: Me | None = None, probe: PidProbe = proc_start, sleep: Callable[[float], None] = time.sleep,
) -> NodeLock:  # fmt: skip
    """Hold `node` on this spool, or raise NodeTaken naming the live daemon that holds it.

    A holder this host cannot see is watched for up to `lease_seconds`: a renewal
    means it is alive (refused), none means it is dead (taken over).
    """
    folder = spool_root / NODES_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpooldError(f"cannot create {folder} ({exc.strerror}): the daemon's user must be able to write the spool root") from None
    me = me or current_me()
    run = run or uuid.uuid4().hex
    watched: tuple[int, float, str] | None = None
    watch_started = 0.0
    while True:
        holder = current(folder, node)
        verdict = judge(holder, me, time.time(), lease_seconds, probe)
        if verdict is Verdict.ALIVE:
            raise NodeTaken(_taken(node, holder))
        if verdict is Verdict.UNKNOWN:
            assert holder is not None
            seen = (holder.gen, holder.renewed_at, holder.run)
            if watched is None:
                watched, watch_started = seen, time.monotonic()
                log.info(
                    "node id %s is held by %s; waiting up to %.0f s to see whether it is alive", node, holder.describe(), lease_seconds
                )
            elif seen != watched:
                raise NodeTaken(_taken(node, holder))
            if time.monotonic() - watch_started < lease_seconds:
                sleep(WATCH_STEP)
                continue
        if holder is not None:
            log.info("node id %s was held by a daemon that is gone (%s); taking it over", node, holder.describe())
        gen = max(_generations(folder, node), default=0) + 1
        now = time.time()
        mine = Holder(node=node, host=me.host, pid=me.pid, scope=me.scope, started=me.started, run=run, since=now, renewed_at=now, gen=gen)
        if _create(folder, mine):
            return NodeLock(folder, mine, interval=max(0.2, min(lease_seconds / 3, 10.0)))
        watched = None  # another daemon was faster: judge the new holder afresh


def _create(folder: Path, holder: Holder) -> bool:
    stem = _stem(holder.node)
    tmp = folder / f".{stem}.{holder.gen}.{holder.run}.tmp"
    atomic_write_json(tmp, holder.model_dump(exclude={"gen"}))
    try:
        os.link(tmp, folder / f"{stem}.{holder.gen}.json")
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    latest = current(folder, holder.node)
    if latest is None or latest.gen != holder.gen or latest.run != holder.run:
        return False  # believe the disk, not the return code
    for old in _generations(folder, holder.node):
        if old < holder.gen:
            (folder / f"{stem}.{old}.json").unlink(missing_ok=True)
    return True


def _taken(node: str, holder: Holder | None) -> str:
    who = holder.describe() if holder else "unknown"
    return f"node id {node} is in use by another running daemon on this spool ({who}); give each daemon its own node_id (or SPOOLD_NODE_ID)"
