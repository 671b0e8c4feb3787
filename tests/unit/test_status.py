"""`spoold status`: active and recent jobs by default, --all for every job, --watch refreshing, no read per finished job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import spoold.control.status as status_module
from spoold.control.status import RECENT_SHOWN, collect, count_jobs, render
from spoold.spool.census import count_spool
from spoold.spool.layout import Spool

from handler_helpers import make_job
from spoold_helpers import child_env


def spool_with_history(root: Path, done: int, failed: int) -> Spool:
    spool = Spool(root)
    spool.init()
    base = time.time() - 100_000
    for i in range(done):
        job_dir, _ = make_job(root, f"d{i:03d}")
        os.utime(job_dir, (base + i, base + i))  # d{done-1} finished last
    for i in range(failed):
        job_dir, _ = make_job(root, f"f{i:03d}", status="failed")
        os.utime(job_dir, (base + i, base + i))
    (root / "inbox" / "queued.jsonl").write_text('{"prompt": "x"}\n')
    (root / "inbox" / "queued.yaml").write_text("{}\n")
    (root / "processing" / "running" / ".spoold").mkdir(parents=True)
    return spool


def test_default_shows_active_and_the_most_recent_finished_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = spool_with_history(tmp_path, done=60, failed=5)
    reads: list[str] = []
    real = status_module.read_json
    monkeypatch.setattr(status_module, "read_json", lambda path: reads.append(Path(path).parent.name) or real(path))
    rows = collect(spool, "tiny-random")
    names = [r["name"] for r in rows]
    assert names[:2] == ["queued", "running"]
    assert names[2 : 2 + RECENT_SHOWN] == [f"d{i:03d}" for i in range(59, 59 - RECENT_SHOWN, -1)]  # newest first
    assert names[2 + RECENT_SHOWN :] == [f"f{i:03d}" for i in range(4, -1, -1)]
    assert sorted(reads) == sorted(n for n in names if n != "queued")  # only the jobs shown are read

    text = render(rows, spool, count_jobs(spool), shown_all=False)
    head = text.splitlines()[0]
    assert "1 inbox, 1 processing, 60 done, 5 failed" in head and "--all" in head


def test_all_shows_every_job_and_a_name_finds_an_old_one(tmp_path: Path) -> None:
    spool = spool_with_history(tmp_path, done=30, failed=2)
    assert len(collect(spool, "tiny-random", show_all=True)) == 2 + 30 + 2
    old = collect(spool, "tiny-random", "d000")
    assert [(r["name"], r["state"], r["status"]) for r in old] == [("d000", "done", "completed")]
    assert collect(spool, "tiny-random", "queued")[0]["status"] == "queued"
    assert collect(spool, "tiny-random", "ghost") == []


def test_spool_counts_come_from_listings_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = spool_with_history(tmp_path, done=40, failed=3)

    def no_per_job_access(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"per-job access while counting: {args}")

    monkeypatch.setattr(os, "lstat", no_per_job_access)
    monkeypatch.setattr("builtins.open", no_per_job_access)
    # inbox/ entries may be stat'ed (the oldest-job gauge); finished ones never.
    monkeypatch.setattr(os, "stat", lambda path, **kw: _inbox_only(path, kw))
    counts, _ = count_spool(spool.root)
    assert counts == {"inbox": 1, "processing": 1, "done": 40, "failed": 3}


_real_stat = os.stat


def _inbox_only(path: object, kw: dict) -> os.stat_result:
    if "/inbox/" not in str(path):
        raise AssertionError(f"stat of {path} while counting")
    return _real_stat(path, **kw)  # type: ignore[arg-type]


def test_cli_status_all_json_and_watch(tmp_path: Path) -> None:
    spool = spool_with_history(tmp_path / "spool", done=25, failed=0)
    config = tmp_path / "spoold.yaml"
    config.write_text(yaml.safe_dump({"spool_dir": str(spool.root)}))
    base = [sys.executable, "-m", "spoold", "status", "--config", str(config)]
    plain = subprocess.run(base, capture_output=True, text=True, env=child_env(), timeout=60)
    assert plain.returncode == 0 and "25 done" in plain.stdout and "d000" not in plain.stdout and "d024" in plain.stdout
    every = subprocess.run([*base, "--all", "--json"], capture_output=True, text=True, env=child_env(), timeout=60)
    assert len(json.loads(every.stdout)) == 27

    # SIGINT as from a terminal: a test run started in the background (`cmd &` in a script) hands its children an ignored one
    sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    watch = subprocess.Popen([*base, "--watch", "--json"], stdout=subprocess.PIPE, text=True, env=child_env(), preexec_fn=sigint)
    assert watch.stdout is not None
    first = json.loads(watch.stdout.readline())
    make_job(spool.root, "arrived")  # a job finishes between two refreshes
    second = json.loads(watch.stdout.readline())
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=30) == 0  # Ctrl-C is how --watch ends
    assert "arrived" not in {r["name"] for r in first} and "arrived" in {r["name"] for r in second}


def test_the_daemons_census_lists_a_folder_again_only_when_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spoold.spool.census as census_module

    spool = spool_with_history(tmp_path, done=50, failed=1)
    past = time.time() - 60
    for state in ("processing", "done", "failed"):
        os.utime(tmp_path / state, (past, past))
    listed: list[str] = []
    real = census_module.count_folder
    monkeypatch.setattr(census_module, "count_folder", lambda folder: listed.append(Path(folder).name) or real(folder))
    census = census_module.SpoolCensus()
    expected = {"inbox": 1, "processing": 1, "done": 50, "failed": 1}
    assert census.count(spool.root)[0] == expected
    assert sorted(listed) == ["done", "failed", "processing"]
    listed.clear()
    assert census.count(spool.root)[0] == expected
    assert listed == []  # the unchanged history is not listed again (the inbox, the queue, always is)

    os.rename(tmp_path / "done" / "d000", tmp_path / "failed" / "d000")  # e.g. a requeue and a new failure
    assert census.count(spool.root)[0] == {**expected, "done": 49, "failed": 2}
    (tmp_path / "done" / "new").mkdir()
    assert census.count(spool.root)[0] == {**expected, "done": 50, "failed": 2}
    assert census.count(spool.root)[0] == count_spool(spool.root)[0]


def test_recent_jobs_come_from_the_notes_left_as_jobs_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spoold.spool import recent

    spool = spool_with_history(tmp_path, done=40, failed=2)
    for i in (5, 7, 9):  # finished after the rest (e.g. the only ones since an upgrade) ...
        recent.note(tmp_path / "done" / f"d{i:03d}")
    assert len(recent.recent(tmp_path, "done", RECENT_SHOWN)) == 3  # ... too few notes: status falls back to a scan
    assert [r["name"] for r in collect(spool, "m") if r["state"] == "done"][:3] == ["d039", "d038", "d037"]

    for i in range(40):
        recent.note(tmp_path / "done" / f"d{(i * 7) % 40:03d}")  # the order they finished in
    recent.note(tmp_path / "failed" / "f001")
    recent.note(tmp_path / "failed" / "f000")

    def no_scan(*args: object) -> list[str]:
        raise AssertionError("scanned every finished job although the notes name enough")

    monkeypatch.setattr(status_module, "_recent", no_scan)
    shown = collect(spool, "m")
    expected = [f"d{(i * 7) % 40:03d}" for i in range(39, 39 - RECENT_SHOWN, -1)]
    assert [r["name"] for r in shown if r["state"] == "done"] == expected
    # failed/ holds 2 jobs, both noted: shown without a scan, newest first.
    assert [r["name"] for r in shown if r["state"] == "failed"] == ["f000", "f001"]

    shutil.rmtree(tmp_path / "done" / expected[0])  # pruned or requeued: skipped
    assert expected[0] not in {r["name"] for r in collect(spool, "m")}


def test_notes_are_trimmed_per_state(tmp_path: Path) -> None:
    from spoold.spool import recent

    spool_with_history(tmp_path, done=1, failed=1)
    for _ in range(2 * recent.KEEP + recent.TRIM_EVERY):
        recent.note(tmp_path / "done" / "d000")
    recent.note(tmp_path / "failed" / "f000")
    notes = os.listdir(tmp_path / recent.RECENT_DIR)
    done = sum("-done-" in n for n in notes)  # trimmed after every TRIM_EVERY notes, not after each
    assert recent.KEEP <= done < recent.KEEP + recent.TRIM_EVERY and sum("-failed-" in n for n in notes) == 1
    for _ in range(2 * recent.KEEP):
        recent.note(tmp_path / "done" / "d000")
    assert sum("-done-" in n for n in os.listdir(tmp_path / recent.RECENT_DIR)) <= 2 * recent.KEEP + recent.TRIM_EVERY  # bounded


def test_the_daemon_notes_finished_jobs_for_status(tmp_path: Path) -> None:
    from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for

    with SpooldProcess(tmp_path) as d:
        d.start()
        drop_job(d.inbox, "fresh", [chat_line("a", "hi")], {})
        d.wait_finished("fresh")
        notes = d.spool / ".spoold" / "recent"

        def noted() -> list[str]:
            # The note follows the move into done/ (a hint for status, written after the commit that matters).
            return [n for n in os.listdir(notes) if n.endswith("-done-fresh")] if notes.is_dir() else []

        assert wait_for(noted, 10, what="the recent note of job fresh")
        assert d.stop() == 0


def test_a_job_that_leaves_while_status_looks_is_not_shown_half(tmp_path: Path) -> None:
    from spoold.spool.jobdir import JobDir
    from spoold.spool.states import JobState

    spool_with_history(tmp_path, done=1, failed=0)
    assert status_module._job_row(JobDir(tmp_path / "done" / "pruned-meanwhile"), JobState.DONE, time.time()) is None
    (tmp_path / "done" / "no-batch-yet").mkdir()
    row = status_module._job_row(JobDir(tmp_path / "done" / "no-batch-yet"), JobState.DONE, time.time())
    assert row is not None and row["name"] == "no-batch-yet"


def test_a_deep_inbox_shows_its_oldest_and_a_watch_reads_only_changed_sidecars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: with thousands waiting, a status (or each --watch refresh) does not read every sidecar."""
    spool = Spool(tmp_path)
    spool.init()
    waiting = status_module.INBOX_SHOWN * 4
    base = time.time() - 10_000
    for i in range(waiting):
        for suffix, text in ((".jsonl", '{"prompt": "x"}\n'), (".yaml", f"model: m{i % 3}\n")):
            path = tmp_path / "inbox" / f"w{i:04d}{suffix}"
            path.write_text(text)
            os.utime(path, (base + i, base + i))  # w0000 waited longest
    reads: list[str] = []
    real = status_module.parse_sidecar
    monkeypatch.setattr(status_module, "parse_sidecar", lambda data: reads.append(data) or real(data))

    cache = status_module.WatchCache()
    rows = collect(spool, "tiny-random", cache=cache)
    assert [r["name"] for r in rows] == [f"w{i:04d}" for i in range(status_module.INBOX_SHOWN)]
    assert [r["model"] for r in rows[:3]] == ["m0", "m1", "m2"]
    assert len(reads) == status_module.INBOX_SHOWN
    head = render(rows, spool, count_jobs(spool), shown_all=False).splitlines()[0]
    assert f"{waiting} inbox" in head and f"the {status_module.INBOX_SHOWN} oldest waiting" in head and "--all" in head

    reads.clear()
    (tmp_path / "inbox" / "w0001.yaml").write_text("model: changed\npriority: 3\n")
    rows = collect(spool, "tiny-random", cache=cache)  # the next --watch refresh
    assert len(reads) == 1 and rows[1]["model"] == "changed"

    every = collect(spool, "tiny-random", show_all=True)
    assert len(every) == waiting
    assert "oldest waiting" not in render(every, spool, count_jobs(spool), shown_all=True)
