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

from spoold.mounts import filesystem_type

log = logging.getLogger(__name__)

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "glusterfs", "ceph", "lustre")


def choose_mode(mode: str, path: Path, mountinfo: str | None = None) -> str:
    """`auto` polls on network filesystems, where inotify sees only this host's changes."""
    if mode != "auto":
        return mode
    fs = filesystem_type(path, mountinfo)
    return "poll" if fs in NETWORK_FS or fs.startswith("fuse") else "inotify"


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class InboxWatcher:
    def __init__(self, inbox: Path, mode: str, poll_interval: float, wake: threading.Event) -> None:
        self.inbox = inbox
        self.mode = choose_mode(mode, inbox)
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
