"""handlers: settings in spoold.yaml, and the retry policy's arithmetic."""

from __future__ import annotations

import pytest

from spoold.config import parse_config
from spoold.errors import ConfigError
from spoold.handlers.config import CopyConfig, ExecConfig, PythonConfig, RetryPolicy, WebhookConfig
from spoold.handlers.retry import backoff_delay, next_attempt_at

EXAMPLE = """
handlers:
  - name: results-webhook
    type: webhook
    on: [completed, failed]
    url: https://hooks.example.org/spoold
    secret_env: SPOOLD_WEBHOOK_SECRET
    timeout: 10s
    retry: {max_attempts: 5, initial_backoff: 2s, max_age: 6h}
  - name: archive
    type: exec
    on: [completed]
    command: [/usr/local/bin/archive-results, --fast]
    timeout: 5m
  - name: outbox
    type: copy
    on: [completed, cancelled]
    target_dir: /srv/outbox
  - name: results-db
    type: python
    on: [completed]
    class: spoold.handlers.examples.sqlite_import:SQLiteImporter
    settings: {database: /var/lib/spoold/results.sqlite}
"""


def test_every_type_parses_from_yaml() -> None:
    webhook, command, copy, python = parse_config(EXAMPLE).handlers
    assert isinstance(webhook, WebhookConfig) and webhook.on == ["completed", "failed"]
    assert webhook.retry.max_attempts == 5 and webhook.retry.initial_backoff == 2 and webhook.retry.max_age == 21600
    assert isinstance(command, ExecConfig) and command.timeout == 300 and command.command[1] == "--fast"
    assert isinstance(copy, CopyConfig) and copy.layout == "{job}" and copy.link is True
    assert isinstance(python, PythonConfig) and python.class_.endswith(":SQLiteImporter")
    assert python.settings == {"database": "/var/lib/spoold/results.sqlite"}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("{name: a, type: nope, on: [completed]}", "does not match any of the expected tags"),
        ("{name: a, on: [completed]}", "Unable to extract tag"),
        ("{name: a, type: exec, command: [x]}", "on: Field required"),
        ("{name: a, type: exec, on: [], command: [x]}", "at least 1 item"),
        ("{name: a, type: exec, on: [done], command: [x]}", "'completed', 'failed' or 'cancelled'"),
        ("{name: a, type: exec, on: [completed], command: [x], shell: true}", "shell: unknown key"),
        ("{name: a, type: exec, on: [completed], command: []}", "at least 1 item"),
        ("{name: a, type: webhook, on: [completed], url: 'ftp://x'}", "http:// or https://"),
        ("{name: a, type: webhook, on: [completed], url: 'http://x', secret_env: A, secret_file: /b}", "not both"),
        ("{name: a, type: copy, on: [completed], target_dir: /o, layout: '../{job}'}", "inside target_dir"),
        ("{name: a, type: copy, on: [completed], target_dir: /o, layout: '{owner}'}", "unknown field"),
        ("{name: a, type: copy, on: [completed], target_dir: /o, files: [secrets.txt]}", "files.0"),
        ("{name: a, type: python, on: [completed], class: not-a-path}", "class"),
        ("{name: 'a b', type: exec, on: [completed], command: [x]}", "name"),
        ("{name: a, type: exec, on: [completed], command: [x], retry: {max_attempts: 0}}", "max_attempts"),
    ],
)
def test_bad_handler_settings_are_config_errors(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(f"handlers: [{item}]")


def test_duplicate_names_are_refused() -> None:
    item = "{name: a, type: exec, on: [completed], command: [x]}"
    with pytest.raises(ConfigError, match="repeated: a"):
        parse_config(f"handlers: [{item}, {item}]")


def test_secrets_and_env_stay_out_of_reprs() -> None:
    webhook, command, *_ = parse_config(
        "handlers:\n"
        "  - {name: w, type: webhook, on: [completed], url: 'http://x', headers: {Authorization: Bearer-XYZ}}\n"
        "  - {name: e, type: exec, on: [completed], command: [x], env: {TOKEN: XYZ-TOKEN}}\n"
    ).handlers
    assert "Bearer-XYZ" not in repr(webhook) and "XYZ-TOKEN" not in repr(command)


def test_backoff_grows_caps_and_jitters_down() -> None:
    policy = RetryPolicy(initial_backoff=1, multiplier=2, max_backoff=10, jitter=0.5)
    assert [backoff_delay(policy, n, lambda: 0.0) for n in (1, 2, 3, 4, 5, 100)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(policy, 3, lambda: 1.0) == 2.0


def test_next_attempt_respects_attempts_age_and_retry_after() -> None:
    policy = RetryPolicy(initial_backoff=1, max_backoff=60, jitter=0, max_attempts=3, max_age=100)
    at = {"planned_at": 0.0, "random": lambda: 0.0}
    assert next_attempt_at(policy, attempts=1, now=10, retry_after=None, **at) == 11
    assert next_attempt_at(policy, attempts=3, now=10, retry_after=None, **at) is None
    assert next_attempt_at(policy, attempts=1, now=99.5, retry_after=None, **at) is None
    assert next_attempt_at(policy, attempts=1, now=10, retry_after=30, **at) == 40
    assert next_attempt_at(policy, attempts=1, now=10, retry_after=3600, **at) == 70, "Retry-After is capped by max_backoff"
