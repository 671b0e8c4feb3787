"""`make demo` ends with per-job counts, time and one sample answer, then the paths (examples/demo.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from api_helpers import KEYS, api_settings

from spoold.api.keys import hash_secret, parse_keys

from spoold_helpers import SpooldProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spoold_demo", EXAMPLES / "demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_report_shows_counts_time_and_a_sample_answer(tmp_path: Path) -> None:
    """The example jobs through the real daemon (echo backend: the answer is the question), then the report."""
    demo = _demo()
    with SpooldProcess(tmp_path) as d:
        d.start()
        for job in ("chat", "with-bad-lines"):
            shutil.copy(EXAMPLES / f"{job}.jsonl", d.inbox / f"{job}.jsonl")
            shutil.copy(EXAMPLES / f"{job}.yaml", d.inbox / f"{job}.yaml")
        chat, bad = d.wait_finished("chat"), d.wait_finished("with-bad-lines")
        assert d.stop() == 0
    batch = d.batch(chat)
    row = demo.job_row(chat).split()
    assert row[:5] == ["chat", "completed", str(batch["request_counts"]["total"]), str(batch["request_counts"]["completed"]), "0"]
    assert float(row[6]) == pytest.approx(batch["spoold"]["durations"]["running_seconds"], abs=0.01)
    lines = demo.job_samples(chat)
    assert lines[0] == "chat (model tiny-random):"  # the model (or adapter) that answered
    assert lines[1] == "  chat-1: 'Write two lines about the sea.' -> 'Write two lines about the sea.'"  # echo answers with its input
    assert len(lines) == 2  # no errors, no error line
    bad_lines = demo.job_samples(bad)
    assert bad_lines[0].startswith("with-bad-lines (model ") and " -> " in bad_lines[1]
    assert bad_lines[2].startswith("  first error, line ")
    assert int(demo.job_row(bad).split()[4]) > 0


def test_demo_api_helpers_write_a_key_and_read_the_listening_url() -> None:
    demo = _demo()
    line = demo.keys_line("demo", "sk-x")
    assert line == "demo sha256:" + hashlib.sha256(b"sk-x").hexdigest()
    assert set(parse_keys(line)) == {hash_secret("sk-x")}  # the API reads what the demo writes
    log = "INFO spoold.api.server: spoold api listening on http://127.0.0.1:40123/v1 (spool /s, 1 key(s))\n"
    assert demo.api_url("starting\n") is None
    assert demo.api_url(log) == "http://127.0.0.1:40123/v1"


@pytest.mark.slow
def test_demo_sends_one_batch_through_the_api_and_names_its_results(tmp_path: Path) -> None:
    """The demo's API step against a real daemon (echo backend) and a real `spoold api`: the SDK's batch completes."""
    demo = _demo()
    with SpooldProcess(tmp_path, api=api_settings(tmp_path)) as d:
        d.start()
        status, lines = demo.api_batch(d.config_path, KEYS["alice"], EXAMPLES / "chat.jsonl", tmp_path / "api.log", timeout=120)
        assert d.stop() == 0
    assert status == "completed"
    batch_id = lines[0].split("batch ")[1].split()[0]
    assert lines[0].endswith("completed, 8/8 requests answered")
    assert lines[1] == "  chat-1 -> 'Write two lines about the sea.'"  # echo answers with its input
    assert lines[2].startswith(f"  on disk: {d.spool / 'done' / batch_id}/")
    assert (d.spool / "done" / batch_id / "output.jsonl").exists()
