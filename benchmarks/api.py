"""`spoold api` benchmark (issue 23): upload/download MB/s vs `cp`, the API's peak RSS for a small vs a large
upload, `batches.retrieve` latency with 50 polling clients while a job runs, and the daemon's throughput on
that job with and without the pollers. Writes benchmarks/api.md. SPOOLD_API_BENCH_MB sets the large file (default 1024)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from api_helpers import ApiProcess, api_settings  # noqa: E402

from spoold_helpers import SpooldProcess, chat_line, write_jsonl  # noqa: E402

LARGE_MB = int(os.environ.get("SPOOLD_API_BENCH_MB", "1024"))
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


def transfer(work: Path, rows: list[str]) -> None:
    daemonless = SpooldProcess(work / "t", api=api_settings(work / "t", max_file_bytes="100GiB"))
    big, small = make_file(work / "big.jsonl", LARGE_MB), make_file(work / "small.jsonl", 2)
    size_mb = big.stat().st_size / 1e6
    cp = timed(lambda: subprocess.run(["cp", str(big), str(daemonless.spool / "cp-copy")], check=True) and os.sync())
    (daemonless.spool / "cp-copy").unlink()
    hwm = {}
    for name, path in (("2 MB", small), (f"{LARGE_MB} MiB", big)):
        with ApiProcess(daemonless.config_path, work / f"api-{len(hwm)}.log") as api:
            api.start()
            client = api.client("alice", timeout=3600)
            up = timed(lambda: setattr(api, "file", client.files.create(file=path.open("rb"), purpose="batch")))
            with client.files.with_streaming_response.content(api.file.id) as response:
                start = time.perf_counter()
                got = sum(len(c) for c in response.iter_bytes(1 << 20))
                down = time.perf_counter() - start
            assert got == path.stat().st_size
            hwm[name] = hwm_kib(api.proc.pid)
            if path is big:
                rows.append(
                    f"| upload {size_mb:.0f} MB | {size_mb / up:.0f} MB/s | cp {size_mb / cp:.0f} MB/s | {cp / up:.2f}x (target >= 0.5x) |"
                )
                rows.append(
                    f"| download {size_mb:.0f} MB | {size_mb / down:.0f} MB/s | cp {size_mb / cp:.0f} MB/s | {cp / down:.2f}x (target >= 0.8x) |"
                )
    (small_name, small_kib), (big_name, big_kib) = hwm.items()
    rows.append(
        f"| API peak RSS (VmHWM) | {small_name}: {small_kib / 1024:.0f} MiB | {big_name}: {big_kib / 1024:.0f} MiB | {big_kib / small_kib:.2f}x (target <= 1.10x) |"
    )


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
    rows = ["| measure | spoold api | reference | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("SPOOLD_BENCH_DIR")) as tmp:
        transfer(Path(tmp), rows)
        pollers(Path(tmp), rows)
    text = "# spoold api benchmark\n\n" + f"`python benchmarks/api.py` on {os.cpu_count()} CPUs; echo backend.\n\n" + "\n".join(rows) + "\n"
    (ROOT / "benchmarks" / "api.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
