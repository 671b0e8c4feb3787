"""Helpers for the handler tests: fake finished jobs, a loopback webhook receiver, a recording handler."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from spoold.handlers.base import Handler, HandlerEvent, PermanentHandlerError
from spoold.handlers.config import AnyHandlerConfig, HandlerConfig
from spoold.service.handler_runs import HandlerDispatcher

FAST_RETRY: dict[str, Any] = {"initial_backoff": 0.01, "max_backoff": 0.05, "jitter": 0.0}

_ADAPTER: TypeAdapter[AnyHandlerConfig] = TypeAdapter(HandlerConfig)


def handler_config(**settings: Any) -> AnyHandlerConfig:
    """A validated handler config, with fast retries unless `retry` is given."""
    settings.setdefault("on", ["completed", "failed", "cancelled"])
    settings.setdefault("retry", FAST_RETRY)
    return _ADAPTER.validate_python(settings)


def make_batch(name: str, status: str = "completed", batch_id: str | None = None) -> dict[str, Any]:
    return {
        "id": batch_id or f"batch_{name}",
        "object": "batch",
        "endpoint": "/v1/completions",
        "completion_window": "24h",
        "input_file_id": "input.jsonl",
        "output_file_id": "output.jsonl",
        "error_file_id": "errors.jsonl",
        "status": status,
        "created_at": 1_700_000_000,
        f"{status}_at": 1_700_000_100,
        "request_counts": {"total": 3, "completed": 2, "failed": 1},
        "model": "tiny-random",
        "metadata": {"project": "tests"},
        "spoold": {"node": "test-node", "job": name},
    }


def make_job(spool: Path, name: str = "job1", status: str = "completed", folder: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A job directory as the core leaves it: results, batch.json and a `.spoold/` state folder."""
    folder = folder or ("failed" if status == "failed" else "done")
    job_dir = spool / folder / name
    (job_dir / ".spoold").mkdir(parents=True)
    (job_dir / "input.jsonl").write_text('{"custom_id": "a", "prompt": "x"}\n{"custom_id": "b", "prompt": "y"}\n')
    (job_dir / "meta.yaml").write_text("model: tiny-random\n")
    out = {"id": "r1", "custom_id": "a", "response": {"status_code": 200, "body": {"choices": [{"text": "hi"}]}}, "error": None}
    err = {"id": "r2", "custom_id": "b", "response": None, "error": {"code": "bad", "message": "bad line", "line": 2}}
    (job_dir / "output.jsonl").write_text(json.dumps(out) + "\n")
    (job_dir / "errors.jsonl").write_text(json.dumps(err) + "\n")
    batch = make_batch(name, status)
    (job_dir / "batch.json").write_text(json.dumps(batch, indent=2) + "\n")
    for sub in ("inbox", "processing", "done", "failed"):
        (spool / sub).mkdir(exist_ok=True)
    return job_dir, batch


def event_for(job_dir: Path, batch: dict[str, Any], handler: str, attempt: int = 1) -> HandlerEvent:
    """The event the dispatcher would hand `handler` for this finished job."""
    from spoold.handlers.records import batch_for_handlers

    return HandlerEvent(
        job=job_dir.name,
        status=batch["status"],
        job_dir=job_dir,
        output=job_dir / "output.jsonl",
        errors=job_dir / "errors.jsonl",
        batch_file=job_dir / "batch.json",
        batch=batch_for_handlers(batch),
        handler=handler,
        attempt=attempt,
        idempotency_key=f"{batch['id']}:{handler}",
    )


def read_batch(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / "batch.json").read_text())


def read_runs(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / ".spoold" / "handlers.json").read_text())


def file_digests(job_dir: Path) -> dict[str, str]:
    """Digest of every user-facing file (batch.json without `spoold.handlers`), to prove nothing else changed."""
    digests = {}
    for path in sorted(job_dir.iterdir()):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "batch.json":
                batch = json.loads(data)
                batch.get("spoold", {}).pop("handlers", None)
                data = json.dumps(batch, sort_keys=True).encode()
            digests[path.name] = hashlib.sha256(data).hexdigest()
    return digests


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookServer:
    """A loopback HTTP receiver that answers from a script of (status, headers), then 200."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> WebhookServer:
        receiver = self

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                payload = b'{"ok": true}' if status < 300 else b'{"error": "scripted"}'
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handle)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=abc"


class RecordingHandler(Handler):
    """A `type: python` handler for tests: records events; fails the first `fail_times` attempts."""

    events: list[HandlerEvent] = []

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.fail_times = int(settings.get("fail_times", 0))
        self.permanent = bool(settings.get("permanent", False))

    def handle(self, event: HandlerEvent) -> None:
        RecordingHandler.events.append(event)
        if event.attempt <= self.fail_times:
            if self.permanent:
                raise PermanentHandlerError("refused for good")
            raise RuntimeError(f"scripted failure {event.attempt}")


class NotAHandler:
    pass


@pytest.fixture
def make_dispatcher() -> Iterator[Callable[..., HandlerDispatcher]]:
    """Build started dispatchers; every one is stopped at the end of the test."""
    made: list[HandlerDispatcher] = []

    def make(configs: list[AnyHandlerConfig], node: str = "test-node", **kwargs: Any) -> HandlerDispatcher:
        dispatcher = HandlerDispatcher(configs, node, **kwargs)
        dispatcher.start()
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.stop(timeout=5)
