"""/v1/score and /v1/rerank on a cross-encoder (the built-in tiny-rerank) with the real vLLM engine.

One engine load for this module: the path the shipped reranker profiles
(bge-reranker-v2-m3, ms-marco-minilm-l6-v2) take, on a model built here.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from spoold.engine.base import EngineRequest

from test_vllm_pooling import run

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def rerank_engine(tiny_state_dir: Path) -> Any:
    from spoold.config import Config
    from spoold.engine.profiles import load_profiles
    from spoold.engine.vllm.backend import VllmEngine

    config = Config.model_validate({"engine": {"state_dir": str(tiny_state_dir)}})
    engine = VllmEngine.load(config, load_profiles()["tiny-rerank"])
    frozen = gc.get_freeze_count() > 0
    yield engine
    engine.close()  # unfreezes the whole process (a daemon holds one engine at a time)
    if frozen:  # give the session's other engines (loaded before this one) their frozen startup heap back
        gc.freeze()


def test_a_cross_encoder_scores_and_reranks_pairs(rerank_engine: Any) -> None:
    assert rerank_engine.kinds == {"score", "rerank"}
    docs = ["a queue of files", "the lazy dog", "a spool directory"]
    results = run(
        rerank_engine,
        EngineRequest(1, "s", "score", {"queries": "what is a spool", "documents": docs}),
        EngineRequest(2, "r", "rerank", {"query": "what is a spool", "documents": docs, "top_n": 2}),
        EngineRequest(3, "e", "embeddings", {"input": "not for a cross-encoder"}),
        EngineRequest(4, "p", "score", {"text_1": ["a", "b"], "text_2": ["c", "d"]}),
    )
    score = results[1].body
    assert score["object"] == "list" and score["model"] == "tiny-rerank"
    scores = [d["score"] for d in score["data"]]
    assert [d["index"] for d in score["data"]] == [0, 1, 2] and all(0.0 < s < 1.0 for s in scores)  # sigmoid of one logit
    rerank = results[2].body
    best = sorted(range(3), key=lambda i: scores[i], reverse=True)[:2]
    assert [r["index"] for r in rerank["results"]] == best
    assert [r["relevance_score"] for r in rerank["results"]] == pytest.approx([scores[i] for i in best], abs=1e-5)
    assert rerank["usage"]["prompt_tokens"] == results[2].prompt_tokens > 0
    assert results[3].error is not None and results[3].error.code == "unsupported_kind"
    assert results[3].error.message == "model tiny-rerank cannot serve /v1/embeddings lines"
    assert len(results[4].body["data"]) == 2
