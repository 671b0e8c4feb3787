"""Sharded jobs on real daemons sharing a spool: kill -9s and restarts, a frozen owner (SIGSTOP), status."""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from spoold_helpers import SpooldProcess, assert_exactly_once, chat_line, drop_job, wait_for

pytestmark = pytest.mark.slow


def _daemons(tmp_path: Path, count: int, **config: object) -> list[SpooldProcess]:
    first = SpooldProcess(tmp_path / "d0", node_id="host-0", **config)
    others = []
    for i in range(1, count):
        other = SpooldProcess(tmp_path / f"d{i}", spool_dir=str(first.spool), node_id=f"host-{i}", **config)
        other.spool = first.spool
        others.append(other)
    return [first, *others]


def _exec_handler(tmp_path: Path) -> tuple[list[dict], Path]:
    script = tmp_path / "note.py"
    out = tmp_path / "handler.out"
    script.write_text(
        "import os\nopen(os.environ['OUT'], 'a').write(os.environ['SPOOLD_JOB'] + ' ' + os.environ['SPOOLD_STATUS'] + '\\n')\n"
    )
    return [
        {
            "name": "note",
            "type": "exec",
            "on": ["completed", "failed", "cancelled"],
            "command": [sys.executable, str(script)],
            "env": {"OUT": str(out)},
            "timeout": 30,
        }
    ], out


def test_a_sharded_job_on_three_daemons_with_kills_is_exactly_once_and_merged_once(tmp_path: Path) -> None:
    handlers, out = _exec_handler(tmp_path)
    daemons = _daemons(tmp_path, 3, lease_seconds=2, engine={"window": 16}, handlers=handlers)
    ids = [f"b{i}" for i in range(6000)]
    drop_job(daemons[0].inbox, "big", [chat_line(c, "hi") for c in ids], {"chunk_size": 50, "shards": 6})
    slow = {"SPOOLD_ECHO_DELAY": "0.05"}
    rng = random.Random(7)
    try:
        for d in daemons:
            d.start(slow)
        processing = daemons[0].spool / "processing" / "big"
        wait_for(lambda: (processing / ".spoold" / "shards.json").exists(), 30, what="the job to be cut into shards")
        owners: set[str] = set()
        for _ in range(4):  # kill -9 a random daemon now and then, and start it again
            time.sleep(rng.uniform(0.8, 2.0))
            owners |= _running_owners(daemons[0])
            victim = rng.choice(daemons)
            victim.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            victim.start(slow)
        job = daemons[0].wait_finished("big", timeout=180)
        # while the daemons still run: a run planned just before they all stop would wait for the next daemon
        wait_for(lambda: out.exists() and out.read_text().strip(), 30, what="the handler")
        time.sleep(1.0)  # a second run, if there were one, would show by now
    finally:
        for d in daemons:
            d.__exit__()
    assert job.parent.name == "done", daemons[0].log()
    assert_exactly_once(job, ids)
    batch = json.loads((job / "batch.json").read_text())
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 6000, "completed": 6000, "failed": 0}
    shards = batch["spoold"]["shards"]
    assert [s["index"] for s in shards] == [1, 2, 3, 4, 5, 6] and sum(s["done"] for s in shards) == 6000
    assert len(owners) >= 2, f"the shards were worked on by several daemons at once: {owners}"
    assert not (job.parent / "big.2").exists() and not list((job.parent.parent / "processing").iterdir())
    assert out.read_text().splitlines() == ["big completed"], "handlers run once, for the whole job"


def _running_owners(d: SpooldProcess) -> set[str]:
    result = d.cli("status", "big", "--json")
    if result.returncode != 0:
        return set()
    rows = json.loads(result.stdout)
    return {s["node"] for r in rows for s in r.get("shards") or [] if s["status"] == "running" and s["node"]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jobs_completed(port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lines = [line for line in text.splitlines() if line.startswith('spoold_jobs_total{outcome="completed"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_status_shows_a_sharded_jobs_shards_and_their_owners(tmp_path: Path) -> None:
    ports = [_free_port(), _free_port()]
    daemons = _daemons(tmp_path, 2, lease_seconds=5, engine={"window": 8})
    for d, port in zip(daemons, ports):  # each daemon its own /metrics
        cfg = yaml.safe_load(d.config_path.read_text())
        cfg["metrics"] = {"listen": f"127.0.0.1:{port}"}
        d.config_path.write_text(yaml.safe_dump(cfg))
    ids = [f"s{i}" for i in range(2000)]
    drop_job(daemons[0].inbox, "big", [chat_line(c, "hi") for c in ids], {"chunk_size": 20, "shards": 2})
    try:
        for d in daemons:
            d.start({"SPOOLD_ECHO_DELAY": "0.05"})
        wait_for(lambda: len(_running_owners(daemons[0])) == 2, 60, what="both shards to run, one per daemon")
        text = daemons[0].cli("status", "big", check=True).stdout
        assert "shard 1/2" in text and "shard 2/2" in text and "host-0" in text and "host-1" in text
        live = json.loads((daemons[0].spool / "processing" / "big" / "batch.json").read_text())
        assert len(live["spoold"]["shards"]) == 2 and live["status"] == "in_progress"
        job = daemons[0].wait_finished("big", timeout=120)
        time.sleep(1.0)
        assert sum(_jobs_completed(port) for port in ports) == 1, "the job counts once, not once per shard"
    finally:
        for d in daemons:
            d.__exit__()
    assert_exactly_once(job, ids)


def test_a_frozen_owner_that_wakes_after_a_takeover_adds_nothing(tmp_path: Path) -> None:
    """SIGSTOP the owner longer than lease_seconds; another daemon takes the job over and ends it;
    SIGCONT: the woken daemon notices it lost the job, and the results stay exactly once."""
    a, b = _daemons(tmp_path, 2, lease_seconds=2, engine={"window": 8})
    ids = [f"z{i}" for i in range(1500)]
    drop_job(a.inbox, "job", [chat_line(c, "hi") for c in ids], {"chunk_size": 10})
    try:
        a.start({"SPOOLD_ECHO_DELAY": "0.02"})
        wait_for(
            lambda: (
                "chunk" in (a.spool / "processing" / "job" / "batch.json").read_text()
                if (a.spool / "processing" / "job" / "batch.json").exists()
                else False
            ),
            30,
            what="progress",
        )
        time.sleep(0.5)
        a.signal(signal.SIGSTOP)  # frozen wherever it is: inside a step, a flush, a checkpoint
        b.start({"SPOOLD_ECHO_DELAY": "0.02"})
        wait_for(lambda: "resuming from its checkpoint" in b.log(), 30, what="the takeover")
        time.sleep(1.0)
        a.signal(signal.SIGCONT)
        job = b.wait_finished("job", timeout=120)
        wait_for(lambda: "another daemon" in a.log(), 30, what="the woken daemon to notice")
        time.sleep(1.0)
    finally:
        a.__exit__()
        b.__exit__()
    assert job.parent.name == "done"
    assert_exactly_once(job, ids)
    assert json.loads((job / "batch.json").read_text())["spoold"]["node"] == "host-1"
    assert not (job.parent / "job.2").exists()


def test_kill_9_during_the_merge_then_a_restart_finishes_it_once(tmp_path: Path) -> None:
    """The merge of a large sharded job is killed as it starts (or just after: wherever the kill lands);
    the restarted daemon merges again and finishes the job once, every line once."""
    handlers, out = _exec_handler(tmp_path)
    (d,) = _daemons(tmp_path, 1, lease_seconds=2, engine={"window": 1024}, chunk_size=1000, handlers=handlers)
    ids = [f"m{i}" for i in range(20_000)]
    long_text = "x" * 300  # echo answers with its input: about 1 KB per record, a 20 MB merge
    drop_job(d.inbox, "big", [chat_line(c, long_text) for c in ids], {"shards": 3})
    try:
        d.start()
        wait_for(lambda: "merging 3 shards" in d.log(), 180, interval=0.005, what="the merge to start")
        d.kill()
        merged_before = (d.spool / "done" / "big").exists()
        d.start()
        job = d.wait_finished("big", timeout=120)
        wait_for(lambda: out.exists() and out.read_text().strip(), 30, what="the handler")
        time.sleep(1.0)
    finally:
        d.__exit__()
    assert job.parent.name == "done"
    assert_exactly_once(job, ids)
    assert json.loads((job / "batch.json").read_text())["request_counts"]["completed"] == 20_000
    assert out.read_text().splitlines() == ["big completed"], f"handlers run once (merged before the kill: {merged_before})"
