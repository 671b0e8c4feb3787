"""Helpers for tests that run the real `spoold api` process (and the openai SDK against it)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai

from spoold_helpers import child_env, kill_group, wait_for

KEYS = {"alice": "sk-alice-secret", "bob": "sk-bob-secret", "root": "sk-root-secret"}
KEY_OPTIONS = {"bob": "max_priority=5", "root": "operator"}
_LISTENING = re.compile(r"listening on (http://[0-9.]+:[0-9]+/v1)")


def write_keys(path: Path) -> Path:
    lines = ["# test keys"]
    for name, secret in KEYS.items():
        lines.append(f"{name} sha256:{hashlib.sha256(secret.encode()).hexdigest()} {KEY_OPTIONS.get(name, '')}".rstrip())
    path.write_text("\n".join(lines) + "\n")
    return path


def api_settings(root: Path, **extra: Any) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    return {"listen": "127.0.0.1:0", "keys_file": str(write_keys(root / "api-keys")), "max_file_bytes": "256KiB", **extra}


class ApiProcess:
    """A real `python -m spoold api --config PATH` on a free port (read back from its log)."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path, self.log_path = config_path, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> ApiProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spoold", "api", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=self.config_path.parent, start_new_session=True, umask=0o007,
            )  # fmt: skip

        def listening() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"spoold api exited with {self.proc.returncode}:\n{self.log()}")
            match = _LISTENING.search(self.log()[offset:])
            return match.group(1) if match else None

        self.base_url = wait_for(listening, 60, what="spoold api to listen")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, name: str | None = "alice", **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=KEYS[name] if name else "none", max_retries=0, **options)

    def kill(self) -> None:
        assert self.proc is not None
        kill_group(self.proc)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def spool_listing(spool: Path, skip: tuple[str, ...] = (".spoold/recent", ".spoold/locks")) -> set[str]:
    """Every path under the spool (what a refused request must not change)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(spool):
        rel = os.path.relpath(dirpath, spool)
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        for name in dirnames + filenames:
            if name == "summary.json":  # a create's cache of its scan of an upload, not a thing it made
                continue
            out.add(os.path.normpath(os.path.join(rel, name)))
    return out
