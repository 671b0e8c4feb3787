"""Inbox change hints from watchdog. Hints only: the daemon rescans on a timer anyway,
so an overflowed inotify queue or a missed NFS change never strands a job."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

log = logging.getLogger(__name__)

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "glusterfs", "ceph", "lustre")


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem holding `path`, from /proc/self/mountinfo (longest mount prefix)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "unknown"
    target = str(Path(path).resolve())
    best, best_type = "", "unknown"
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def choose_mode(mode: str, path: Path, mountinfo: str | None = None) -> str:
    """`auto` polls on network filesystems, where inotify sees only this host's changes."""
    if mode != "auto":
        return mode
    fs = filesystem_type(path, mountinfo)
    return "poll" if fs in NETWORK_FS or fs.startswith("fuse") else "inotify"


class _StopRaceFilter(logging.Filter):
    """watchdog logs an ERROR when an inotify read races the observer's stop: `stop()` sets the
    stopped flag, then drops the inotify handle, while the emitter thread may already be inside
    `queue_events()` (watchdog/observers/inotify.py). The read is simply skipped, so nothing is
    wrong; the record is demoted to DEBUG so a clean stop leaves the journal quiet."""

    MESSAGE = "called when the thread is inactive"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and self.MESSAGE in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_stop_race() -> None:
    """Install the filter on watchdog's inotify logger once (not at import time)."""
    logger = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _StopRaceFilter) for f in logger.filters):
        logger.addFilter(_StopRaceFilter())


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class InboxWatcher:
    def __init__(self, inbox: Path, mode: str, poll_interval: float, wake: threading.Event) -> None:
        self.inbox = inbox
        self.mode = choose_mode(mode, inbox)
        quiet_stop_race()
        self._observer: BaseObserver = PollingObserver(timeout=poll_interval) if self.mode == "poll" else Observer()
        self._observer.schedule(_Wake(wake), str(inbox), recursive=False)

    def start(self) -> None:
        try:
            self._observer.start()
        except OSError as exc:  # e.g. inotify watch limit reached: the rescan timer still works
            log.warning("cannot watch %s (%s); relying on the rescan every poll_interval", self.inbox, exc)
            return
        log.info("watching %s (%s)", self.inbox, self.mode)

    def stop(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)
