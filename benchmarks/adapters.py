"""Adapters vs model switches: the same requests as K jobs over K LoRA adapters of one base on one engine,
vs K jobs for K separately loaded models (what each fine-tune costs as its own model), real vLLM, tiny model.

`python benchmarks/adapters.py [--sizes 1,2,4] [--lines 100]` replaces the "## Adapters" section of
results.md. Each case is one daemon whose K jobs are dropped together; its wall time runs from the
first job's drop to the last one's end (model loads included: that is the cost), its idle share is
spoold_engine_idle_seconds_total over that time. The separate models are copies of tiny-random's
build (same weights, loaded apart), as K full fine-tunes would be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from run import merge_sections  # noqa: E402

from spoold import tinymodel  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(inbox: Path, name: str, model: str, lines: int) -> None:
    rows = [
        {
            "custom_id": f"{name}-{i}",
            "url": "/v1/completions",
            "body": {"prompt": f"Item {i}: the story of", "max_tokens": 16, "temperature": 0, "ignore_eos": True},
        }
        for i in range(lines)
    ]
    tmp = inbox / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(inbox / f"{name}.jsonl")
    (inbox / f"{name}.yaml").write_text(yaml.safe_dump({"model": model, "chunk_size": 50}))


def run_case(work: Path, tag: str, state: Path, models: Path, jobs: list[str], lines: int) -> dict:
    spool = work / f"spool-{tag}"
    for s in ("inbox", "processing", "done", "failed"):
        (spool / s).mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "spool_dir": str(spool), "node_id": tag,
        "watch": {"settle_seconds": 0.2, "poll_interval": 0.2},
        "engine": {"backend": "vllm", "state_dir": str(state), "model_dirs": [str(models)], "max_active_jobs": 4, "window": "auto"},
        "metrics": {"listen": f"127.0.0.1:{port}"}, "logging": {"format": "text"},
    }  # fmt: skip
    (work / f"{tag}.yaml").write_text(yaml.safe_dump(config))
    log_path = work / f"{tag}.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoold", "run", "--config", str(work / f"{tag}.yaml")], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        started = time.monotonic()
        names = [f"{tag}-{i}" for i in range(len(jobs))]
        for name, model in zip(names, jobs, strict=True):
            write_job(spool / "inbox", name, model, lines)
        while not all((spool / "done" / n / "batch.json").exists() for n in names):
            if proc.poll() is not None or any((spool / "failed" / n).exists() for n in names):
                raise SystemExit(f"{tag}: a job failed or the daemon exited; see {log_path}")
            time.sleep(0.2)
        wall = time.monotonic() - started
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        idle = float(re.search(r"^spoold_engine_idle_seconds_total (\S+)$", metrics, re.M).group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    text = log_path.read_text(errors="replace")
    return {"wall": wall, "loads": text.count("loading model"), "idle": idle / wall, "rate": len(jobs) * lines / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--lines", type=int, default=100, help="requests per job")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    sizes = [int(k) for k in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="spoold-adapters-") as tmp:
        work = Path(tmp)
        state = work / "state"
        base = tinymodel.ensure_builtin("tiny-random", state)
        models = work / "models"
        models.mkdir()
        adapters = [
            {"name": f"bench-lora-{i}", "path": str(tinymodel.build_tiny_adapter(work / "adapters" / f"{i}", seed=200 + i))}
            for i in range(max(sizes))
        ]
        profile = {
            "name": "bench-base",
            "model": "builtin:tiny-random",
            "engine_args": {"max_model_len": 512, "enforce_eager": True, "dtype": "float32"},
        }
        (models / "bench-base.yaml").write_text(yaml.safe_dump({**profile, "adapters": adapters, "max_loras": 4}))
        for i in range(max(sizes)):
            copy = work / "copies" / f"m{i}"
            shutil.copytree(base, copy)
            (models / f"bench-m{i}.yaml").write_text(yaml.safe_dump({**profile, "name": f"bench-m{i}", "model": str(copy)}))
        rows = []
        for k in sizes:
            lora = run_case(work, f"adapters-{k}", state, models, [a["name"] for a in adapters[:k]], args.lines)
            switch = run_case(work, f"models-{k}", state, models, [f"bench-m{i}" for i in range(k)], args.lines)
            rows.append(
                f"| {k} | {k * args.lines} | {lora['wall']:.1f} s, {lora['loads']} load, {lora['rate']:.0f} req/s, idle {lora['idle']:.0%} "
                f"| {switch['wall']:.1f} s, {switch['loads']} loads, {switch['rate']:.0f} req/s, idle {switch['idle']:.0%} "
                f"| {switch['wall'] / lora['wall']:.1f}x |"
            )
            print(rows[-1], flush=True)
    section = [
        "## Adapters",
        "",
        f"`python benchmarks/adapters.py` ({platform.machine()}, {os.cpu_count()} CPUs, vLLM CPU build, tiny model; "
        f"{args.lines} requests per job, 16 tokens each; wall time from the drop to the last job's end, model loads included).",
        "",
        "| jobs | requests | K adapters of one base, one engine | K separately loaded models | ratio |",
        "|---:|---:|---|---|---:|",
        *rows,
        "",
    ]
    old = args.out.read_text() if args.out.exists() else ""
    args.out.write_text("\n".join(merge_sections(old, section, "## Adapters")) + "\n")
    print("\n".join(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
