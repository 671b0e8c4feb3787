"""The real `spoold run` with the vllm backend on the built-in tiny models (CPU build of vLLM).

Each daemon loads its own engine (~20 s here), so these tests do much per daemon run.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, chat_line, drop_job, jsonl_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


def _daemon(root: Path, state_dir: Path, max_attempts: int = 3, **overrides: object) -> SpooldProcess:
    engine = {"backend": "vllm", "state_dir": str(state_dir), "window": 64, "max_attempts": max_attempts}
    return SpooldProcess(root, engine=engine, watch={"settle_seconds": 0.3, "poll_interval": 0.3}, **overrides)


def test_jobs_through_real_vllm_with_one_model_switch(tmp_path: Path, tiny_state_dir: Path) -> None:
    with _daemon(tmp_path, tiny_state_dir, max_attempts=1) as d:
        chat = [chat_line(f"c{i}", f"Say something about {i}.", max_tokens=12, temperature=0) for i in range(20)]
        chat.append(chat_line("seeded-1", "same", max_tokens=10, temperature=1.0, seed=5))
        chat.append(chat_line("seeded-2", "same", max_tokens=10, temperature=1.0, seed=5))
        chat.append(chat_line("stopper", "go", max_tokens=30, temperature=0, stop=["e"]))
        drop_job(d.inbox, "chat", chat, {"model": "tiny-random", "chunk_size": 5, "priority": 2})
        completions = [
            {"custom_id": "p1", "url": "/v1/completions", "body": {"prompt": "Once upon a time", "max_tokens": 7, "temperature": 0}},
            {"custom_id": "huge", "url": "/v1/completions", "body": {"prompt": "word " * 3000, "max_tokens": 5}},
            {"custom_id": "badparam", "url": "/v1/completions", "body": {"prompt": "x", "temperature": -3}},
        ]
        drop_job(d.inbox, "cmpl", completions, {"model": "tiny-random", "priority": 1})
        drop_job(d.inbox, "other", [chat_line("b1", "hello", max_tokens=4)], {"model": "tiny-random-b"})
        not_a_model = tmp_path / "not-a-model"
        not_a_model.mkdir()
        drop_job(d.inbox, "broken-model", [chat_line("x", "hi")], {"model": str(not_a_model), "priority": 9})
        d.start(VLLM_ENV)

        # A model that cannot load fails its job with a reason; the daemon stays up for the rest.
        job = d.wait_finished("broken-model", timeout=120)
        assert job.parent.name == "failed"
        reason = d.batch(job)["errors"]["data"][0]["message"]
        assert reason.startswith(f"model {not_a_model} failed to load") and "\n" not in reason

        job = d.wait_finished("chat", timeout=300)
        assert job.parent.name == "done"
        assert_exactly_once(job, [c["custom_id"] for c in chat])
        outputs = {r["custom_id"]: r for r in map(json.loads, jsonl_lines(job / "output.jsonl"))}
        body = outputs["c0"]["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "tiny-random"
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert 0 < usage["completion_tokens"] <= 12 and usage["prompt_tokens"] > 5
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        same = [outputs[k]["response"]["body"]["choices"][0]["message"]["content"] for k in ("seeded-1", "seeded-2")]
        assert same[0] == same[1]
        stopped = outputs["stopper"]["response"]["body"]["choices"][0]
        assert "e" not in stopped["message"]["content"]
        batch = d.batch(job)
        assert batch["usage"]["output_tokens"] == sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs.values())

        job = d.wait_finished("cmpl", timeout=120)
        assert job.parent.name == "done"
        errors = {e["custom_id"]: e["error"] for e in map(json.loads, jsonl_lines(job / "errors.jsonl"))}
        assert set(errors) == {"huge", "badparam"}
        assert errors["huge"]["line"] == 2 and "context" in errors["huge"]["code"] + errors["huge"]["message"]
        assert "temperature" in errors["badparam"]["message"]
        text = json.loads((job / "output.jsonl").read_text())["response"]["body"]
        assert text["object"] == "text_completion" and text["usage"]["completion_tokens"] <= 7

        job = d.wait_finished("other", timeout=180)
        assert job.parent.name == "done" and d.batch(job)["model"] == "tiny-random-b"
        assert d.log().count("switching model tiny-random -> tiny-random-b") == 1
        assert d.stop(timeout=120) == 0


def test_kill_9_and_sigterm_during_a_real_vllm_job_are_exactly_once(tmp_path: Path, tiny_state_dir: Path) -> None:
    with _daemon(tmp_path, tiny_state_dir) as d:
        ids = [f"k{i}" for i in range(2500)]
        lines = [chat_line(c, f"Tell me about {c}.", max_tokens=32, temperature=0.7, seed=i) for i, c in enumerate(ids)]
        drop_job(d.inbox, "real", lines, {"chunk_size": 100})
        d.start(VLLM_ENV)
        ckpt = LatestCheckpoint(d.job_dir("processing", "real") / ".spoold")
        wait_for(lambda: ckpt.exists() and json.loads(ckpt.read_text())["chunks"] >= 2, 300, what="two checkpoints")
        time.sleep(random.Random(3).uniform(0.2, 1.5))
        d.kill()
        done_before = json.loads(ckpt.read_text())["succeeded"]
        assert 0 < done_before < len(ids)

        # systemctl restart: SIGTERM mid-job with the real engine loaded drains, checkpoints and exits 0.
        d.start(VLLM_ENV)
        wait_for(lambda: json.loads(ckpt.read_text())["succeeded"] > done_before, 300, what="progress after the restart")
        assert d.stop(timeout=90) == 0
        done_at_stop = json.loads(ckpt.read_text())["succeeded"]
        assert done_before < done_at_stop < len(ids)

        d.start(VLLM_ENV)
        job = d.wait_finished("real", timeout=600)
        assert job.parent.name == "done"
        assert_exactly_once(job, ids)
        assert d.batch(job)["request_counts"] == {"total": 2500, "completed": 2500, "failed": 0}
        assert "resuming from its checkpoint" in d.log()
        assert d.stop(timeout=120) == 0
