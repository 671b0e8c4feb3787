"""Helpers for tests that run the real `spoold` process against a temporary spool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def chat_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": text}], **body},
    }


def write_jsonl(path: Path, lines: list[Any]) -> None:
    """Dicts become JSON lines; strings are written as they are (for bad lines)."""
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def drop_job(inbox: Path, name: str, lines: list[Any], sidecar: dict[str, Any] | str | None = None) -> None:
    """As a careful user would: the input first, the sidecar last (each via a temp name)."""
    tmp = inbox / f".{name}.jsonl.tmp"
    write_jsonl(tmp, lines)
    os.rename(tmp, inbox / f"{name}.jsonl")
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else yaml.safe_dump(sidecar)
        (inbox / f".{name}.yaml.tmp").write_text(text)
        os.rename(inbox / f".{name}.yaml.tmp", inbox / f"{name}.yaml")


def jsonl_lines(path: Path) -> list[str]:
    """Split on newlines only: str.splitlines() also splits on U+2028 and \\x1e, which models emit."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def read_records(job_dir: Path) -> list[dict[str, Any]]:
    records = []
    for name in ("output.jsonl", "errors.jsonl"):
        path = job_dir / name
        if path.exists():
            records.extend(json.loads(line) for line in jsonl_lines(path))
    return records


def record_line(record: dict[str, Any]) -> int | None:
    if record.get("error"):
        return record["error"].get("line")
    return None


def assert_exactly_once(job_dir: Path, custom_ids: list[str]) -> None:
    """Every custom_id has exactly one record across output.jsonl + errors.jsonl."""
    seen = Counter(r["custom_id"] for r in read_records(job_dir))
    missing = [c for c in custom_ids if seen[c] == 0]
    twice = {c: n for c, n in seen.items() if n > 1}
    wanted = set(custom_ids)
    extra = [c for c in seen if c not in wanted]
    assert not missing and not twice and not extra, f"missing={missing[:10]} twice={list(twice)[:10]} extra={extra[:10]}"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a spoold child process; a relative PYTHONPATH is made absolute,
    since children run in a temp directory (else they would import another copy of spoold)."""
    env = {**os.environ, **(extra or {})}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 of a process started in its own session and of every process in its group; reaped."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


class SpooldProcess:
    """A real `python -m spoold run` on a temp spool, with its log captured to a file."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.spool = root / "spool"
        self.config_path = root / "spoold.yaml"
        self.log_path = root / "spoold.log"
        config: dict[str, Any] = {
            "spool_dir": str(self.spool),
            "node_id": "test-node",
            "watch": {"settle_seconds": 0.3, "poll_interval": 0.3, "orphan_seconds": 2},
            "engine": {"backend": "echo", "state_dir": str(root / "state")},
            "chunk_size": 10,
            "lease_seconds": 5,
            "metrics": {"listen": ""},
            "logging": {"format": "text", "level": "info"},
        }
        _merge(config, overrides)
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))
        for path in (self.spool, *(self.spool / s for s in ("inbox", "processing", "done", "failed"))):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o2770)  # as `spoold init` makes them (else the daemon warns at start)
        self.proc: subprocess.Popen[bytes] | None = None
        self.umask = 0o007  # as the units' UMask= (else the daemon warns at start)

    @property
    def inbox(self) -> Path:
        return self.spool / "inbox"

    def start(self, env: dict[str, str] | None = None) -> SpooldProcess:
        full_env = child_env(env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spoold", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=self.root,
                start_new_session=True,  # its own process group, like a systemd unit's cgroup
                umask=self.umask,
            )  # fmt: skip
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """kill -9 as systemd does it: the daemon and every process it started (vLLM workers)."""
        assert self.proc is not None
        kill_group(self.proc)

    def catches_sigterm(self) -> bool:
        """Whether the daemon has installed its SIGTERM handler yet (SigCgt in /proc), or has exited."""
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return True
        caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
        return self.proc.poll() is not None or bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM as systemd sends it, once the daemon is far enough along to catch it (a stop sent
        while Python is still importing would kill it with the default action: a test race, not a bug)."""
        assert self.proc is not None
        wait_for(self.catches_sigterm, timeout, what="the daemon to install its SIGTERM handler")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def job_dir(self, state: str, name: str) -> Path:
        return self.spool / state / name

    def wait_finished(self, name: str, timeout: float = 60) -> Path:
        def found() -> Path | None:
            for state in ("done", "failed"):
                if (self.spool / state / name / "batch.json").exists():
                    return self.spool / state / name
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"spoold exited with {self.proc.returncode}:\n{self.log()}")
            return None

        try:
            return wait_for(found, timeout, what=f"job {name} to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- spoold log ---\n{self.log()}") from None

    def batch(self, job_dir: Path) -> dict[str, Any]:
        return json.loads((job_dir / "batch.json").read_text())

    def cli(self, *args: str, check: bool = False, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "spoold", *args, *([] if "--config" in args else ["--config", str(self.config_path)])],
            capture_output=True, text=True, cwd=self.root, input=input_text, timeout=120, env=child_env(),
        )  # fmt: skip
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def __enter__(self) -> SpooldProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # also any worker a stopped daemon left
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


class LatestCheckpoint:
    """A job's (or shard's) newest checkpoint file, whatever its lease generation (`checkpoint.<gen>.json`)."""

    def __init__(self, state) -> None:
        self.state = Path(state)

    def _path(self):
        from spoold.job.checkpoint import checkpoint_path, latest_gen

        gen = latest_gen(self.state)
        return None if gen is None else checkpoint_path(self.state, gen)

    def exists(self) -> bool:
        path = self._path()
        return path is not None and path.exists()

    def read_text(self) -> str:
        path = self._path()
        if path is None:
            raise FileNotFoundError(self.state / "checkpoint.*.json")
        return path.read_text()
