"""`make demo` ends with per-job counts, time and one sample answer, then the paths (examples/demo.py)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

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
    assert lines[0] == "chat:"
    assert lines[1] == "  chat-1: 'Write two lines about the sea.' -> 'Write two lines about the sea.'"  # echo answers with its input
    assert len(lines) == 2  # no errors, no error line
    bad_lines = demo.job_samples(bad)
    assert bad_lines[0] == "with-bad-lines:" and " -> " in bad_lines[1]
    assert bad_lines[2].startswith("  first error, line ")
    assert int(demo.job_row(bad).split()[4]) > 0
