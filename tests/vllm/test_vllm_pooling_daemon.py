"""Embeddings, score and rerank jobs through the real `spoold run` with vLLM (CPU) and tiny-embed.

One scenario (two daemon runs, so two engine loads in all) is shared by the tests
of this module: a large embeddings job is killed with -9 part-way, the daemon is
started again, and it finishes that job and a mixed job of every line kind.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse

from spoold_helpers import LatestCheckpoint, SpooldProcess, assert_exactly_once, drop_job, jsonl_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CORPUS = 3000
MIXED: list[Any] = [
    {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["alpha beta", "gamma"], "model": "tiny-embed"}},
    {"custom_id": "emb-b64", "url": "/v1/embeddings", "body": {"input": ["alpha beta", "gamma"], "encoding_format": "base64"}},
    {"custom_id": "emb-dim", "url": "/v1/embeddings", "body": {"input": [1, 2, 3], "dimensions": 64}},
    {"custom_id": "emb-baddim", "url": "/v1/embeddings", "body": {"input": "x", "dimensions": 100}},
    {"input": "a shorthand line"},
    {"custom_id": "score", "url": "/v1/score", "body": {"queries": "alpha", "documents": ["alpha beta", "gamma"]}},
    {"custom_id": "rerank", "url": "/v1/rerank", "body": {"query": "alpha", "documents": ["gamma", "alpha beta", "delta"], "top_n": 2}},
    {"custom_id": "chat", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "hi"}]}},
    {"prompt": "a completion shorthand"},
    {"custom_id": "bad-format", "url": "/v1/embeddings", "body": {"input": "x", "encoding_format": "hex"}},
]


@dataclass
class Scenario:
    daemon: SpooldProcess
    corpus: Path
    mixed: Path
    done_before_kill: int


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, tiny_state_dir: Path) -> Any:
    root = tmp_path_factory.mktemp("pooling-daemon")
    engine = {"backend": "vllm", "state_dir": str(tiny_state_dir), "window": 64, "default_model": "tiny-embed"}
    with SpooldProcess(root, engine=engine, watch={"settle_seconds": 0.3, "poll_interval": 0.3}) as d:
        lines = [
            {"custom_id": f"doc{i}", "url": "/v1/embeddings", "body": {"input": f"document number {i} about spools"}} for i in range(CORPUS)
        ]
        drop_job(d.inbox, "corpus", lines, {"model": "tiny-embed", "chunk_size": 50, "priority": 5})
        d.start(VLLM_ENV)
        ckpt = LatestCheckpoint(d.job_dir("processing", "corpus") / ".spoold")
        wait_for(lambda: ckpt.exists() and json.loads(ckpt.read_text())["chunks"] >= 2, 300, what="two checkpoints")
        d.kill()
        done_before = json.loads(ckpt.read_text())["succeeded"]

        drop_job(d.inbox, "mixed", MIXED, {"model": "tiny-embed", "sampling": {"max_tokens": 8}})
        d.start(VLLM_ENV)
        corpus = d.wait_finished("corpus", timeout=600)
        mixed = d.wait_finished("mixed", timeout=300)
        assert d.stop(timeout=120) == 0
        yield Scenario(d, corpus, mixed, done_before)


def records(job: Path, name: str) -> dict[str, dict[str, Any]]:
    path = job / name
    return {r["custom_id"]: r for r in map(json.loads, jsonl_lines(path))} if path.exists() else {}


def test_kill_9_during_an_embeddings_job_is_exactly_once(scenario: Scenario) -> None:
    assert 0 < scenario.done_before_kill < CORPUS
    job = scenario.corpus
    assert job.parent.name == "done"
    assert_exactly_once(job, [f"doc{i}" for i in range(CORPUS)])
    batch = scenario.daemon.batch(job)
    assert batch["request_counts"] == {"total": CORPUS, "completed": CORPUS, "failed": 0}
    assert batch["model"] == "tiny-embed"
    outputs = records(job, "output.jsonl")
    usage = batch["usage"]
    input_tokens = usage.get("input_tokens", usage.get("prompt_tokens"))  # the OpenAI Batch name, or the older one
    assert input_tokens == sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs.values())
    assert "resuming from its checkpoint" in scenario.daemon.log()


def test_embeddings_lines_end_to_end(scenario: Scenario) -> None:
    outputs = records(scenario.corpus, "output.jsonl")
    body = outputs["doc7"]["response"]["body"]
    assert outputs["doc7"]["response"]["status_code"] == 200 and outputs["doc7"]["error"] is None
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert parsed.model == "tiny-embed" and len(parsed.data) == 1 and len(parsed.data[0].embedding) == 128

    mixed = records(scenario.mixed, "output.jsonl")
    two = CreateEmbeddingResponse.model_validate(mixed["emb"]["response"]["body"])
    assert [d.index for d in two.data] == [0, 1] and two.usage.prompt_tokens == two.usage.total_tokens > 0
    assert len(mixed["emb-dim"]["response"]["body"]["data"][0]["embedding"]) == 64
    assert mixed["line-5"]["response"]["body"]["object"] == "list"  # the shorthand {"input": ...} line


def test_base64_lines_round_trip_to_the_float_vectors(scenario: Scenario) -> None:
    mixed = records(scenario.mixed, "output.jsonl")
    floats = [d["embedding"] for d in mixed["emb"]["response"]["body"]["data"]]
    encoded = [d["embedding"] for d in mixed["emb-b64"]["response"]["body"]["data"]]
    decoded = [np.frombuffer(base64.b64decode(e), dtype="<f4") for e in encoded]
    for got, want in zip(decoded, floats, strict=True):
        assert got.tolist() == np.asarray(want, dtype=np.float32).tolist()


def test_score_and_rerank_lines_end_to_end(scenario: Scenario) -> None:
    mixed = records(scenario.mixed, "output.jsonl")
    score = mixed["score"]["response"]["body"]
    assert score["object"] == "list" and score["model"] == "tiny-embed" and [d["object"] for d in score["data"]] == ["score"] * 2
    rerank = mixed["rerank"]["response"]["body"]
    assert rerank["model"] == "tiny-embed" and len(rerank["results"]) == 2 and rerank["usage"]["prompt_tokens"] > 0
    relevance = [r["relevance_score"] for r in rerank["results"]]
    assert relevance == sorted(relevance, reverse=True)
    by_doc = {r["document"]["text"]: r["relevance_score"] for r in rerank["results"]}
    scores = {doc: d["score"] for doc, d in zip(["alpha beta", "gamma"], score["data"], strict=True)}
    for doc in set(by_doc) & set(scores):  # the same query and document: the same similarity both ways
        assert abs(by_doc[doc] - scores[doc]) < 1e-4


def test_a_mixed_file_makes_the_wrong_kind_a_per_line_error(scenario: Scenario) -> None:
    job = scenario.mixed
    assert job.parent.name == "done"
    ids = ["emb", "emb-b64", "emb-dim", "emb-baddim", "line-5", "score", "rerank", "chat", "line-9", "bad-format"]
    assert_exactly_once(job, ids)
    errors = {cid: r["error"] for cid, r in records(job, "errors.jsonl").items()}
    assert set(errors) == {"emb-baddim", "chat", "line-9", "bad-format"}
    assert errors["chat"] == {"code": "unsupported_kind", "message": "model tiny-embed cannot serve /v1/chat/completions lines", "line": 8}
    assert errors["line-9"]["code"] == "unsupported_kind" and "/v1/completions" in errors["line-9"]["message"]
    assert errors["bad-format"]["code"] == "invalid_request" and "encoding_format" in errors["bad-format"]["message"]
    assert errors["emb-baddim"]["line"] == 4 and "dimensions" in errors["emb-baddim"]["message"]
    assert scenario.daemon.batch(job)["request_counts"] == {"total": 10, "completed": 6, "failed": 4}
