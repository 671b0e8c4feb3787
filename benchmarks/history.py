"""History benchmark (issue 12): does a long history in done/ slow the daemon or `spoold status`?

For 0, 10,000 and 100,000 finished jobs (echo backend, local disk) it measures
the daemon's start time (process start to "spoold ready"), its idle CPU per
minute (a measured idle window, plus the 5-minute handler rescan amortised),
and `spoold status` wall time, each also as a ratio to the empty spool.

The finished jobs are synthetic but shaped like real ones (the five result
files, `.spoold/job.json`, `.spoold/handlers.json` with delivered runs); their
files are hard links to one template, which keeps building 100,000 of them
fast and changes nothing a reader sees. Run it alone with
`python benchmarks/run.py history` (it rewrites only its own section of
results.md); `--src DIR` measures another checkout of spoold (before/after).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = (0, 10_000, 100_000)
IDLE_WINDOW = 20.0
RUNS = 3
RESCAN_EVERY = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def template(folder: Path) -> dict[str, Path]:
    """The files of one finished job, written once; every job links to them."""
    folder.mkdir(parents=True)
    now = time.time() - 86400
    body = {"choices": [{"message": {"role": "assistant", "content": "hello"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    files = {
        "input.jsonl": "".join(json.dumps({"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": "hi"}]}}) + "\n" for i in range(20)),
        "meta.yaml": "model: tiny-random\n",
        "output.jsonl": "".join(json.dumps({"id": f"x{i}", "custom_id": f"r{i}", "response": {"status_code": 200, "body": body}, "error": None}) + "\n" for i in range(20)),
        "errors.jsonl": "",
        "batch.json": json.dumps({"id": "batch_x", "object": "batch", "status": "completed", "created_at": int(now), "completed_at": int(now),
                                  "request_counts": {"total": 20, "completed": 20, "failed": 0}, "model": "tiny-random",
                                  "spoold": {"node": "bench", "handlers": {"hook": {"status": "ok", "attempts": 1}}}}),
        "job.json": json.dumps({"id": "batch_x", "name": "x", "original_name": "x", "created_at": int(now), "claimed_at": now,
                                "claimed_by": "bench", "status": "completed", "finished_at": now}),
        "handlers.json": json.dumps({"version": 1, "node": "bench", "batch_id": "batch_x", "status": "completed", "planned_at": now,
                                     "runs": {"hook": {"status": "ok", "attempts": 1, "delivered_at": now}}}),
    }  # fmt: skip
    paths = {}
    for name, text in files.items():
        paths[name] = folder / name
        paths[name].write_text(text)
    return paths


LINKS_PER_TEMPLATE = 50_000  # ext4 allows 65,000 links to one inode


def build_spool(spool: Path, jobs: int, files: dict[str, Path]) -> None:
    for state in ("inbox", "processing", "done", "failed"):
        (spool / state).mkdir(parents=True)
    done = spool / "done"
    for i in range(jobs):
        if i and i % LINKS_PER_TEMPLATE == 0:
            files = template(spool.parent / f"template-{i}")
        job = done / f"job-{i:06d}"
        state = job / ".spoold"
        os.makedirs(state)
        for name, src in files.items():
            os.link(src, (state if name in ("job.json", "handlers.json") else job) / name)
    notes = spool / ".spoold" / "recent"  # as the daemon leaves them: the last jobs to finish, noted
    notes.mkdir(parents=True)
    for i in range(max(0, jobs - 100), jobs):
        (notes / f"{time.time_ns():020d}-done-job-{i:06d}").touch()


def write_config(work: Path, spool: Path) -> Path:
    config = {
        "spool_dir": str(spool), "node_id": "bench",
        "engine": {"backend": "echo", "state_dir": str(work / "state")},
        "metrics": {"listen": ""}, "logging": {"format": "text", "level": "info"},
        "handlers": [{"name": "hook", "type": "exec", "on": ["completed"], "command": ["/bin/true"]}],
    }  # fmt: skip
    path = spool.parent / "spoold.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def start_and_idle(config: Path, env: dict[str, str], idle: bool, wait_for: Path | None = None) -> tuple[float, float | None]:
    """Seconds from exec to "spoold ready"; then CPU seconds per minute over an idle window.

    `wait_for`: a file to wait for (up to 10 min) before stopping the daemon (work it does after READY).
    """
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(config)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=config.parent)  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "spoold ready" in line:
            break
    else:
        raise SystemExit(f"spoold exited with {proc.wait()} before it was ready")
    ready = time.monotonic() - started
    deadline = time.monotonic() + 600
    while wait_for is not None and not wait_for.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    per_minute = None
    if idle:
        time.sleep(2.0)  # let start-up work in threads (handler resume, first refresh) finish
        before = cpu_seconds(proc.pid)
        time.sleep(IDLE_WINDOW)
        per_minute = (cpu_seconds(proc.pid) - before) * 60.0 / IDLE_WINDOW
    proc.terminate()
    proc.wait(timeout=60)
    return ready, per_minute


def rescan_seconds(spool: Path, env: dict[str, str]) -> float:
    """CPU time of one periodic handler rescan (HandlerDispatcher.resume), run in a child with `env`."""
    code = (
        "import sys, time; from spoold.service.handler_runs import HandlerDispatcher\n"
        "d = HandlerDispatcher([], 'bench'); t = time.process_time(); d.resume(sys.argv[1]); print(time.process_time() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(spool)], capture_output=True, text=True, env=env, check=True, cwd=spool.parent)
    return float(out.stdout.strip().splitlines()[-1])


def status_seconds(config: Path, env: dict[str, str], notes: bool = True) -> float:
    """Median wall time of `spoold status`; notes=False: as on a spool from before the notes (a stat per job)."""
    folder = config.parent / "spool" / ".spoold" / "recent"
    if not notes:
        folder.rename(folder.with_name("recent.off"))
    times = []
    for _ in range(RUNS):
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "spoold", "status", "--config", str(config)], check=True, stdout=subprocess.DEVNULL, env=env,
                       cwd=config.parent)  # not the repo: `-m`/`-c` put the cwd first on sys.path  # fmt: skip
        times.append(time.monotonic() - started)
    if not notes:
        folder.with_name("recent.off").rename(folder)
    return statistics.median(times)


def measure(src: Path, sizes: tuple[int, ...] = SIZES) -> list[dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    results = []
    with tempfile.TemporaryDirectory(prefix="spoold-history-") as tmp:
        work = Path(tmp)
        files = template(work / "template")
        for jobs in sizes:
            print(f"history: {jobs} finished jobs ...", flush=True)
            spool = work / f"spool-{jobs}" / "spool"
            t = time.monotonic()
            build_spool(spool, jobs, files)
            config = write_config(work, spool)
            # A spool from before the pending-runs index is indexed once, in a thread after READY: let it finish.
            index = spool / ".spoold" / "handler-runs" / ".complete" if (src / "spoold" / "handlers" / "pending.py").exists() else None
            t0 = time.monotonic()
            first, _ = start_and_idle(config, env, idle=False, wait_for=index)
            indexed = time.monotonic() - t0
            starts = [start_and_idle(config, env, idle=False)[0] for _ in range(RUNS - 1)]
            last, idle = start_and_idle(config, env, idle=True)
            rescan = rescan_seconds(spool, env)
            results.append({
                "jobs": jobs, "build_s": time.monotonic() - t, "first_start_s": first,
                "start_s": statistics.median([*starts, last]), "idle_cpu_per_min_s": (idle or 0.0) + rescan * 60.0 / RESCAN_EVERY,
                "rescan_s": rescan, "status_s": status_seconds(config, env),
                "status_no_notes_s": status_seconds(config, env, notes=False), "indexed_s": indexed,
            })  # fmt: skip
            print(f"  {results[-1]}", flush=True)
    return results


def ratio(value: float, base: float, floor: float) -> str:
    """value/base, or "-" when the base is below what the measurement resolves."""
    return f"{value / base:.2f}" if base >= floor else "-"


def table(results: list[dict[str, float]], label: str) -> list[str]:
    base = results[0]
    tick = 60.0 / IDLE_WINDOW / CLK_TCK  # one clock tick in the idle window, per minute
    rows = [
        f"\n### {label}\n",
        "| finished jobs | daemon start s | x empty | idle CPU s/min | x empty | `spoold status` s | x empty | first start s (to READY; to index built) | status s, no notes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r['jobs']:,} | {r['start_s']:.2f} | {r['start_s'] / base['start_s']:.2f} | {r['idle_cpu_per_min_s']:.3f} | "
            f"{ratio(r['idle_cpu_per_min_s'], base['idle_cpu_per_min_s'], 3 * tick)} | {r['status_s']:.2f} | "
            f"{r['status_s'] / base['status_s']:.2f} | {r['first_start_s']:.2f}; {r['indexed_s']:.1f} | {r['status_no_notes_s']:.2f} |"
        )
    return rows


def section(src: Path, before: Path | None = None, sizes: tuple[int, ...] = SIZES, before_sizes: tuple[int, ...] = SIZES[:2]) -> list[str]:
    rows = [
        "\n## History: start, idle CPU and `spoold status` against finished jobs in done/ (echo backend, local disk)\n",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores (shared with other work). "
        f"Median of {RUNS} starts and {RUNS} `spoold status` runs; idle CPU is measured over {IDLE_WINDOW:.0f} s after start-up "
        f"settles (resolution {60.0 / IDLE_WINDOW / CLK_TCK:.3f} s/min, one clock tick; no ratio where the empty spool's is below three ticks), "
        f"plus one handler rescan (every {RESCAN_EVERY:.0f} s) amortised per minute. Ratios are to the empty spool. "
        "The first start of a spool without the pending-runs index scans every finished job once to build it, in a thread after READY "
        "(column 'first start': the time to READY of that start, and until the index was complete). "
        "`spoold status` finds recent jobs from notes the daemon leaves as jobs finish (the synthetic spools have them for their last "
        "100 jobs); the last column is a spool without them (made by an older spoold): one stat per finished job.",
    ]
    rows += table(measure(src, sizes), "This tree")
    if before is not None:
        rows += table(measure(before, before_sizes), f"Before (the tree at {before.name})")
    return rows


def replace_section(results_md: Path, rows: list[str]) -> None:
    """Put the history section into results.md in place of an older one, keeping the other sections."""
    begin, end = "<!-- history:begin -->", "<!-- history:end -->"
    block = "\n".join([begin, *rows, end])
    text = results_md.read_text() if results_md.exists() else "# spoold benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n" + block + "\n"
    results_md.write_text(text)
