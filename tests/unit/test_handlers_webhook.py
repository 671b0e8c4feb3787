"""webhook handler against a real loopback HTTP server: signature, body, retries, no-retry on 4xx."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from spoold.errors import ConfigError
from spoold.service.handler_runs import HandlerDispatcher

from handler_helpers import (  # noqa: F401 (make_dispatcher is a fixture)
    WebhookServer,
    file_digests,
    handler_config,
    make_dispatcher,
    make_job,
    read_batch,
    read_runs,
)

SECRET = "s3cret-value-for-tests"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPOOLD_TEST_SECRET", SECRET)


@pytest.fixture
def server():
    srv = WebhookServer().start()
    yield srv
    srv.stop()


def test_retries_5xx_then_delivers_signed_body(tmp_path: Path, server: WebhookServer, make_dispatcher) -> None:
    server.script = [(500, {}), (503, {}), (200, {})]
    job_dir, batch = make_job(tmp_path)
    before = file_digests(job_dir)
    outcomes: list[tuple[str, str]] = []
    hook = handler_config(name="hook", type="webhook", url=server.url, secret_env="SPOOLD_TEST_SECRET")
    dispatcher = make_dispatcher([hook], on_outcome=lambda name, outcome: outcomes.append((name, outcome)))

    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)

    assert len(server.received) == 3
    for request in server.received:
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Spoold-Signature"] == expected
        assert request.headers["Idempotency-Key"] == f"{batch['id']}:hook"
        assert request.headers["Content-Type"] == "application/json"
    assert [r.headers["X-Spoold-Attempt"] for r in server.received] == ["1", "2", "3"]
    assert len({r.body for r in server.received}) == 1, "the body is the same on every attempt"
    body = json.loads(server.received[0].body)
    assert body["id"] == batch["id"] and body["status"] == "completed"
    assert body["request_counts"] == batch["request_counts"]
    assert "handlers" not in body["spoold"]
    assert body["spoold"]["paths"] == {
        "job_dir": str(job_dir),
        "output": str(job_dir / "output.jsonl"),
        "errors": str(job_dir / "errors.jsonl"),
        "batch": str(job_dir / "batch.json"),
    }

    result = read_batch(job_dir)["spoold"]["handlers"]["hook"]
    assert result["status"] == "ok" and result["attempts"] == 3
    assert result["delivered_at"] is not None and result["last_error"] is None
    assert read_runs(job_dir)["runs"]["hook"]["status"] == "ok"
    assert outcomes == [("hook", "ok")]
    assert file_digests(job_dir) == before
    stored = (job_dir / "batch.json").read_text() + (job_dir / ".spoold" / "handlers.json").read_text()
    assert SECRET not in stored


def test_4xx_fails_at_once_and_leaves_the_job_alone(tmp_path: Path, server: WebhookServer, make_dispatcher) -> None:
    server.script = [(400, {})]
    job_dir, batch = make_job(tmp_path)
    before = file_digests(job_dir)
    outcomes: list[tuple[str, str]] = []
    hook = handler_config(name="hook", type="webhook", url=server.url)
    dispatcher = make_dispatcher([hook], on_outcome=lambda name, outcome: outcomes.append((name, outcome)))

    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)

    assert len(server.received) == 1
    assert "X-Spoold-Signature" not in server.received[0].headers
    after = read_batch(job_dir)
    result = after["spoold"]["handlers"]["hook"]
    assert result["status"] == "failed" and result["attempts"] == 1
    assert "HTTP 400" in result["last_error"]
    assert outcomes == [("hook", "failed")]
    assert after["status"] == "completed"
    assert file_digests(job_dir) == before
    assert job_dir.exists()


def test_429_with_retry_after_is_retried(tmp_path: Path, server: WebhookServer, make_dispatcher) -> None:
    server.script = [(429, {"Retry-After": "0"}), (200, {})]
    job_dir, batch = make_job(tmp_path)
    dispatcher = make_dispatcher([handler_config(name="hook", type="webhook", url=server.url)])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert read_batch(job_dir)["spoold"]["handlers"]["hook"]["attempts"] == 2


def test_redirect_is_not_followed(tmp_path: Path, server: WebhookServer, make_dispatcher) -> None:
    server.script = [(302, {"Location": "http://127.0.0.1:1/elsewhere"})]
    job_dir, batch = make_job(tmp_path)
    dispatcher = make_dispatcher([handler_config(name="hook", type="webhook", url=server.url)])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    result = read_batch(job_dir)["spoold"]["handlers"]["hook"]
    assert result["status"] == "failed" and result["attempts"] == 1


def test_unreachable_receiver_gives_up_after_max_attempts(tmp_path: Path, make_dispatcher) -> None:
    down = WebhookServer().start()
    down.stop()  # a port that refuses connections
    job_dir, batch = make_job(tmp_path)
    retry = {"initial_backoff": 0.01, "max_backoff": 0.01, "max_attempts": 3}
    hook = handler_config(name="hook", type="webhook", url=down.url, retry=retry, timeout=2)
    dispatcher = make_dispatcher([hook])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    result = read_batch(job_dir)["spoold"]["handlers"]["hook"]
    assert result["status"] == "failed" and result["attempts"] == 3
    assert "cannot reach http://127.0.0.1" in result["last_error"]
    assert "token=abc" not in result["last_error"], "query strings (tokens) stay out of errors"


def test_missing_secret_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOOLD_NO_SUCH_SECRET", raising=False)
    hook = handler_config(name="hook", type="webhook", url="http://127.0.0.1:9/", secret_env="SPOOLD_NO_SUCH_SECRET")
    with pytest.raises(ConfigError, match="SPOOLD_NO_SUCH_SECRET is not set"):
        HandlerDispatcher([hook], "n")


def test_secret_file_is_read_and_stripped(tmp_path: Path, server: WebhookServer, make_dispatcher) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    job_dir, batch = make_job(tmp_path / "spool")
    hook = handler_config(name="hook", type="webhook", url=server.url, secret_file=str(secret_file))
    dispatcher = make_dispatcher([hook])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    request = server.received[0]
    expected = "sha256=" + hmac.new(b"from-a-file", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Spoold-Signature"] == expected


def test_non_ascii_job_names_are_sent(tmp_path: Path, server: WebhookServer, make_dispatcher) -> None:
    job_dir, batch = make_job(tmp_path, "résumé-jobs")
    dispatcher = make_dispatcher([handler_config(name="hook", type="webhook", url=server.url)])
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(10)
    assert server.received[0].headers["X-Spoold-Job"] == "r%C3%A9sum%C3%A9-jobs"
    assert json.loads(server.received[0].body)["spoold"]["job"] == "résumé-jobs"
