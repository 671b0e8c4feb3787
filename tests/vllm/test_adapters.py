"""LoRA adapters on real vLLM (SPEC section 12): many adapter jobs on one loaded base engine, no model switch.

The reference answers come from vLLM itself, driven as `LLM.generate` drives it (the renderer, then
`add_request` with the adapter's LoRARequest, then `step` until done), on the session engine
(`vllm_engine`, loaded with enable_lora since tiny-random declares adapters): no extra engine load.
The daemon test loads its own engine twice (before and after a kill -9).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from spoold import tinymodel
from spoold.engine.base import EngineRequest
from spoold.engine.profiles import BUILTIN_DIR

from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, drop_job, jsonl_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
PROMPTS = [f"Tell me about the number {i}" for i in range(10)]


def temperature(seed: int) -> float:
    """Even seeds greedy, odd ones sampled: at temperature 1 the tiny model's near-uniform tokens hide the
    adapters' effect (one seed draws the same token whatever the adapter), greedy and 0.5 show it."""
    return 0.0 if seed % 2 == 0 else 0.5


def completion(custom_id: str, prompt: str, seed: int) -> dict[str, Any]:
    body = {"prompt": prompt, "max_tokens": 8, "temperature": temperature(seed), "seed": seed, "ignore_eos": True}
    return {"custom_id": custom_id, "url": "/v1/completions", "body": body}


def vllm_generate(engine: Any, prompts: list[str], seeds: list[int], adapter: tuple[str, str] | None) -> list[str]:
    """What `LLM.generate(prompts, SamplingParams(seed=...), lora_request=...)` does, on the session engine's LLMEngine."""
    from vllm import SamplingParams

    llm = engine._llm
    lora = engine.loras.request_for(adapter)  # the engine's own id for this adapter: vLLM caches adapters by id
    texts: dict[str, str] = {}
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        params = SamplingParams(max_tokens=8, temperature=temperature(seed), seed=seed, ignore_eos=True)
        llm.add_request(f"ref-{time.monotonic_ns()}-{i}", llm.renderer.render_cmpl([{"prompt": prompt}])[0], params, lora_request=lora)
    ids = {}
    while llm.has_unfinished_requests():
        for output in llm.step():
            if output.finished:
                ids[output.request_id] = output.outputs[0].text
    for request_id, text in ids.items():
        texts[request_id.rsplit("-", 1)[1]] = text
    return [texts[str(i)] for i in range(len(prompts))]


def test_adapter_requests_on_the_session_engine(tiny_engine: Any, tiny_state_dir: Path, tmp_path: Path) -> None:
    a = ("tiny-random-lora-a", str(tinymodel.ensure_builtin_adapter("tiny-random-lora-a", tiny_state_dir)))
    b = ("tiny-random-lora-b", str(tinymodel.ensure_builtin_adapter("tiny-random-lora-b", tiny_state_dir)))
    wide = tinymodel.build_tiny_adapter(tmp_path / "wide", seed=9, rank=16)
    requests = [
        EngineRequest(1, "base", "completion", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, key=1),
        EngineRequest(2, "a", "completion", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, key=2, adapter=a),
        EngineRequest(3, "b", "completion", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, key=3, adapter=b),
        EngineRequest(4, "w", "completion", {"prompt": "x", "max_tokens": 2}, key=4, adapter=("wide", str(wide))),
    ]
    results = {}
    for request in requests:
        rejected = tiny_engine.add(request)
        if rejected is not None:
            results[rejected.custom_id] = rejected
    while tiny_engine.in_flight():
        for result in tiny_engine.step():
            results[result.custom_id] = result
    assert results["w"].error.message == "adapter wide has rank 16, above the engine's max_lora_rank 8 for model tiny-random"
    bodies = {k: results[k].body for k in ("base", "a", "b")}
    assert [bodies[k]["model"] for k in ("base", "a", "b")] == ["tiny-random", "tiny-random-lora-a", "tiny-random-lora-b"]
    texts = [bodies[k]["choices"][0]["text"] for k in ("base", "a", "b")]
    assert len(set(texts)) == 3, texts  # each adapter changes the answer
    assert tiny_engine.loras.ids()["tiny-random-lora-a"] != tiny_engine.loras.ids()["tiny-random-lora-b"]


def adapter_profiles(tmp_path: Path) -> tuple[Path, Path]:
    """tiny-random again, with a third adapter, max_loras 2 (three adapters take turns), and broken adapters."""
    custom = tinymodel.build_tiny_adapter(tmp_path / "adapters" / "custom", seed=55)
    wide = tinymodel.build_tiny_adapter(tmp_path / "adapters" / "wide", seed=56, rank=16)
    other = tinymodel.build_tiny_adapter(tmp_path / "adapters" / "other", seed=57, base="builtin:tiny-random-b")
    profile = yaml.safe_load((BUILTIN_DIR / "tiny-random.yaml").read_text())
    profile["max_loras"], profile["max_lora_rank"] = 2, 8
    profile["adapters"] += [
        {"name": "tiny-random-lora-c", "path": str(custom)},
        {"name": "wide", "path": str(wide)},
        {"name": "gone", "path": str(tmp_path / "adapters" / "gone")},
        {"name": "other", "path": str(other)},
    ]
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny-random.yaml").write_text(yaml.safe_dump(profile))
    return models, custom


def outputs_of(job: Path) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r["response"]["body"] for r in map(json.loads, jsonl_lines(job / "output.jsonl"))}


def test_adapter_jobs_share_one_engine_equal_vllm_and_resume_once_after_kill_9(
    tmp_path: Path, tiny_state_dir: Path, vllm_engine: Any
) -> None:
    models, custom = adapter_profiles(tmp_path)
    engine = {"backend": "vllm", "state_dir": str(tiny_state_dir), "window": 64, "model_dirs": [str(models)], "max_active_jobs": 4}
    d = SpooldProcess(tmp_path / "run", engine=engine, watch={"settle_seconds": 0.3, "poll_interval": 0.3})
    paths = {n: str(tinymodel.ensure_builtin_adapter(n, tiny_state_dir)) for n in ("tiny-random-lora-a", "tiny-random-lora-b")}
    paths["tiny-random-lora-c"] = str(custom)
    jobs = {"job-a": "tiny-random-lora-a", "job-b": "tiny-random-lora-b", "job-c": "tiny-random-lora-c", "job-base": "tiny-random"}
    seeds = list(range(100, 100 + len(PROMPTS)))
    with d:
        bad = {"bad-wide": "wide", "bad-gone": "gone", "bad-other": "other", "bad-unknown": "tiny-random-lora-z"}
        for name, model in bad.items():
            drop_job(d.inbox, name, [completion("x", "hi", 1)], {"model": model, "priority": 5})
        for name, model in jobs.items():
            lines = [completion(f"{name}-{i}", p, s) for i, (p, s) in enumerate(zip(PROMPTS, seeds, strict=True))]
            drop_job(d.inbox, name, lines, {"model": model, "chunk_size": 3})
        d.start(VLLM_ENV)

        # Each broken adapter fails its job before any model load, with one sentence naming it.
        reasons = {}
        for name in bad:
            job = d.wait_finished(name, timeout=120)
            assert job.parent.name == "failed"
            reasons[name] = d.batch(job)["errors"]["data"][0]["message"]
            assert "\n" not in reasons[name] and bad[name] in reasons[name]
        assert reasons["bad-wide"] == "adapter wide has rank 16, above the engine's max_lora_rank 8 for model tiny-random"
        assert reasons["bad-gone"].startswith("adapter gone: its folder") and reasons["bad-gone"].endswith("does not exist")
        assert reasons["bad-other"].startswith("adapter other was made for model tiny-random-b")
        assert reasons["bad-unknown"].startswith("unknown model 'tiny-random-lora-z'")

        # The base and three adapters (max_loras 2: they take turns) on one engine, side by side.
        finished = {name: d.wait_finished(name, timeout=300) for name in jobs}
        log = d.log()
        assert log.count("loading model") == 1 and "loading model tiny-random (builtin:tiny-random)" in log
        assert "switching model" not in log
        batches = {name: d.batch(job) for name, job in finished.items()}
        first, second = batches["job-a"], batches["job-b"]
        assert first["in_progress_at"] < second["completed_at"] and second["in_progress_at"] < first["completed_at"]  # overlapped
        for name, model in jobs.items():
            job = finished[name]
            assert job.parent.name == "done", name
            ids = [f"{name}-{i}" for i in range(len(PROMPTS))]
            assert_exactly_once(job, ids)
            assert batches[name]["model"] == model and batches[name]["request_counts"]["completed"] == len(PROMPTS)
            outputs = outputs_of(job)
            assert {body["model"] for body in outputs.values()} == {model}
            adapter = (model, paths[model]) if model in paths else None
            expected = vllm_generate(vllm_engine, PROMPTS, seeds, adapter)
            assert [outputs[i]["choices"][0]["text"] for i in ids] == expected, name
        texts = {name: outputs_of(finished[name])[f"{name}-0"]["choices"][0]["text"] for name in jobs}
        assert len(set(texts.values())) == 4, texts  # each adapter answers differently

        # kill -9 during an adapter job: it resumes exactly once, with the same adapter.
        ids = [f"k{i}" for i in range(1500)]
        long_seeds = list(range(len(ids)))
        drop_job(
            d.inbox,
            "long",
            [completion(c, f"Say {c}", s) for c, s in zip(ids, long_seeds, strict=True)],
            {"model": "tiny-random-lora-b", "chunk_size": 25},
        )
        ckpt = LatestCheckpoint(d.job_dir("processing", "long") / ".spoold")
        wait_for(lambda: ckpt.exists() and json.loads(ckpt.read_text())["chunks"] >= 2, 300, what="two checkpoints")
        d.kill()
        done_before = json.loads(ckpt.read_text())["succeeded"]
        assert 0 < done_before < len(ids)
        d.start(VLLM_ENV)
        job = d.wait_finished("long", timeout=600)
        assert job.parent.name == "done"
        assert_exactly_once(job, ids)
        assert d.batch(job)["model"] == "tiny-random-lora-b"
        outputs = outputs_of(job)
        assert {body["model"] for body in outputs.values()} == {"tiny-random-lora-b"}
        sample = ids[:: len(ids) // 12]  # lines from before and after the kill
        expected = vllm_generate(
            vllm_engine,
            [f"Say {c}" for c in sample],
            [long_seeds[ids.index(c)] for c in sample],
            ("tiny-random-lora-b", paths["tiny-random-lora-b"]),
        )
        assert [outputs[c]["choices"][0]["text"] for c in sample] == expected
        assert "resuming from its checkpoint" in d.log()
        assert d.stop(timeout=120) == 0
