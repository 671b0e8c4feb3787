"""Nothing is published before it is durable: when a finished job is renamed into done/ or failed/,
every name created, renamed or removed inside it (results, job.json, batch.json, handlers.json) and
the contents of its results and records have been fsynced.

finish_job fsyncs each folder once before the move instead of once per write (and open_attempt's
record skips its folder's fsync); this test watches the file-system calls of real in-process runs
and fails if any write is left unsynced at the moment the job is published.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spoold.config import Config
from spoold.engine.echo import EchoEngine
from spoold.engine.profiles import load_profiles
from spoold.handlers.records import plan_runs
from spoold.job.active import JobContext
from spoold.job.finish import FinishHooks
from spoold.spool import lease as leases
from spoold.spool.claim import claim
from spoold.spool.layout import Spool

from handler_helpers import handler_config
from inline_driver import Hooks, run_inline
from spoold_helpers import assert_exactly_once, chat_line, drop_job

MUST_BE_DURABLE = {"output.jsonl", "errors.jsonl", "batch.json", "job.json", "handlers.json"}


class DiskWatch:
    """Which folders have entries changed since their last fsync, and which files have unsynced data."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, job_root: Path) -> None:
        self.fds: dict[int, str] = {}
        self.dirty_dirs: set[str] = set()
        self.dirty_files: set[str] = set()
        self.published: list[tuple[str, set[str], set[str]]] = []
        self.root = str(job_root)
        real = {
            name: getattr(os, name)
            for name in ("open", "close", "write", "fsync", "replace", "rename", "link", "unlink", "mkdir", "ftruncate", "rmdir")
        }

        def opened(path, flags, *args, **kwargs):
            fd = real["open"](path, flags, *args, **kwargs)
            path = os.fspath(path)
            self.fds[fd] = path
            if flags & os.O_CREAT:
                self._entry(path)
            if flags & os.O_TRUNC:
                self.dirty_files.add(path)
            return fd

        def closed(fd):
            self.fds.pop(fd, None)
            return real["close"](fd)

        def wrote(fd, data):
            if fd in self.fds:
                self.dirty_files.add(self.fds[fd])
            return real["write"](fd, data)

        def truncated(fd, length):
            if fd in self.fds:
                self.dirty_files.add(self.fds[fd])
            return real["ftruncate"](fd, length)

        def synced(fd):
            path = self.fds.get(fd)
            if path is not None:
                self.dirty_files.discard(path)
                self.dirty_dirs.discard(path)
            return real["fsync"](fd)

        def moved(name):
            def move(src, dst, *args, **kwargs):
                src, dst = os.fspath(src), os.fspath(dst)
                if name == "rename" and os.path.isdir(src) and os.path.dirname(os.path.dirname(dst)) == self.root:
                    self._publish(src, dst)
                result = real[name](src, dst, *args, **kwargs)
                self._entry(src)
                self._entry(dst)
                if name != "link":  # the name now holds src's file, synced or not
                    self.dirty_files.discard(dst)
                if src in self.dirty_files:
                    self.dirty_files.discard(src)
                    self.dirty_files.add(dst)
                return result

            return move

        def removed(name):
            def remove(path, *args, **kwargs):
                result = real[name](path, *args, **kwargs)
                self._entry(os.fspath(path))
                return result

            return remove

        monkeypatch.setattr(os, "open", opened)
        monkeypatch.setattr(os, "close", closed)
        monkeypatch.setattr(os, "write", wrote)
        monkeypatch.setattr(os, "ftruncate", truncated)
        monkeypatch.setattr(os, "fsync", synced)
        for name in ("replace", "rename", "link"):
            monkeypatch.setattr(os, name, moved(name))
        for name in ("unlink", "mkdir", "rmdir"):
            monkeypatch.setattr(os, name, removed(name))

    def _entry(self, path: str) -> None:
        self.dirty_dirs.add(os.path.dirname(path))

    def _publish(self, src: str, dst: str) -> None:
        """A job folder renamed from one state folder to another: record what is not durable inside it."""
        inside = src + os.sep
        dirs = {d for d in self.dirty_dirs if d == src or d.startswith(inside)}
        files = {f for f in self.dirty_files if f.startswith(inside) and os.path.basename(f) in MUST_BE_DURABLE}
        self.published.append((dst, dirs, files))


def _ctx(spool: Spool, config: Config, with_handlers: bool) -> JobContext:
    hooks = FinishHooks()
    if with_handlers:  # as HandlerDispatcher.plan_runs does it: handlers.json with no folder fsync of its own
        note = handler_config(name="note", type="python", **{"class": "handler_helpers:RecordingHandler"})
        hooks.before_move.append(lambda job, batch, selected: plan_runs(job.path, batch, ["note"], [note], node="n1", sync_dir=False))
    return JobContext(config=config, node="n1", spool_root=spool.root, profiles=load_profiles(), hooks=Hooks(), finish_hooks=hooks)


@pytest.mark.parametrize("lines,chunk,with_handlers", [(1, 256, False), (40, 7, True), (3, 1, True)])
def test_a_finished_job_is_durable_when_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: int, chunk: int, with_handlers: bool
) -> None:
    spool = Spool(tmp_path)
    spool.init()
    ids = [f"d{i}" for i in range(lines)]
    drop_job(spool.inbox, "job", [chat_line(c, "hi") for c in ids] + ["not json"], {"chunk_size": chunk})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 8})
    job = claim(spool, "job", "n1")
    assert job is not None
    watch = DiskWatch(monkeypatch, tmp_path)
    outcome = run_inline(_ctx(spool, config, with_handlers), EchoEngine("tiny-random", delay=0), job, leases.current(job))
    monkeypatch.undo()
    assert outcome == "completed"
    assert_exactly_once(spool.root / "done" / "job", [*ids, None])
    assert [dst for dst, _, _ in watch.published] == [str(spool.root / "done" / "job")]
    _, dirs, files = watch.published[0]
    assert dirs == set(), f"folders with unsynced entries at the move: {sorted(dirs)}"
    assert files == set(), f"files with unsynced data at the move: {sorted(files)}"
    assert (spool.root / "done" / "job" / ".spoold" / "handlers.json").exists() == with_handlers  # none without runs


def test_the_watch_sees_a_missing_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: without finish_job's folder fsyncs, the move is caught."""
    import spoold.job.finish as finish

    monkeypatch.setattr(finish, "fsync_dir", lambda path: None)
    spool = Spool(tmp_path)
    spool.init()
    drop_job(spool.inbox, "job", [chat_line(f"m{i}", "hi") for i in range(5)], {"chunk_size": 2})
    config = Config(spool_dir=tmp_path, engine={"backend": "echo", "window": 4})
    job = claim(spool, "job", "n1")
    assert job is not None
    watch = DiskWatch(monkeypatch, tmp_path)
    assert run_inline(_ctx(spool, config, True), EchoEngine("tiny-random", delay=0), job, leases.current(job)) == "completed"
    monkeypatch.undo()
    _, dirs, _ = watch.published[0]
    assert str(spool.root / "processing" / "job" / ".spoold") in dirs
    assert str(spool.root / "processing" / "job") in dirs
