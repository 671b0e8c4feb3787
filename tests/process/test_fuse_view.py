"""A spool another client changes (issue 9): one daemon on a FUSE view of the spool (Debian's
bindfs, as an NFS client sees a share: its inotify never hears of the other side's writes),
another on the real path; jobs dropped on both sides; kill -9 on each side and takeovers both
ways. Every line exactly once, every job once.

Needs `bindfs` and /dev/fuse (`.ci/run` installs bindfs); without them this test fails, it does
not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from spoold.spool.jobdir import JobDir
from spoold.spool.lease import current
from spoold.spool.watcher import choose_mode

from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, chat_line, drop_job, wait_for

pytestmark = pytest.mark.slow

LINES = 60
SLOW = {"SPOOLD_ECHO_DELAY": "0.05"}


@contextmanager
def fuse_view(real: Path, view: Path) -> Iterator[Path]:
    if shutil.which("bindfs") is None:
        pytest.fail("bindfs is not installed (apt-get install -y bindfs; .ci/run does it)")
    if not Path("/dev/fuse").exists():
        pytest.fail("/dev/fuse is missing: this machine cannot mount FUSE filesystems")
    view.mkdir(parents=True)
    mounted = subprocess.run(["bindfs", str(real), str(view)], capture_output=True, text=True, timeout=30)
    assert mounted.returncode == 0, f"bindfs failed: {mounted.stderr.strip()}"
    try:
        yield view
    finally:
        unmount = shutil.which("fusermount") or shutil.which("fusermount3") or "umount"
        for flags in (["-u"], ["-uz"]) if "fusermount" in unmount else ([], ["-l"]):
            if subprocess.run([unmount, *flags, str(view)], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(1)


def _owner(spool: Path, name: str) -> str | None:
    """Who holds a job that has committed a chunk and is far from its end (a kill now leaves it half done)."""
    job = spool / "processing" / name
    try:
        next_line = json.loads(LatestCheckpoint(job / ".spoold").read_text())["next_line"]
    except (OSError, ValueError):
        return None
    lease = current(JobDir(job))
    return lease.node if lease and next_line <= LINES // 2 else None


def _working(spool: Path, node: str) -> list[str]:
    """The processing/ jobs `node` owns, half done."""
    try:
        names = [p.name for p in (spool / "processing").iterdir() if not p.name.startswith(".")]
    except FileNotFoundError:
        return []
    return [n for n in names if _owner(spool, n) == node]


def test_two_views_of_one_spool_fuse_and_real_with_takeovers(tmp_path: Path) -> None:
    common = {"lease_seconds": 2, "chunk_size": 5, "engine": {"window": 2, "max_active_jobs": 2}}
    real_side = SpooldProcess(tmp_path / "real", node_id="real-side", **common)
    with fuse_view(real_side.spool, tmp_path / "view") as view, real_side:
        assert choose_mode("auto", view / "inbox") == "poll"  # FUSE: poll, as on NFS
        assert choose_mode("auto", real_side.inbox) == "inotify"
        fuse_side = SpooldProcess(tmp_path / "fuse", spool_dir=str(view), node_id="fuse-side", **common)
        fuse_side.spool = view
        with fuse_side:
            jobs: dict[str, list[str]] = {}

            def drop(inbox: Path, name: str) -> None:
                ids = [f"{name}-{k}" for k in range(LINES)]
                drop_job(inbox, name, [chat_line(c, f"hello {c}") for c in ids], {"chunk_size": 5})
                jobs[name] = ids

            for i in range(4):
                drop(view / "inbox", f"via-fuse-{i}")
                drop(real_side.inbox, f"via-real-{i}")
            fuse_side.start(SLOW)
            real_side.start(SLOW)
            wait_for(lambda: "(poll)" in fuse_side.log() and "(inotify)" in real_side.log(), 30, what="both watchers")
            # kill -9 the FUSE-side daemon mid-job; the real side takes its jobs over after lease_seconds
            wait_for(lambda: _working(real_side.spool, "fuse-side"), 60, interval=0.02, what="the FUSE side to commit a chunk")
            fuse_side.kill()
            for i in range(4, 6):
                drop(real_side.inbox, f"via-real-{i}")
            # the FUSE side restarts at once (same node id, its old pid gone); kill -9 the real side mid-job
            fuse_side.start(SLOW)
            wait_for(lambda: _working(real_side.spool, "real-side"), 60, interval=0.02, what="the real side to commit a chunk")
            orphaned = _working(real_side.spool, "real-side")
            real_side.kill()
            # only the FUSE side now: it hears of real-side drops by polling, and takes the real side's jobs over
            for i in range(6, 8):
                drop(real_side.inbox, f"via-real-{i}")
            drop(view / "inbox", "via-fuse-4")
            for name, ids in jobs.items():
                job = fuse_side.wait_finished(name, timeout=120)
                assert job.parent.name == "done", name
                assert_exactly_once(job, ids)
                assert json.loads((job / "batch.json").read_text())["request_counts"]["total"] == LINES
            batches = [json.loads((real_side.spool / "done" / n / "batch.json").read_text())["spoold"] for n in jobs]
            assert sorted(p.name for p in (real_side.spool / "done").iterdir()) == sorted(jobs)  # no NAME.2: each job once
            assert not list((real_side.spool / "failed").iterdir()) and not list((real_side.spool / "processing").iterdir())
            assert not list((real_side.spool / "inbox").iterdir())
            assert any(b["claimed_by"] != b["node"] for b in batches), "no job was taken over"
            # what the real side held when it was killed was taken over and finished through the FUSE view
            assert orphaned and all(
                json.loads((real_side.spool / "done" / n / "batch.json").read_text())["spoold"]["node"] == "fuse-side" for n in orphaned
            )
            assert fuse_side.log().count(f"watching {view / 'inbox'} (poll)") == 2  # the restarted FUSE side polled too


def _shard_owners(spool: Path) -> dict[int, str]:
    """Running shards of processing/big and their owners (lease holders)."""
    from spoold.job.shards.plan import load_plan, shard_dirs, shard_state

    job = JobDir(spool / "processing" / "big")
    plan = load_plan(job) if job.path.exists() else None
    owners = {}
    for shard in shard_dirs(job, plan) if plan else []:
        try:
            state, lease, ckpt = shard_state(shard)
        except (OSError, ValueError):
            continue
        if lease is not None and not state.finished and ckpt.chunks > 0:
            owners[state.index] = lease.node
    return owners


def test_a_sharded_job_through_both_views_with_a_takeover(tmp_path: Path) -> None:
    """One job in 4 shards, dropped through the FUSE view: both daemons work on its shards; the real
    side is killed mid-shard; the FUSE side takes its shards over and merges: every line once."""
    common = {"lease_seconds": 2, "chunk_size": 20, "engine": {"window": 4}}
    real_side = SpooldProcess(tmp_path / "real", node_id="real-side", **common)
    with fuse_view(real_side.spool, tmp_path / "view") as view, real_side:
        fuse_side = SpooldProcess(tmp_path / "fuse", spool_dir=str(view), node_id="fuse-side", **common)
        fuse_side.spool = view
        with fuse_side:
            ids = [f"big-{k}" for k in range(2400)]
            drop_job(view / "inbox", "big", [chat_line(c, f"hello {c}") for c in ids], {"chunk_size": 20, "shards": 4})
            fuse_side.start(SLOW)
            real_side.start(SLOW)
            wait_for(lambda: {"real-side", "fuse-side"} <= set(_shard_owners(real_side.spool).values()), 60, interval=0.05,
                     what="both sides to work on shards")  # fmt: skip
            real_side.kill()
            job = fuse_side.wait_finished("big", timeout=180)
            assert job.parent.name == "done"
            assert_exactly_once(job, ids)
            batch = json.loads((job / "batch.json").read_text())
            assert batch["request_counts"] == {"total": 2400, "completed": 2400, "failed": 0}
            assert len(batch["spoold"]["shards"]) == 4
            assert "taking shard" in fuse_side.log() and "resuming from its checkpoint" in fuse_side.log()
            assert sorted(p.name for p in (real_side.spool / "done").iterdir()) == ["big"]
