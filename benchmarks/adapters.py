"""Adapters vs model switches: the same requests as K jobs over K LoRA adapters of one base on one engine,
vs K jobs for K separately loaded models (what each fine-tune costs as its own model), real vLLM, tiny model.

`python benchmarks/adapters.py [--sizes 1,2,4] [--lines 32] [--max-tokens 8]` writes benchmarks/adapters.md
(about 6 minutes on 2 shared CPU cores). Each case is one fresh daemon whose K jobs are dropped together; its
wall time runs from the daemon's start to the last job's end (model loads included: that is the cost), its
idle share is spoold_engine_idle_seconds_total (a model loaded, work waiting, nothing in flight) over that
time. The K adapters are rank-8 adapters of tiny-random made here by spoold.tinymodel's builder (seeds
200..), declared in a benchmark-local profile dir (engine.model_dirs); the K separate models are copies of
tiny-random's build (same weights, loaded apart), as K full fine-tunes would be.
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
sys.path.insert(0, str(ROOT))

from spoold import tinymodel  # noqa: E402

LOADED = re.compile(r"model (\S+) loaded in ([0-9.]+) s")
"""spoold.engine.manager's line after each model load."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(inbox: Path, name: str, model: str, lines: int, max_tokens: int) -> None:
    rows = [
        {
            "custom_id": f"{name}-{i}",
            "url": "/v1/completions",
            "body": {"prompt": f"Item {i}: the story of", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
        }
        for i in range(lines)
    ]
    tmp = inbox / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(inbox / f"{name}.jsonl")
    (inbox / f".{name}.yaml.tmp").write_text(yaml.safe_dump({"model": model, "chunk_size": 50}))
    (inbox / f".{name}.yaml.tmp").rename(inbox / f"{name}.yaml")


def run_case(work: Path, tag: str, state: Path, models: Path, jobs: list[str], lines: int, max_tokens: int) -> dict:
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
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    names = [f"{tag}-{i}" for i in range(len(jobs))]
    for name, model in zip(names, jobs, strict=True):  # all waiting when the daemon starts: dropped together
        write_job(spool / "inbox", name, model, lines, max_tokens)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spoold", "run", "--config", str(work / f"{tag}.yaml")], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        while not all((spool / "done" / n / "batch.json").exists() for n in names):
            if proc.poll() is not None or any((spool / "failed" / n).exists() for n in names):
                tail = log_path.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{tag}: a job failed or the daemon exited; {log_path}:\n{tail}")
            time.sleep(0.1)
        wall = time.monotonic() - started
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        found = re.search(r"^spoold_engine_idle_seconds_total (\S+)$", metrics, re.M)
        idle = float(found.group(1)) if found else 0.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    loads = [float(s) for _, s in LOADED.findall(log_path.read_text(errors="replace"))]
    return {"wall": wall, "loads": len(loads), "load_s": sum(loads), "idle": idle / wall, "rate": len(jobs) * lines / wall}


def describe(case: dict) -> str:
    plural = "" if case["loads"] == 1 else "s"
    return f"{case['wall']:.1f} s, {case['loads']} load{plural} ({case['load_s']:.1f} s), {case['wall'] - case['load_s']:.1f} s outside loads, {case['rate']:.1f} req/s, idle {case['idle']:.1%}"


def render(results: list[tuple[int, dict, dict]], lines: int, max_tokens: int) -> str:
    """adapters.md from (K, adapters case, models case) rows. Loads on a shared CPU vary by tens of seconds from
    one daemon to the next, so the switch cost is read as its parts: each load's own seconds, plus the time
    outside loads (wall minus loads) that each extra model adds (the drain and the old engine's unload)."""
    rows = [
        f"| {k} | {k * lines} | {describe(lora)} | {describe(switch)} | {switch['wall'] / lora['wall']:.2f}x |"
        for k, lora, switch in results
    ]
    rest = [(k, a["wall"] - a["load_s"], s["wall"] - s["load_s"], s["loads"] - a["loads"]) for k, a, s in results]
    loads = [s["load_s"] / s["loads"] for _, _, s in results if s["loads"]]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = [
        "# LoRA adapters vs model switches (issue 27)",
        "",
        f"Written by `python benchmarks/adapters.py` (`make bench`, {stamp}) on {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared), Python {platform.python_version()}, vLLM's CPU build, the tiny model. The same requests, {lines} "
        f"completions per job of exactly {max_tokens} tokens (`ignore_eos`), as K jobs dropped together into one fresh "
        "daemon (`max_active_jobs` 4): either over K rank-8 LoRA adapters of one base (one engine) or over K separately loaded "
        "models (copies of tiny-random: one profile each, as K full fine-tunes would be). Wall time runs from the daemon's "
        "start to the last job's end, so it includes each model load; \"outside loads\" is wall time minus the loads' own "
        "seconds (from the daemon's `model X loaded in S s` lines); idle is `spoold_engine_idle_seconds_total` (a model "
        "loaded, work waiting, nothing in flight) over the wall time. One run, side by side; the machine is shared, so one "
        "load takes anywhere from about 25 to 70 s: read the load counts and the time outside loads, not the raw walls.",
        "",
        "| jobs (K) | requests | K adapters of one base, one engine | K separately loaded models | models / adapters |",
        "|---:|---:|---|---|---:|",
        *rows,
        "",
        "What it means:",
        "",
        "- **Loads.** The adapter runs load the base once whatever K is; the separate models load once per job.",
    ]
    extra = [(k, (rs - ra) / n) for k, ra, rs, n in rest if n > 0]
    if extra and loads:
        per = ", ".join(f"{cost:.1f} s at K={k}" for k, cost in extra)
        text.append(
            f"- **The switch cost an operator pays without adapters:** per extra model, one load ({min(loads):.0f}-"
            f"{max(loads):.0f} s each here, on this tiny model) plus the drain and the old engine's unload ({per} of "
            "extra time outside loads). On a GPU with a real model a load alone is tens of seconds to minutes; the adapter "
            "side stays at one load for any K."
        )
    text.append(
        "- **Outside loads** the adapter runs took "
        + ", ".join(f"{ra:.1f} s (K={k})" for k, ra, _, _ in rest)
        + ": serving K adapters side by side costs about what one job does on this model; the separate models took "
        + ", ".join(f"{rs:.1f} s" for _, _, rs, _ in rest)
        + "."
    )
    text += [
        "- **Idle share.** With adapters it is "
        + "/".join(f"{a['idle']:.1%}" for _, a, _ in results)
        + " at K="
        + "/".join(str(k) for k, _, _ in results)
        + "; with separate models it is "
        + "/".join(f"{s['idle']:.1%}" for _, _, s in results)
        + ". A load or an unload is not idle by this measure (no model is up to feed): the switch cost shows in the "
        "wall time and the load count, while the idle share shows the engine waiting for spoold with a model up.",
        "",
    ]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--lines", type=int, default=32, help="requests per job")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per answer (ignore_eos: exactly this many)")
    parser.add_argument("--out", type=Path, default=HERE / "adapters.md")
    args = parser.parse_args()
    sizes = [int(k) for k in args.sizes.split(",")]
    state = ROOT / ".state"  # the built-in model is built once and reused, as core_loop.py does
    base = tinymodel.ensure_builtin("tiny-random", state)
    results = []
    with tempfile.TemporaryDirectory(prefix="spoold-adapters-") as tmp:
        work = Path(tmp)
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
        for k in sizes:
            lora = run_case(work, f"adapters-{k}", state, models, [a["name"] for a in adapters[:k]], args.lines, args.max_tokens)
            print(f"{k} adapters: {describe(lora)}", flush=True)
            switch = run_case(work, f"models-{k}", state, models, [f"bench-m{i}" for i in range(k)], args.lines, args.max_tokens)
            print(f"{k} models:   {describe(switch)}", flush=True)
            results.append((k, lora, switch))
    text = render(results, args.lines, args.max_tokens)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
