"""Inbox change hints from watchdog: the job names whose files changed. Hints only: the
daemon rescans on a timer anyway, so an overflowed inotify queue or a missed NFS change
never strands a job. In poll mode there is no observer: the daemon's own rescan every
`poll_interval` is the watcher (one listing, not two)."""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

from watchdog.events import FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from spoold.spool.names import split_job_file

from spoold.spool.mounts import filesystem_type

log = logging.getLogger(__name__)

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "glusterfs", "ceph", "lustre")


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


class _Hints(FileSystemEventHandler):
    def __init__(self, event: threading.Event, names: queue.SimpleQueue[str]) -> None:
        self._event = event
        self._names = names

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            parts = split_job_file(os.path.basename(os.fsdecode(path))) if path else None
            if parts is not None:
                self._names.put(parts[0])
        self._event.set()


MOVE_PAIRING_DELAY = 0.005
"""watchdog holds an unmatched IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and its
event queue is FIFO: every claim moves a file out of the inbox (unmatched there), so every event
behind it, such as the next sidecar's arrival, waited half a second. The hints need names, not pairs."""


def _no_move_pairing_delay() -> None:
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    InotifyMoveEventGrouper.delay = MOVE_PAIRING_DELAY  # read when the observer builds its grouper


HINT_EVENTS = [FileCreatedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent]
"""The inotify events asked for (IN_CREATE, IN_CLOSE_WRITE, IN_MOVED_FROM/TO, IN_DELETE): an upload
starts, is written out, is renamed in or out, or goes. Not IN_MODIFY (one per write(2) of an upload:
thousands of hints for one large file, the settle deadline re-stats it anyway), nor IN_OPEN,
IN_CLOSE_NOWRITE or IN_ATTRIB (every read of an inbox file, the daemon's own peeks included):
fewer wake-ups of the watcher's threads and of the loop per job."""


class InboxWatcher:
    def __init__(self, inbox: Path, mode: str, wake: threading.Event) -> None:
        self.inbox = inbox
        self.mode = choose_mode(mode, inbox)
        quiet_stop_race()
        self._names: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        if self.mode == "inotify":
            _no_move_pairing_delay()
            self._observer = Observer()
            self._observer.schedule(_Hints(wake, self._names), str(inbox), recursive=False, event_filter=HINT_EVENTS)

    def changed(self) -> list[str]:
        """Job names hinted since the last call."""
        names = []
        while True:
            try:
                names.append(self._names.get_nowait())
            except queue.Empty:
                return names

    def start(self) -> None:
        if self._observer is None:
            log.info("watching %s (poll)", self.inbox)
            return
        try:
            self._observer.start()
        except OSError as exc:  # e.g. inotify watch limit reached: the rescan timer still works
            log.warning("cannot watch %s (%s); relying on the rescan every poll_interval", self.inbox, exc)
            return
        log.info("watching %s (%s)", self.inbox, self.mode)

    def stop(self) -> None:
        if self._observer is not None and self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)
