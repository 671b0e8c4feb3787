"""`make demo`: a spool in ./spool, the real daemon with real vLLM on the tiny model, the examples through it.

Run from the repository root with the project's virtualenv (make demo does both).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from spoold.config import Config
from spoold.control.submit import submit
from spoold.spool.layout import Spool
from spoold.tinymodel import ensure_builtin

ROOT = Path.cwd()
EXAMPLES = Path(__file__).resolve().parent
SPOOL = ROOT / "spool"
STATE = ROOT / ".state"
CONFIG = STATE / "demo-spoold.yaml"
API_KEYS = STATE / "demo-api-keys"
API_SECRET = f"sk-demo-{secrets.token_hex(8)}"
"""A fresh key per run; the keys file holds only its SHA-256 (docs/api.md, Keys and tenants)."""
API_JOB = "chat"
JOBS = ["chat", "completions", "adapter", "with-bad-lines", "embeddings", "function-calling"]
"""`adapter` runs on tiny-random's engine with the LoRA adapter tiny-random-lora-a, beside `completions`."""


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def write_config() -> None:
    STATE.mkdir(exist_ok=True)
    config = {
        "spool_dir": str(SPOOL),
        "node_id": "demo",
        "watch": {"settle_seconds": 0.5, "poll_interval": 0.5},
        "engine": {"backend": "vllm", "default_model": "tiny-random", "state_dir": str(STATE)},
        "chunk_size": 4,
        "metrics": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text"},
        "api": {"listen": "127.0.0.1:0", "keys_file": str(API_KEYS)},
    }
    API_KEYS.write_text(keys_line("demo", API_SECRET) + "\n")
    CONFIG.write_text(yaml.safe_dump(config, sort_keys=False))
    Config.model_validate(config)


def wait_finished(name: str, daemon: subprocess.Popen[bytes], timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in ("done", "failed"):
            job = SPOOL / state / name
            if (job / "batch.json").exists():
                return job
        if daemon.poll() is not None:
            raise SystemExit(f"[demo] the daemon exited early ({daemon.returncode}); see {STATE / 'demo-spoold.log'}")
        time.sleep(0.5)
    raise SystemExit(f"[demo] {name} did not finish within {timeout:.0f} s")


def keys_line(name: str, secret: str) -> str:
    """One line of `api.keys_file` for a key (pure)."""
    return f"{name} sha256:{hashlib.sha256(secret.encode('utf-8')).hexdigest()}"


def api_url(log_text: str) -> str | None:
    """The base URL `spoold api` logs once it listens (port 0: a free one), or None yet (pure)."""
    match = re.search(r"listening on (http://[^\s]+/v1)", log_text)
    return match.group(1) if match else None


def api_batch(config: Path, secret: str, jsonl: Path, log_path: Path, timeout: float = 600) -> tuple[str, list[str]]:
    """`spoold api` on a free loopback port, one batch through it with the openai SDK (upload, create, poll until
    it ends, the output's first answer); its final status and the report lines. The API process is stopped before returning."""
    from openai import OpenAI

    spool_dir = Config.model_validate(yaml.safe_load(config.read_text())).spool_dir
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        api = subprocess.Popen([sys.executable, "-m", "spoold", "api", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (url := api_url(log_path.read_text(errors="replace")[offset:])) is None:
            if api.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"[demo] spoold api did not start ({api.poll()}); see {log_path}")
            time.sleep(0.2)
        client = OpenAI(base_url=url, api_key=secret)
        with jsonl.open("rb") as fh:
            upload = client.files.create(file=fh, purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + timeout
        while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
            if time.monotonic() > deadline:
                raise SystemExit(f"[demo] {batch.id} did not end within {timeout:.0f} s")
            time.sleep(0.5)
        counts = batch.request_counts
        ok = f"{counts.completed}/{counts.total} requests answered" if counts else "no counts"
        lines = [f"  {url}: uploaded {upload.id}, batch {batch.id} {batch.status}, {ok}"]
        if batch.output_file_id:
            outputs = [json.loads(line) for line in client.files.content(batch.output_file_id).text.split("\n") if line.strip()]
            order = [json.loads(line).get("custom_id") for line in jsonl.read_text(encoding="utf-8").split("\n") if line.strip()]
            first = min(
                outputs, key=lambda r: order.index(r["custom_id"]) if r["custom_id"] in order else len(order)
            )  # answers come as they finish
            lines.append(f"  {first['custom_id']} -> {_short(_answer(first['response']['body']['choices'][0]), 72)!r}")
        lines.append(f"  on disk: {spool_dir / 'done' / batch.id}/ (output.jsonl, errors.jsonl, batch.json)")
        return batch.status, lines
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)


def job_row(job: Path) -> str:
    """One line of the results table: status, counts, tokens, inference seconds, tokens per second."""
    batch = json.loads((job / "batch.json").read_text())
    counts, usage = batch["request_counts"], batch["usage"]
    seconds = batch["spoold"]["durations"]["running_seconds"]
    generated = usage["output_tokens"]
    rate = f"{generated / seconds:.0f}" if seconds and generated else "-"  # embeddings generate no tokens
    return (f"{job.name:<28} {batch['status']:<10} {counts['total']:>8} {counts['completed']:>4} {counts['failed']:>4} "
            f"{usage['total_tokens']:>7} {seconds:>8.2f} {rate:>8}")  # fmt: skip


def job_samples(job: Path, width: int = 72) -> list[str]:
    """The job's first answer (question -> answer) and, if any, its first error, each on one short line."""
    lines = [f"{job.name} (model {json.loads((job / 'batch.json').read_text())['model']}):"]
    inputs = {}
    for raw in (job / "input.jsonl").read_text(encoding="utf-8").split("\n"):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            inputs[obj.get("custom_id")] = obj.get("body", obj)
    outputs = _records(job / "output.jsonl")
    if outputs:
        order = {custom_id: i for i, custom_id in enumerate(inputs)}
        first = min(outputs, key=lambda r: order.get(r["custom_id"], len(order)))  # the earliest input line's answer
        body = first["response"]["body"]
        answer = _answer(body["choices"][0]) if "choices" in body else _pooled(body)
        asked = _question(inputs.get(first["custom_id"]) or {})
        lines.append(f"  {first['custom_id']}: {_short(asked, width // 2)!r} -> {_short(answer, width)!r}")
    else:
        lines.append("  no successful answer")
    errors = _records(job / "errors.jsonl")
    if errors:
        error = errors[0]["error"]
        lines.append(f"  first error, line {error.get('line')}: {error['code']}: {_short(error['message'], width)}")
    return lines


def _pooled(body: dict) -> str:
    """An embeddings, score or rerank answer in a few words."""
    data = body.get("data") or body.get("results") or []
    first = data[0] if data else {}
    if "embedding" in first:
        vector = first["embedding"]
        size = f"{len(vector)} floats" if isinstance(vector, list) else "base64"
        return f"{len(data)} embedding(s) of {size}"
    score = first.get("score", first.get("relevance_score"))
    return f"{len(data)} score(s), first {score:.3f}" if isinstance(score, (int, float)) else json.dumps(body)[:60]


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _answer(choice: dict) -> str:
    """A chat answer's text, or its tool calls as name(arguments)."""
    if "message" not in choice:
        return choice["text"]
    calls = choice["message"].get("tool_calls") or []
    if calls:
        return "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in calls)
    return choice["message"]["content"] or ""


def _question(body: dict) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    for key in ("prompt", "input", "query", "queries"):  # completions, embeddings, rerank, score
        if key in body:
            value = body[key]
            return str(value[0] if isinstance(value, list) and value else value)
    return ""


def _short(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def main() -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    write_config()
    spool = Spool(SPOOL)
    spool.init()
    say(f"spool at {SPOOL}")
    started = time.monotonic()
    for model in ("builtin:tiny-random", "builtin:tiny-embed"):
        model_dir = ensure_builtin(model, STATE)
        say(f"tiny model ready at {model_dir} ({time.monotonic() - started:.1f} s)")
    names = []
    for job in JOBS:
        stale = [SPOOL / s / job for s in ("done", "failed") if (SPOOL / s / job).exists()]
        name = submit(spool, EXAMPLES / f"{job}.jsonl", name=job if not stale else f"{job}-{int(time.time())}").name
        names.append(name)
        say(f"submitted {name}")
    log_path = STATE / "demo-spoold.log"
    say(f"starting spoold (log: {log_path})")
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(CONFIG)], stdout=log, stderr=subprocess.STDOUT)
    daemon_started = time.monotonic()
    try:
        results = [wait_finished(n, daemon) for n in names]
        wall = time.monotonic() - daemon_started
        say(f"the same {API_JOB} job through the OpenAI Batch API (spoold api, the openai SDK):")
        api_status, api_lines = api_batch(CONFIG, API_SECRET, EXAMPLES / f"{API_JOB}.jsonl", STATE / "demo-api.log")
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
    say(f"spoold stopped cleanly (exit {code})" if code == 0 else f"spoold exited with {code}")
    print()
    print(f"{'job':<28} {'status':<10} {'requests':>8} {'ok':>4} {'err':>4} {'tokens':>7} {'seconds':>8} {'tok/s':>8}")
    for job in results:
        print(job_row(job))
    print(
        f"\nall {len(results)} jobs finished {wall:.1f} s after the daemon started (model load included; "
        "'seconds' above is inference time only)"
    )
    print("\nOne answer per job (the tiny model has random weights: gibberish, but real tokens through real vLLM):")
    for job in results:
        for line in job_samples(job):
            print(line)
    print("\nOne batch through the OpenAI Batch API:")
    for line in api_lines:
        print(line)
    print()
    for job in results:
        say(f"results: {job}/output.jsonl, errors: {job}/errors.jsonl, status: {job}/batch.json")
    return 0 if code == 0 and api_status == "completed" and all(j.parent.name == "done" for j in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
