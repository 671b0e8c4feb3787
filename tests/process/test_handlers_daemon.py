"""Handlers through the real daemon: a webhook receiver on loopback and an exec handler."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from handler_helpers import WebhookServer
from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for

pytestmark = pytest.mark.slow

SECRET = "s3cret-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _handlers(port: int, tmp_path: Path) -> list[dict]:
    fast = {"initial_backoff": 0.2, "max_backoff": 0.5, "jitter": 0.0}
    script = tmp_path / "exec_handler.py"
    script.write_text(
        "import json, os, sys\n"
        "batch = json.load(sys.stdin)\n"
        "open(os.environ['OUT'], 'a').write(json.dumps({'job': os.environ['SPOOLD_JOB'], 'status': os.environ['SPOOLD_STATUS'], "
        "'id': batch['id'], 'output': os.environ['SPOOLD_OUTPUT']}) + '\\n')\n"
    )
    return [
        {"name": "hook", "type": "webhook", "on": ["completed", "failed"], "url": f"http://127.0.0.1:{port}/in",
         "secret_env": "SPOOLD_TEST_SECRET", "retry": fast},
        {"name": "log", "type": "exec", "on": ["completed", "failed", "cancelled"], "command": [sys.executable, str(script)],
         "env": {"OUT": str(tmp_path / "exec.out")}, "timeout": 30, "retry": fast},
    ]  # fmt: skip


def test_webhook_and_exec_after_a_job(tmp_path: Path) -> None:
    server = WebhookServer(script=[(500, {}), (503, {})]).start()
    try:
        with SpooldProcess(tmp_path, handlers=_handlers(server.port, tmp_path)) as d:
            d.start({"SPOOLD_TEST_SECRET": SECRET})
            drop_job(d.inbox, "notify", [chat_line("a", "hi")], {})
            job = d.wait_finished("notify")
            wait_for(lambda: len(server.received) >= 3, 30, what="three webhook attempts")
            hit = server.received[-1]
            signature = hit.headers.get("X-Spoold-Signature")
            assert signature == "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
            body = json.loads(hit.body)
            assert body["id"] == d.batch(job)["id"] and body["status"] == "completed"
            wait_for(lambda: d.batch(job)["spoold"].get("handlers", {}).get("hook", {}).get("status") == "ok", 20, what="hook ok")
            handlers = d.batch(job)["spoold"]["handlers"]
            assert handlers["hook"]["attempts"] == 3
            wait_for(lambda: handlers_ok(d, job, "log"), 20, what="exec ok")
            line = json.loads((tmp_path / "exec.out").read_text())
            assert line == {"job": "notify", "status": "completed", "id": body["id"], "output": str(job / "output.jsonl")}
            assert d.batch(job)["status"] == "completed"
            rows = json.loads(d.cli("status", "notify", "--json", check=True).stdout)
            assert rows[0]["handlers"] == {"hook": "ok", "log": "ok"}
            assert "hook:ok" in d.cli("status", check=True).stdout
            assert SECRET not in d.log() and SECRET not in (job / "batch.json").read_text()
    finally:
        server.stop()


def handlers_ok(d: SpooldProcess, job: Path, name: str) -> bool:
    return d.batch(job)["spoold"].get("handlers", {}).get(name, {}).get("status") == "ok"


def test_receiver_down_across_a_restart_delivers_exactly_once(tmp_path: Path) -> None:
    port = _free_port()
    with SpooldProcess(tmp_path, handlers=_handlers(port, tmp_path)[:1]) as d:
        d.start({"SPOOLD_TEST_SECRET": SECRET})
        drop_job(d.inbox, "later", [chat_line("a", "hi")], {})
        job = d.wait_finished("later")
        wait_for(lambda: d.batch(job)["spoold"].get("handlers", {}).get("hook", {}).get("attempts", 0) >= 1, 20, what="a failed attempt")
        d.kill()
        assert d.batch(job)["spoold"]["handlers"]["hook"]["status"] in ("pending", "retrying")
        server = WebhookServer(port=port).start()
        try:
            d.start({"SPOOLD_TEST_SECRET": SECRET})
            wait_for(lambda: handlers_ok(d, job, "hook"), 30, what="delivery after restart")
            assert d.stop() == 0
            d.start({"SPOOLD_TEST_SECRET": SECRET})
            time.sleep(2.0)
            assert d.stop() == 0
            assert len(server.received) == 1
            assert server.received[0].headers.get("Idempotency-Key", "").endswith(":hook")
        finally:
            server.stop()


def test_cli_cancel_of_a_queued_job_runs_cancel_handlers(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path, handlers=_handlers(_free_port(), tmp_path)[1:]) as d:
        drop_job(d.inbox, "nope", [chat_line("a", "hi")], {})
        assert "cancelled nope" in d.cli("cancel", "nope", check=True).stdout
        d.start()
        wait_for(lambda: (tmp_path / "exec.out").exists(), 30, what="the cancel handler")
        assert json.loads((tmp_path / "exec.out").read_text())["status"] == "cancelled"
