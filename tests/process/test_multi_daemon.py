"""Several daemons on one spool (a shared NFS spool, tested on a local directory)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, chat_line, drop_job, wait_for

pytestmark = pytest.mark.slow


def _second(first: SpooldProcess, root: Path, node: str, **config: object) -> SpooldProcess:
    other = SpooldProcess(root, spool_dir=str(first.spool), node_id=node, **config)
    other.spool = first.spool
    return other


def test_two_daemons_share_a_spool_each_job_runs_once(tmp_path: Path) -> None:
    # one slot each: with the default 8, the first daemon to look would take this whole small queue
    with (
        SpooldProcess(tmp_path / "a", node_id="host-a", watch={"mode": "poll"}, engine={"max_active_jobs": 1}) as a,
        _second(a, tmp_path / "b", "host-b", engine={"max_active_jobs": 1}) as b,
    ):
        jobs = {}
        for i in range(12):
            ids = [f"j{i}-{k}" for k in range(15)]
            drop_job(a.inbox, f"job{i}", [chat_line(c, "hi") for c in ids], {"chunk_size": 4})
            jobs[f"job{i}"] = ids
        slow = {"SPOOLD_ECHO_DELAY": "0.02"}
        a.start(slow)
        b.start(slow)
        nodes = set()
        for name, ids in jobs.items():
            job = a.wait_finished(name, timeout=90)
            assert job.parent.name == "done"
            assert_exactly_once(job, ids)
            nodes.add(json.loads((job / "batch.json").read_text())["spoold"]["node"])
        assert not list((a.spool / "done").glob("*.2"))
        assert nodes == {"host-a", "host-b"}, "both daemons should have taken work"


def test_stale_job_of_a_dead_daemon_is_taken_over(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path / "a", node_id="host-a", lease_seconds=2, engine={"window": 2}) as a:
        ids = [f"t{k}" for k in range(150)]
        drop_job(a.inbox, "orphaned", [chat_line(c, "hi") for c in ids], {"chunk_size": 5})
        a.start({"SPOOLD_ECHO_DELAY": "0.03"})
        wait_for(lambda: LatestCheckpoint(a.spool / "processing" / "orphaned" / ".spoold").exists(), 30, what="progress")
        a.kill()
        with _second(a, tmp_path / "b", "host-b") as b:
            cfg = yaml.safe_load(b.config_path.read_text())
            cfg["lease_seconds"] = 2
            b.config_path.write_text(yaml.safe_dump(cfg))
            started = time.monotonic()
            b.start()
            job = b.wait_finished("orphaned", timeout=60)
            assert time.monotonic() - started >= 1.0  # it waited for the lease to go stale
            assert_exactly_once(job, ids)
            batch = json.loads((job / "batch.json").read_text())
            assert batch["spoold"]["node"] == "host-b" and batch["spoold"]["claimed_by"] == "host-a"
