"""One huge input line: what it costs the daemon, and what a line of each size costs to parse.

`python benchmarks/long_line.py [--out benchmarks/long_line.md]` (not part of `make bench`: it
writes 50 MB files and takes about a minute). Every number is measured when the script runs.

1. The real daemon (echo backend) on a job of one good line, one 50 MB line and one good line:
   its peak RSS, against the same job without the big line. The 50 MB line is either 50 MB of
   prompt text (valid JSON: without a line limit it is parsed and sent to the engine) or 50 MB
   of junk (not JSON).
2. Parsing one line of N MB (the validating pass's per-line work): seconds and peak RSS, so the
   default `max_line_bytes` can be chosen from what a line of that size costs.
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


def good_line(custom_id: str) -> str:
    return json.dumps({"custom_id": custom_id, "messages": [{"role": "user", "content": "hello there"}]})


def huge_line(mb: int) -> str:
    return json.dumps({"custom_id": "huge", "messages": [{"role": "user", "content": "word " * (mb * (1 << 20) // 5)}]})


def daemon_peak(work: Path, name: str, lines: list[str], extra: dict) -> dict:
    spool = work / f"spool-{name}"
    for s in ("inbox", "processing", "done", "failed"):
        (spool / s).mkdir(parents=True, exist_ok=True)
    config = {
        "spool_dir": str(spool), "node_id": "bench",
        "watch": {"settle_seconds": 0.2, "poll_interval": 0.2},
        "engine": {"backend": "echo", "state_dir": str(work / "state")},
        "metrics": {"listen": ""}, "logging": {"format": "text", "level": "warning"}, **extra,
    }  # fmt: skip
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    tmp = spool / "inbox" / ".job.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.rename(tmp, spool / "inbox" / "job.jsonl")
    (spool / "inbox" / "job.yaml").write_text("{}\n")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    found = None
    while found is None:
        found = next((spool / s / "job" for s in ("done", "failed") if (spool / s / "job" / "batch.json").exists()), None)
        if proc.poll() is not None:
            raise SystemExit(f"spoold exited with {proc.returncode}")
        time.sleep(0.05)
    wall = time.monotonic() - started
    own = _hwm_mb(proc.pid)
    proc.terminate()
    proc.wait()
    counts = json.loads((found / "batch.json").read_text())["request_counts"]
    return {"wall": wall, "peak_rss_mb": own, "completed": counts["completed"], "failed": counts["failed"]}


def _hwm_mb(pid: int) -> float:
    """The daemon process's own peak RSS (VmHWM), without the helper processes it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


PARSE_CODE = """
import json, sys, time, tracemalloc
from spoold.job.lines import parse_line
mb = int(sys.argv[1])
raw = (json.dumps({"custom_id": "x", "messages": [{"role": "user", "content": "word " * (mb * (1 << 20) // 5)}]}) + "\\n").encode()
t = time.perf_counter(); parse_line(raw, 1, "m"); d = time.perf_counter() - t
tracemalloc.start()
parsed = parse_line(raw, 1, "m")
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"seconds": d, "peak_mb": peak / (1 << 20), "kept_mb": tracemalloc.get_traced_memory()[0] / (1 << 20)}))
"""


def parse_cost(mb: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PARSE_CODE, str(mb)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=HERE / "long_line.md")
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = daemon_peak(work, "small", [good_line("a"), good_line("b")], {})
        rows.append(("2 good lines", small))
        big = daemon_peak(work, "big", [good_line("a"), huge_line(args.mb), good_line("b")], {})
        rows.append((f"2 good lines + one {args.mb} MB valid line", big))
        junk = daemon_peak(work, "junk", [good_line("a"), "x" * (args.mb << 20), good_line("b")], {})
        rows.append((f"2 good lines + one {args.mb} MB line that is not JSON", junk))
    costs = [(mb, parse_cost(mb)) for mb in (1, 4, 16, 64)]
    lines = [
        "# One huge line",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Written by `benchmarks/long_line.py`.",
        "",
        "## The daemon (echo backend), peak RSS",
        "",
        "VmHWM of the daemon process (ru_maxrss from wait4 would count the benchmark's own memory:",
        "it survives the fork+exec that starts the daemon).",
        "",
        "| job | wall s | daemon peak RSS MB | completed | failed |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {r['wall']:.1f} | {r['peak_rss_mb']:.0f} | {r['completed']} | {r['failed']} |" for name, r in rows),
        "",
        "## Parsing one line (spoold.job.lines.parse_line)",
        "",
        "Memory allocated by the parse, on top of the raw line it was given (tracemalloc):",
        "",
        "| line MB | parse s | peak MB while parsing | kept MB (the request) |",
        "|---:|---:|---:|---:|",
        *(f"| {mb} | {c['seconds']:.3f} | {c['peak_mb']:.0f} | {c['kept_mb']:.0f} |" for mb, c in costs),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
