"""`spoold api` benchmark (issue 23): upload/download MB/s vs `cp`, the API's peak RSS for a small vs a large
upload, `batches.retrieve` latency with 50 polling clients while a job runs, and the daemon's throughput on
that job with and without the pollers. Writes benchmarks/api.md (its table; the notes from the first `## ` on are kept).

    python benchmarks/api.py                          # everything
    python benchmarks/api.py --transfer-only          # throughput and memory only, printed
    python benchmarks/api.py --transfer-only --before TREE   # also TREE's code (e.g. `git archive HEAD spoold handlers`), side by side

SPOOLD_API_BENCH_MB sets the throughput file (default 512), SPOOLD_API_BENCH_MEMORY_MB the memory check's large
file (default 2048: the issue's 2 GB), SPOOLD_API_BENCH_ROUNDS the throughput rounds (default 3)."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from api_helpers import KEYS, ApiProcess, api_settings  # noqa: E402

from spoold_helpers import SpooldProcess, chat_line, write_jsonl  # noqa: E402

TRANSFER_MB = int(os.environ.get("SPOOLD_API_BENCH_MB", "512"))
MEMORY_MB = int(os.environ.get("SPOOLD_API_BENCH_MEMORY_MB", "2048"))
ROUNDS = int(os.environ.get("SPOOLD_API_BENCH_ROUNDS", "3"))
"""Throughput rounds; each ratio is against the mean of a `cp` just before and just after it, the median is reported."""
POLLERS = 50
POLL_EVERY = 0.5
"""Seconds between one client's polls: the SDK examples and openai-batch poll every few seconds; 50 clients at 0.5 s are 100 retrieves/s."""
JOB_LINES = int(os.environ.get("SPOOLD_API_BENCH_LINES", "200000"))


def make_file(path: Path, megabytes: float) -> Path:
    line = (
        b'{"custom_id":"x","url":"/v1/chat/completions","body":{"model":"tiny-random","messages":[{"role":"user","content":"'
        + b"a" * 900
        + b'"}]}}\n'
    )
    count = int(megabytes * (1 << 20) / len(line))
    with open(path, "wb") as fh:
        block = line * 1024
        for _ in range(count // 1024):
            fh.write(block)
        fh.write(line * (count % 1024))
    return path


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cp_seconds(src: Path, folder: Path) -> float:
    """`cp` of src into folder (the spool's disk) and a sync, as durable as an upload; earlier dirty pages are
    synced first, untimed, so the `cp` pays only for its own bytes."""
    os.sync()
    copy = folder / "cp-copy"
    seconds = timed(lambda: subprocess.run(["cp", str(src), str(copy)], check=True) and os.sync())
    copy.unlink()
    return seconds


@contextlib.contextmanager
def code_from(tree: Path | None) -> Iterator[None]:
    """Start child processes on another source tree's spoold (PYTHONPATH), for a before/after comparison."""
    with mock.patch.dict(os.environ, {"PYTHONPATH": str(tree)} if tree is not None else {}):
        yield


def up_and_down(api: ApiProcess, path: Path) -> tuple[float, float, float]:
    """Seconds to upload `path` with the openai SDK, to download it again with the SDK, and with `curl`
    (a client that is not itself the limit: the SDK reads through httpx 64 KiB at a time); the upload is deleted after."""
    client = api.client("alice", timeout=3600)
    holder = {}
    up = timed(lambda: holder.setdefault("file", client.files.create(file=path.open("rb"), purpose="batch")))
    file = holder["file"]
    with client.files.with_streaming_response.content(file.id) as response:
        start = time.perf_counter()
        got = sum(len(c) for c in response.iter_bytes(1 << 20))
        down = time.perf_counter() - start
    assert got == path.stat().st_size == file.bytes
    curl = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", "-H", f"Authorization: Bearer {KEYS['alice']}"]
    holder["curl"] = b""
    down_curl = timed(
        lambda: holder.update(
            curl=subprocess.run([*curl, f"{api.base_url}/files/{file.id}/content"], check=True, capture_output=True).stdout
        )
    )
    assert int(holder["curl"]) == file.bytes
    client.files.delete(file.id)
    return up, down, down_curl


def throughput(work: Path, trees: dict[str, Path | None]) -> list[str]:
    """Upload and download MB/s of each tree's API against `cp`, the trees' rounds interleaved so that each
    sees the same machine; per tree the median of its rounds' ratios."""
    big = make_file(work / "big.jsonl", TRANSFER_MB)
    size_mb = big.stat().st_size / 1e6
    keys = ("up", "down", "curl", "up_mbs", "down_mbs", "curl_mbs", "cp_mbs")
    ratios: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in trees}
    with contextlib.ExitStack() as stack:
        apis, spools = {}, {}
        for name, tree in trees.items():
            spools[name] = SpooldProcess(work / f"t-{name}", api=api_settings(work / f"t-{name}", max_file_bytes="100GiB"))
            with code_from(tree):
                apis[name] = stack.enter_context(ApiProcess(spools[name].config_path, work / f"api-{name}.log")).start()
        for _ in range(ROUNDS):
            for name, api in apis.items():
                folder = spools[name].spool
                before = cp_seconds(big, folder)
                up, down, curl = up_and_down(api, big)
                cp = (before + cp_seconds(big, folder)) / 2
                r = ratios[name]
                r["up"].append(cp / up), r["down"].append(cp / down), r["curl"].append(cp / curl)
                r["up_mbs"].append(size_mb / up), r["down_mbs"].append(size_mb / down), r["curl_mbs"].append(size_mb / curl)
                r["cp_mbs"].append(size_mb / cp)
    rows = []
    median = statistics.median
    for name, r in ratios.items():
        label = "" if len(trees) == 1 else f" ({name})"
        cp = f"cp {median(r['cp_mbs']):.0f} MB/s"
        rounds = f"median of {ROUNDS}: " + ", ".join(f"{x:.2f}" for x in r["up"])
        rows.append(
            f"| upload {size_mb:.0f} MB{label} | {median(r['up_mbs']):.0f} MB/s | {cp} | {median(r['up']):.2f}x (target >= 0.5x; {rounds}) |"
        )
        rounds = ", ".join(f"{x:.2f}" for x in r["curl"])
        rows.append(
            f"| download {size_mb:.0f} MB, curl{label} | {median(r['curl_mbs']):.0f} MB/s | {cp} | {median(r['curl']):.2f}x (target >= 0.8x; {rounds}) |"
        )
        rounds = ", ".join(f"{x:.2f}" for x in r["down"])
        rows.append(
            f"| download {size_mb:.0f} MB, openai SDK{label} | {median(r['down_mbs']):.0f} MB/s | {cp} | {median(r['down']):.2f}x (the SDK's own read loop; {rounds}) |"
        )
    return rows


def memory(work: Path) -> list[str]:
    """The API's peak RSS (VmHWM) after a 2 MB upload and download, and after a MEMORY_MB one, each in a fresh process."""
    hwm = {}
    for label, megabytes in (("2 MB", 2), (f"{MEMORY_MB} MiB", MEMORY_MB)):
        path = make_file(work / f"mem-{megabytes}.jsonl", megabytes)
        spool = SpooldProcess(work / f"m-{megabytes}", api=api_settings(work / f"m-{megabytes}", max_file_bytes="100GiB"))
        with ApiProcess(spool.config_path, work / f"api-m-{megabytes}.log") as api:
            api.start()
            up, down, _ = up_and_down(api, path)
            hwm[label] = (hwm_kib(api.proc.pid), up, down, path.stat().st_size / 1e6)
        path.unlink()
    (small, (small_kib, *_)), (big, (big_kib, up, down, mb)) = hwm.items()
    return [
        f"| API peak RSS (VmHWM) | {small}: {small_kib / 1024:.0f} MiB | {big} ({mb:.0f} MB, up {mb / up:.0f} MB/s, down {mb / down:.0f} MB/s): "
        f"{big_kib / 1024:.0f} MiB | {big_kib / small_kib:.2f}x (target <= 1.10x) |"
    ]


def pollers(work: Path, rows: list[str]) -> None:
    results = {}
    for with_pollers in (False, True):
        root = work / f"p{int(with_pollers)}"
        with (
            SpooldProcess(root, api=api_settings(root, max_file_bytes="10GiB"), chunk_size=1000) as daemon,
            ApiProcess(daemon.config_path, root / "api.log") as api,
        ):
            daemon.start()
            api.start()
            client = api.client("alice", timeout=600)
            write_jsonl(root / "job.jsonl", [chat_line(f"r{i}", f"hello {i}", model="tiny-random") for i in range(JOB_LINES)])
            file = client.files.create(file=(root / "job.jsonl").open("rb"), purpose="batch")
            batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
            latencies: list[float] = []
            stop = threading.Event()

            def poll() -> None:
                c = api.client("alice", timeout=60)
                while not stop.is_set():
                    start = time.perf_counter()
                    c.batches.retrieve(batch.id)
                    latencies.append(time.perf_counter() - start)
                    stop.wait(POLL_EVERY)  # as a client polls; a tight loop would measure 50 busy threads on the same cores

            threads = [threading.Thread(target=poll, daemon=True) for _ in range(POLLERS if with_pollers else 0)]
            for t in threads:
                t.start()
            while (b := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
                time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join()
            results[with_pollers] = b.spoold["durations"]["running_seconds"]
            if with_pollers:
                q = statistics.quantiles(latencies, n=100)
                rows.append(
                    f"| retrieve latency, {POLLERS} pollers | p50 {q[49] * 1000:.1f} ms | p99 {q[98] * 1000:.1f} ms | {len(latencies)} calls |"
                )
    cost = results[True] / results[False] - 1
    rows.append(
        f"| daemon on a {JOB_LINES}-line echo job, {POLLERS} clients polling every {POLL_EVERY:g} s | alone {JOB_LINES / results[False]:.0f} req/s | with pollers {JOB_LINES / results[True]:.0f} req/s | API costs the engine {cost * 100:+.1f}% (target < 5%) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transfer-only", action="store_true", help="throughput and memory only; print, do not write api.md")
    parser.add_argument("--before", type=Path, help="also measure this source tree's spoold (side by side, interleaved)")
    args = parser.parse_args()
    rows = ["| measure | spoold api | reference | ratio |", "|---|---|---|---|"]
    trees: dict[str, Path | None] = {"before": args.before.resolve(), "after": None} if args.before else {"this": None}
    with tempfile.TemporaryDirectory(dir=os.environ.get("SPOOLD_BENCH_DIR")) as tmp:
        rows += throughput(Path(tmp), trees)
        rows += memory(Path(tmp))
        if not args.transfer_only:
            pollers(Path(tmp), rows)
    text = "# spoold api benchmark\n\n" + f"`python benchmarks/api.py` on {os.cpu_count()} CPUs; echo backend.\n\n" + "\n".join(rows) + "\n"
    print(text)
    if not args.transfer_only:
        out = ROOT / "benchmarks" / "api.md"
        old = out.read_text() if out.exists() else ""
        notes = old[old.index("\n## ") :] if "\n## " in old else ""
        out.write_text(text + notes)


if __name__ == "__main__":
    main()
