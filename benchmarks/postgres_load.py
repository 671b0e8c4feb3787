"""How the postgres handler loads a big job: COPY into a temp table + one upsert, vs executemany upserts in batches.

Starts a throwaway PostgreSQL cluster (tests/servers.py), writes a fake finished
job of N records (default 1,000,000), then loads it into an empty table once
with each method, each in a fresh child process so its peak RSS is its own;
then repeats the COPY load on the full table (a retry: every row conflicts).
Prints a Markdown table. Usage: python benchmarks/postgres_load.py [N] [--batch 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def write_job(job_dir: Path, n: int) -> None:
    job_dir.mkdir(parents=True)
    with open(job_dir / "output.jsonl", "w") as fh:
        for i in range(n):
            body = {
                "id": f"chatcmpl-{i}",
                "object": "chat.completion",
                "model": "qwen3-4b",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"answer number {i} " + "lorem ipsum " * 8},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 31, "completion_tokens": 40, "total_tokens": 71},
            }
            fh.write(
                json.dumps(
                    {
                        "id": f"r{i}",
                        "custom_id": f"req-{i}",
                        "response": {"status_code": 200, "request_id": f"q{i}", "body": body},
                        "error": None,
                    }
                )
                + "\n"
            )
    batch = {"id": "batch_bench", "status": "completed", "completed_at": 1_700_000_000, "model": "qwen3-4b"}
    (job_dir / "batch.json").write_text(json.dumps(batch))


def child(method: str, dsn: str, job_dir: str, table: str, batch: int) -> None:
    import psycopg

    from spoold.handlers.postgres import COLUMNS, CREATE_TABLE, job_rows, load_job

    from handler_helpers import event_for

    job = Path(job_dir)
    event = event_for(job, json.loads((job / "batch.json").read_text()), "bench")
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.execute(CREATE_TABLE.format(table=table))
        if method == "copy":
            load_job(conn, event, table, create_table=False)
        else:
            columns = ", ".join(COLUMNS)
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[3:])
            sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (batch_id, custom_id) DO UPDATE SET {updates}"
            rows: list[tuple] = []
            with conn.cursor() as cur:
                for row in job_rows(event):
                    rows.append(row)
                    if len(rows) >= batch:
                        cur.executemany(sql, rows)
                        rows.clear()
                if rows:
                    cur.executemany(sql, rows)
    seconds = time.monotonic() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        child(*args.child, batch=args.batch)
        return
    from servers import PostgresServer

    pg = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            job = Path(tmp) / "done" / "bench"
            write_job(job, args.n)
            size = (job / "output.jsonl").stat().st_size
            print(f"{args.n:,} records, output.jsonl {size / 2**20:.0f} MiB, batch {args.batch}\n")
            print("| method | table | seconds | records/s | peak RSS (MiB) |\n|---|---|---|---|---|")
            for method, table, note in (
                ("copy", "t_copy", "empty"),
                ("executemany", "t_many", "empty"),
                ("copy", "t_copy", "full (a retry)"),
            ):
                out = subprocess.run(
                    [sys.executable, __file__, "--batch", str(args.batch), "--child", method, pg.dsn(), str(job), table],
                    capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                ).stdout  # fmt: skip
                result = json.loads(out.strip().splitlines()[-1])
                print(f"| {method} | {note} | {result['seconds']:.1f} | {args.n / result['seconds']:,.0f} | {result['peak_mib']:.0f} |")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
