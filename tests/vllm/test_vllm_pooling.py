"""Embeddings, score and rerank on the real vLLM engine (CPU build), with the built-in tiny-embed model.

One pooling engine per test session (`embed_engine` in conftest.py).
"""

from __future__ import annotations

import base64
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse

from spoold.engine.base import EngineRequest, EngineResult

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def run(engine: Any, *requests: EngineRequest) -> dict[int, EngineResult]:
    """Add every request with its line as its engine key (as the engine loop gives unique keys); results by line."""
    results: dict[int, EngineResult] = {}
    for request in requests:
        rejected = engine.add(replace(request, key=request.line))
        if rejected is not None:
            results[rejected.key] = rejected
    while engine.in_flight():
        for result in engine.step():
            results[result.key] = result
    assert sorted(results) == sorted(r.line for r in requests)
    return results


def embed(line: int, body: dict[str, Any]) -> EngineRequest:
    return EngineRequest(line=line, custom_id=f"e{line}", kind="embeddings", body=body)


def vectors(result: EngineResult) -> list[list[float]]:
    assert result.error is None, result.error
    parsed = CreateEmbeddingResponse.model_validate(result.body)
    assert [d.index for d in parsed.data] == list(range(len(parsed.data)))
    return [d.embedding for d in parsed.data]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_for_every_input_shape_parse_as_openai_objects(tiny_embed_engine: Any) -> None:
    tokens = [5, 17, 99, 300]
    results = run(
        tiny_embed_engine,
        embed(1, {"input": "The quick brown fox", "user": "someone", "max_tokens": 16}),
        embed(2, {"input": ["The quick brown fox", "jumps over the lazy dog"]}),
        embed(3, {"input": tokens}),
        embed(4, {"input": [tokens, [7, 8]]}),
    )
    one = vectors(results[1])
    assert len(one) == 1 and len(one[0]) == 128
    assert math.isclose(float(np.linalg.norm(one[0])), 1.0, rel_tol=1e-4)  # normalized, like vLLM's embed pooler
    two = vectors(results[2])
    assert len(two) == 2 and np.allclose(two[0], one[0], atol=1e-5)  # same text, same vector, in input order
    assert not np.allclose(two[0], two[1])
    assert np.allclose(vectors(results[3])[0], vectors(results[4])[0], atol=1e-5)
    body = results[2].body
    assert body["object"] == "list" and body["model"] == "tiny-embed"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == results[2].prompt_tokens > 0
    assert results[4].body["usage"]["prompt_tokens"] == len(tokens) + 2


def test_chat_style_embeddings_use_the_chat_template(tiny_embed_engine: Any) -> None:
    conversation = [{"role": "user", "content": "The quick brown fox"}]
    results = run(
        tiny_embed_engine,
        embed(1, {"messages": conversation}),
        embed(2, {"input": conversation}),
        embed(3, {"input": "The quick brown fox"}),
    )
    chat, as_input, plain = vectors(results[1])[0], vectors(results[2])[0], vectors(results[3])[0]
    assert np.allclose(chat, as_input, atol=1e-5)  # the same conversation either way
    assert not np.allclose(chat, plain)  # rendered through the template, not as plain text
    assert results[1].prompt_tokens > results[3].prompt_tokens


def test_base64_round_trip_equals_the_float_vector(tiny_embed_engine: Any) -> None:
    texts = ["Customers wrote that the product was good", "Sphinx of black quartz"]
    results = run(
        tiny_embed_engine,
        embed(1, {"input": texts}),
        embed(2, {"input": texts, "encoding_format": "base64"}),
    )
    floats = vectors(results[1])
    encoded = [d["embedding"] for d in results[2].body["data"]]
    assert all(isinstance(e, str) for e in encoded)
    decoded = [np.frombuffer(base64.b64decode(e), dtype="<f4").tolist() for e in encoded]
    assert decoded == [np.asarray(f, dtype=np.float32).tolist() for f in floats]


def test_dimensions_where_the_model_supports_them_and_a_line_error_otherwise(tiny_embed_engine: Any) -> None:
    results = run(
        tiny_embed_engine,
        embed(1, {"input": "x y z", "dimensions": 32}),
        embed(2, {"input": "x y z", "dimensions": 100}),
        embed(3, {"input": "word " * 2000}),
        embed(4, {"input": "x", "encoding_format": "bytes"}),
    )
    assert len(vectors(results[1])[0]) == 32
    assert results[2].error is not None and "dimensions" in results[2].error.message and "100" in results[2].error.message
    assert results[3].error is not None and "512" in results[3].error.message
    assert results[4].error is not None and "encoding_format" in results[4].error.message


def test_score_and_rerank_are_the_cosine_of_the_embeddings(tiny_embed_engine: Any) -> None:
    query, docs = "what is a spool", ["a queue of files", "the lazy dog", "a spool directory is a queue"]
    results = run(
        tiny_embed_engine,
        embed(1, {"input": [query, *docs]}),
        EngineRequest(2, "s", "score", {"queries": query, "documents": docs}),
        EngineRequest(3, "r", "rerank", {"query": query, "documents": docs, "top_n": 2}),
        EngineRequest(4, "t", "score", {"text_1": ["a", "b"], "text_2": ["c", "d"]}),
        EngineRequest(5, "bad", "score", {"queries": ["a", "b"], "documents": ["c", "d", "e"]}),
    )
    q, *d = vectors(results[1])
    expected = [cosine(q, v) for v in d]
    score = results[2].body
    assert score["object"] == "list" and score["model"] == "tiny-embed"
    assert [x["index"] for x in score["data"]] == [0, 1, 2] and all(x["object"] == "score" for x in score["data"])
    assert np.allclose([x["score"] for x in score["data"]], expected, atol=1e-4)
    assert score["usage"]["prompt_tokens"] > 0

    rerank = results[3].body
    best = sorted(range(3), key=lambda i: expected[i], reverse=True)[:2]
    assert [r["index"] for r in rerank["results"]] == best
    assert [r["document"]["text"] for r in rerank["results"]] == [docs[i] for i in best]
    assert np.allclose([r["relevance_score"] for r in rerank["results"]], [expected[i] for i in best], atol=1e-4)
    assert rerank["usage"]["total_tokens"] == rerank["usage"]["prompt_tokens"] > 0
    assert len(results[4].body["data"]) == 2
    assert results[5].error is not None and "1:N" in results[5].error.message


def test_a_generating_line_on_an_embedding_model_is_that_lines_error(tiny_embed_engine: Any) -> None:
    chat = EngineRequest(1, "c", "chat", {"messages": [{"role": "user", "content": "hi"}]})
    results = run(tiny_embed_engine, chat, embed(2, {"input": "still fine"}))
    assert results[1].error is not None and results[1].error.code == "unsupported_kind"
    assert "tiny-embed" in results[1].error.message and "/v1/chat/completions" in results[1].error.message
    assert results[2].error is None


def test_abort_all_empties_the_engine(tiny_embed_engine: Any) -> None:
    for i in range(1, 6):
        assert tiny_embed_engine.add(embed(i, {"input": ["a b c", "d e f"]})) is None
    assert tiny_embed_engine.in_flight() == 5
    tiny_embed_engine.abort_all()
    assert tiny_embed_engine.in_flight() == 0 and tiny_embed_engine.step() == []
    assert vectors(run(tiny_embed_engine, embed(9, {"input": "after"}))[9])


def test_a_line_vllm_refuses_at_submission_is_its_error_and_its_other_inputs_are_dropped(tiny_embed_engine: Any, monkeypatch: Any) -> None:
    real = tiny_embed_engine._llm.add_request
    handed: list[str] = []

    def add_request(request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        handed.append(request_id)
        if len(handed) == 2:  # the second input of line 1
            raise ValueError("refused by vLLM")
        return real(request_id, prompt, params, *args, **kwargs)

    monkeypatch.setattr(tiny_embed_engine._llm, "add_request", add_request)
    results = run(tiny_embed_engine, embed(1, {"input": ["a b c", "d e f", "g h"]}), embed(2, {"input": "fine"}))
    assert results[1].error is not None and results[1].error.message == "refused by vLLM"
    assert len(handed) == 3  # line 1's third input was never handed over; line 2's was
    assert results[2].error is None and vectors(results[2])
    assert tiny_embed_engine.in_flight() == 0 and not tiny_embed_engine._llm.has_unfinished_requests()
