"""The daemon's own cost per line (issue 25), side by side in one run, as a ratio.

  floor    N chat lines (default 200,000) through a real `spoold run` on the echo backend
           (chunk 1,000), from the drop to the job in done/, against benchmarks/floor.py
           (the unavoidable part of the same work, a plain loop), alternately, `--pairs` times:
           lines/s of each, each pair's ratio, and the median
  memory   the daemon's own peak RSS (VmHWM) after 20K, 400K and 5M-line jobs (core_loop.py's section)

Usage: python benchmarks/per_line.py [SECTION ...] [--lines N] [--pairs K] [--out benchmarks/per_line.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from core_loop import Daemon, chat_lines, section_memory  # noqa: E402
from run import merge_sections  # noqa: E402

SECTIONS = ("floor", "memory")
SETTLE = 0.05
"""settle_seconds of the timed daemon: part of its drop-to-done time, so kept small."""


def run_floor(source: Path, work: Path) -> float:
    """benchmarks/floor.py over `source` in its own process; its seconds (interpreter start excluded)."""
    out = work / "floor-out.jsonl"
    done = subprocess.run([sys.executable, str(HERE / "floor.py"), str(source), str(out)], check=True, capture_output=True, text=True)
    out.unlink()
    return json.loads(done.stdout)["seconds"]


def section_floor(work: Path, n: int, pairs: int) -> list[str]:
    source = work / "floor-input.jsonl"
    source.write_text("".join(line + "\n" for line in chat_lines(n, 16)))
    d = Daemon(work, "floor", chunk_size=1000, watch={"settle_seconds": SETTLE}).start()
    d.drop("warmup", chat_lines(10, 4, "w"))  # imports and the echo engine loaded before the first timed job
    d.wait_done(["warmup"], timeout=120)
    runs = []
    for k in range(pairs):
        dropped = d.drop(f"job{k}", write=lambda tmp: shutil.copyfile(source, tmp))
        spoold_s = d.wait_done([f"job{k}"]) - dropped
        shutil.rmtree(d.spool / "done" / f"job{k}")
        runs.append((spoold_s, run_floor(source, work)))
        print(f"  pair {k + 1}: spoold {n / spoold_s:,.0f} lines/s, floor {n / runs[-1][1]:,.0f} lines/s", flush=True)
    d.stop()
    rows = [
        f"\n## The daemon's own cost per line: {n:,} chat lines, echo backend, chunk 1,000, against the floor loop\n",
        f"spoold from the drop (the sidecar renamed in; settle_seconds {SETTLE:g}) to the job in done/ (validating pass, claim, "
        "checkpoint per chunk, live batch.json at most once a second, finish), and `benchmarks/floor.py` (per line: json.loads, the last "
        "message's text, the OpenAI-shaped record as a dict, json.dumps; write + flush + fsync every 1,000), "
        f"alternately {pairs} times on the same input; each pair's ratio, then the median.\n",
        "| pair | spoold lines/s | floor lines/s | spoold / floor | spoold us/line | floor us/line |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k, (spoold_s, floor_s) in enumerate(runs):
        rows.append(
            f"| {k + 1} | {n / spoold_s:,.0f} | {n / floor_s:,.0f} | {floor_s / spoold_s:.2f}x | {spoold_s / n * 1e6:.1f} | {floor_s / n * 1e6:.1f} |"
        )
    spoold_m = statistics.median(s for s, _ in runs)
    floor_m = statistics.median(f for _, f in runs)
    ratio = statistics.median(f / s for s, f in runs)
    rows.append(
        f"| **median** | {n / spoold_m:,.0f} | {n / floor_m:,.0f} | **{ratio:.2f}x** | {spoold_m / n * 1e6:.1f} | {floor_m / n * 1e6:.1f} |"
    )
    rows.append("\nTarget: spoold >= 0.5x the floor (the median).")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--memory-sizes", default="20000,400000,5000000", help="comma-separated line counts")
    parser.add_argument("--out", type=Path, default=HERE / "per_line.md")
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    sections = args.sections or list(SECTIONS)
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spoold-per-line-") as tmp:
        work = Path(tmp)
        for section in sections:
            print(f"{section} ...", flush=True)
            if section == "floor":
                rows += section_floor(work, args.lines, args.pairs)
            else:
                rows += section_memory(work, tuple(int(s) for s in args.memory_sizes.split(",")))
            print("\n".join(rows[-10:]), flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    generated = "\n".join(rows).split("\n## ")[1:]
    if args.out.exists():  # replace just the sections run, keep the rest (the written findings among them)
        text = args.out.read_text()
        for block in generated:
            heading = "## " + block.split(":")[0].split("(")[0].strip()
            text = (
                "\n".join(merge_sections(text, ["\n## " + block.rstrip("\n") + f"\n\n(This section: `make bench`, {stamp}.)"], heading))
                + "\n"
            )
    else:
        head = [
            "# The daemon's own cost per line and its memory (issue 25)",
            "",
            f"Written by `benchmarks/per_line.py` ({stamp}) on {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}. Each table is one run, side by side; read the ratios, not the seconds.",
        ]
        text = "\n".join(head + ["\n## " + b.rstrip("\n") for b in generated]) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
