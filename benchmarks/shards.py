"""Shards: one 200K-line job (echo backend) on 1, 2 and 4 daemons sharing a spool, and the takeover time.

`python benchmarks/shards.py` (part of `make bench`) replaces the "## Shards" section of results.md.

Two engines: the bare echo backend (the pipeline alone, CPU-bound: on this 2-core machine
4 daemons share 2 cores) and echo with a fixed step time (SPOOLD_ECHO_DELAY), which stands
in for an accelerator: a step costs wall time, not this machine's CPU, as a GPU step does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import merge_sections, write_requests  # noqa: E402


def _spool(work: Path, tag: str) -> Path:
    spool = work / f"spool-{tag}"
    for s in ("inbox", "processing", "done", "failed"):
        (spool / s).mkdir(parents=True, exist_ok=True)
    return spool


def _start(work: Path, spool: Path, node: str, env: dict[str, str], lease: float, window: int, poll: float = 0.5) -> subprocess.Popen:
    config = {
        "spool_dir": str(spool), "node_id": node, "lease_seconds": lease,
        "watch": {"settle_seconds": 0.2, "poll_interval": poll},
        "engine": {"backend": "echo", "window": window}, "chunk_size": 1000,
        "metrics": {"listen": ""}, "logging": {"format": "text", "level": "info"},
    }  # fmt: skip
    cfg = work / f"{spool.name}-{node}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(work / f"{spool.name}-{node}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)], stdout=log, stderr=log,
                            env={**os.environ, **env}, start_new_session=True)  # fmt: skip


def _drop(spool: Path, lines: int, sidecar: dict) -> None:
    write_requests(spool / "inbox" / ".big.jsonl.tmp", lines, 8)
    os.rename(spool / "inbox" / ".big.jsonl.tmp", spool / "inbox" / "big.jsonl")
    (spool / "inbox" / "big.yaml").write_text(yaml.safe_dump(sidecar))


def _wait(path: Path, procs: list[subprocess.Popen], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or all(p.poll() is not None for p in procs):
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)


def run_job(work: Path, daemons: int, shards: int, lines: int, env: dict[str, str], window: int) -> dict:
    """Drop-to-done seconds for one job of `lines` on `daemons` daemons, with `shards` shards."""
    tag = f"{daemons}d-{shards}s-{'step' if env else 'bare'}"
    spool = _spool(work, tag)
    procs = [_start(work, spool, f"node-{i}", env, 30, window) for i in range(daemons)]
    time.sleep(2.0)  # every daemon up before the job arrives
    started = time.monotonic()
    _drop(spool, lines, {"shards": shards})
    _wait(spool / "done" / "big" / "batch.json", procs)
    seconds = time.monotonic() - started
    _stop(procs)
    batch = json.loads((spool / "done" / "big" / "batch.json").read_text())
    counts = batch["request_counts"]
    assert counts["completed"] == lines, counts
    nodes = {s["node"] for s in batch["spoold"].get("shards") or []}
    return {"seconds": seconds, "nodes": len(nodes) or 1}


def takeover(work: Path, lease: float, poll: float) -> dict:
    """Three daemons, a 2-shard job: kill -9 the owner of shard 1; seconds until another daemon holds it and commits."""
    spool = _spool(work, "takeover")
    env = {"SPOOLD_ECHO_DELAY": "0.05"}
    procs = {f"node-{i}": _start(work, spool, f"node-{i}", env, lease, 64, poll) for i in range(3)}
    time.sleep(2.0)
    _drop(spool, 60_000, {"shards": 2})
    shard = spool / "processing" / "big" / ".spoold" / "shards" / "0"
    owner = None
    while owner is None:
        leases = sorted(shard.glob("lease.*.json")) if shard.exists() else []
        if leases and list(shard.glob("checkpoint.*.json")):
            owner = json.loads(leases[-1].read_text())["node"]
        time.sleep(0.05)
    killed = time.monotonic()
    os.killpg(procs[owner].pid, signal.SIGKILL)
    procs[owner].wait()
    new_owner = progress = None
    while progress is None:
        for path in shard.glob("lease.*.json"):
            try:
                holder = json.loads(path.read_text())["node"]
            except (OSError, ValueError):
                continue
            if holder != owner and new_owner is None:
                new_owner = time.monotonic() - killed
        if new_owner is not None:
            for path in shard.glob("checkpoint.*.json"):
                if int(path.name.split(".")[1]) > 1:  # written by the new owner's generation
                    progress = time.monotonic() - killed
        if time.monotonic() - killed > 120:
            raise SystemExit("no takeover within 120 s")
        time.sleep(0.02)
    _stop([p for n, p in procs.items() if n != owner])
    return {"taken": new_owner, "committed": progress}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    n = args.lines
    step = {"SPOOLD_ECHO_DELAY": "0.05"}
    rows = [
        f"\n## Shards: one {n:,}-line job on daemons sharing a spool (echo backend)\n",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"**{os.cpu_count()} cores**: every daemon runs on the same two cores, so the bare pipeline cannot scale here. "
        "The second engine sleeps 50 ms per step (window 256), which stands in for a GPU: its step costs wall time, "
        "not this machine's CPU. On real hosts each daemon has its own GPU and cores: expect the second column.\n",
        "| daemons | shards | bare echo: s | vs 1 daemon | simulated GPU step: s | vs 1 daemon | daemons that took shards |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="spoold-shards-") as tmp:
        work = Path(tmp)
        results = {}
        for daemons, shards in ((1, 1), (1, 4), (2, 4), (4, 4)):
            print(f"shards: {daemons} daemon(s), {shards} shard(s) ...", flush=True)
            results[(daemons, shards)] = (run_job(work, daemons, shards, n, {}, 1024), run_job(work, daemons, shards, n, step, 256))
        base_bare, base_step = results[(1, 1)][0]["seconds"], results[(1, 1)][1]["seconds"]
        for (daemons, shards), (bare, stepped) in results.items():
            rows.append(
                f"| {daemons} | {shards} | {bare['seconds']:.1f} | {base_bare / bare['seconds']:.2f}x | "
                f"{stepped['seconds']:.1f} | {base_step / stepped['seconds']:.2f}x | {stepped['nodes']} |"
            )
        print("shards: takeover ...", flush=True)
        lease, poll = 5.0, 0.5
        t = takeover(work, lease, poll)
    rows += [
        f"\nTakeover after `kill -9` of a shard's owner (3 daemons, 2 shards, lease_seconds {lease:g}, poll_interval {poll:g}): "
        f"another daemon held the shard after **{t['taken']:.1f} s** and committed its first checkpoint after {t['committed']:.1f} s "
        f"(goal < 2 x lease_seconds = {2 * lease:g} s). A shard is taken over once its lease is older than lease_seconds "
        "and a daemon with room looks at processing/ (every poll_interval); a daemon busy with a shard of its own takes "
        "an orphaned one only when its own work runs low, as for any job.",
    ]
    old = args.out.read_text() if args.out.exists() else "# spoold benchmark results\n"
    args.out.write_text("\n".join(merge_sections(old, rows, "## Shards")) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
