"""Embeddings, scores and reranking on vLLM: one line -> several engine requests -> one body.

This is vLLM's own OpenAI server path for `/v1/embeddings`, `/v1/score` and
`/v1/rerank` (entrypoints/pooling), driven synchronously over the same
LLMEngine the generating path uses: the body is validated with vLLM's request
classes (as `run_batch` does), vLLM's IO processor for the model's pooling
task renders it into engine inputs (a list input, or each query and document,
is one engine request) and, once all are finished, post-processes them (cosine
similarity for an embedding model, the classifier score for a cross-encoder),
and the response is built with vLLM's response classes.

vllm is imported only when a pooling model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from spoold.engine.base import KIND_URLS, EngineError, EngineRequest, EngineResult, RequestKind
from spoold.engine.responses import new_id

POOLING_KINDS: frozenset[RequestKind] = frozenset({"embeddings", "score", "rerank"})


class PoolingRejected(ValueError):
    """One pooling line cannot run (bad body, unsupported option): that line's error."""


@dataclass
class PoolingJob:
    """One line's requests inside the engine, and what is needed to answer it."""

    request: EngineRequest
    ctx: Any
    """vLLM's PoolingServeContext for this line."""
    processor: Any
    sub_ids: list[str]
    outputs: dict[int, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.outputs) == len(self.sub_ids)


def served_kinds(supported_tasks: tuple[str, ...], model_config: Any) -> frozenset[RequestKind]:
    """What a loaded vLLM model answers, from vLLM's own rules (pure but for vLLM's helpers)."""
    from vllm.entrypoints.pooling.utils import enable_scoring_api

    kinds: set[RequestKind] = set()
    if "generate" in supported_tasks:
        kinds |= {"chat", "completion"}
    pooling_task = model_config.get_pooling_task(supported_tasks)
    if pooling_task == "embed":
        kinds.add("embeddings")
    if enable_scoring_api(cast(Any, supported_tasks), model_config):
        kinds |= {"score", "rerank"}
    return frozenset(kinds)


class PoolingFrontend:
    """Turns pooling lines into engine inputs and finished outputs into response bodies."""

    def __init__(self, llm: Any, model_name: str) -> None:
        from vllm.entrypoints.pooling.factories import init_pooling_io_processors
        from vllm.renderers.chat_utils import ChatTemplateConfig

        self._llm = llm
        self._model_name = model_name
        self._model_config = llm.vllm_config.model_config
        supported = tuple(llm.get_supported_tasks())
        self.kinds = served_kinds(supported, self._model_config)
        self._pooling_task = self._model_config.get_pooling_task(supported)
        self._processors: dict[str, Any] = {}
        if self.kinds & POOLING_KINDS:
            self._processors = init_pooling_io_processors(
                supported_tasks=supported,
                vllm_config=llm.vllm_config,
                renderer=llm.renderer,
                chat_template_config=ChatTemplateConfig(),
            )
        self._adapters: dict[str, Any] = {}
        self._jobs: dict[str, PoolingJob] = {}
        self._sub: dict[str, tuple[str, int]] = {}
        """engine request id -> (the line's key, index of its input)"""

    def __len__(self) -> int:
        """Lines in the engine (each may be several engine requests)."""
        return len(self._jobs)

    def add(self, request: EngineRequest) -> list[tuple[str, Any, Any]]:
        """Take one line: its engine requests (id, prompt, params) for the caller to hand to vLLM.

        PoolingRejected or vLLM's ValueError: that line's error, and nothing is taken."""
        ctx, processor, inputs = self.prepare(request)
        key = ctx.request_id
        sub_ids = [f"{key}#{i}" for i in range(len(inputs))]
        self._jobs[key] = PoolingJob(request, ctx, processor, sub_ids)
        for i, sub_id in enumerate(sub_ids):
            self._sub[sub_id] = (key, i)
        return [(sub_id, e["prompts"], e["params"]) for sub_id, e in zip(sub_ids, inputs, strict=True)]

    def refuse(self, request_id: str, message: str) -> EngineResult:
        """vLLM refused one of a line's requests: the line is dropped (its others aborted); its error."""
        key, _ = self._sub[request_id]
        job = self._jobs[key]
        self._drop(key)
        return _error(job.request, "invalid_request", message)

    def owns(self, request_id: str) -> bool:
        return request_id in self._sub

    def take(self, output: Any) -> EngineResult | None:
        """Record one finished engine output; the line's result once all its inputs are done."""
        key, index = self._sub.pop(output.request_id)
        job = self._jobs.get(key)
        if job is None:
            return None
        error = getattr(output, "error", None)
        if error is not None:
            self._drop(key)
            return _error(job.request, "engine_error", f"vLLM ended this request with an error: {getattr(error, 'message', error)}")
        job.outputs[index] = output
        if not job.complete:
            return None
        del self._jobs[key]
        try:
            body, tokens = self.body(job)
        except (ValueError, TypeError) as exc:
            return _error(job.request, "invalid_request", _one_line(exc))
        return EngineResult(key=job.request.key, custom_id=job.request.custom_id, body=body, prompt_tokens=tokens)

    def abort(self, keys: set[int]) -> None:
        """Drop the lines of these engine-loop keys (one job cancelled or lost)."""
        for key in [k for k, job in self._jobs.items() if job.request.key in keys]:
            self._drop(key)

    def abort_all(self) -> None:
        if self._sub:
            self._llm.abort_request(list(self._sub))
        self._sub.clear()
        self._jobs.clear()

    def close(self) -> None:
        """Drop every reference to the engine (so its memory can be freed)."""
        self._sub.clear()
        self._jobs.clear()
        self._processors.clear()
        self._llm = None

    def _drop(self, key: str) -> None:
        job = self._jobs.pop(key)
        rest = [s for s in job.sub_ids if s in self._sub]
        for sub_id in rest:
            del self._sub[sub_id]
        if rest:
            self._llm.abort_request(rest)

    def prepare(self, request: EngineRequest) -> tuple[Any, Any, list[Any]]:
        """Validate and render one line: (context, processor, engine inputs); raises PoolingRejected."""
        from vllm.entrypoints.pooling.typing import PoolingServeContext

        vllm_request = self._parse(request)
        processor = self._processor(request.kind)
        pooling_params = processor.create_pooling_params(vllm_request)
        ctx = PoolingServeContext(
            request=vllm_request,
            model_name=self._model_name,
            request_id=new_id("embd" if request.kind == "embeddings" else "score"),
            pooling_params=pooling_params,
            lora_request=None,
            priorities=0,
            prompt_extras={k: v for k in ("cache_salt", "chat_template_kwargs") if (v := getattr(vllm_request, k, None)) is not None},
        )
        truncate = getattr(vllm_request, "truncate_prompt_tokens", None)
        if truncate is not None and truncate > self._model_config.max_model_len:
            raise PoolingRejected("truncate_prompt_tokens is greater than the model's max_model_len")
        requests = processor.get_request_factory_online(ctx)
        if not requests:
            raise PoolingRejected("the request has no input")
        ctx.engine_inputs = [processor.render(r) for r in requests]
        if request.kind == "embeddings" and hasattr(processor, "maybe_pre_process_chunked"):
            processor.maybe_pre_process_chunked(ctx)
        pooling_params.verify(self._model_config)
        for engine_input in ctx.engine_inputs:
            engine_input["params"].verify(self._model_config)
        return ctx, processor, list(ctx.engine_inputs)

    def body(self, job: PoolingJob) -> tuple[dict[str, Any], int]:
        """The response body for a finished line, and its prompt token count."""
        ctx = job.ctx
        ctx.final_res_batch = [job.outputs[i] for i in range(len(job.sub_ids))]
        job.processor.post_process_online(ctx)
        if job.request.kind == "embeddings":
            return self._embeddings_body(ctx)
        return self._scoring_body(ctx)

    # ---- helpers ---------------------------------------------------------------------------

    def _processor(self, kind: RequestKind) -> Any:
        from vllm.tasks import SCORE_TYPE_MAP

        name = "embed" if kind == "embeddings" else SCORE_TYPE_MAP.get(self._pooling_task)
        processor = self._processors.get(name) if name else None
        if processor is None:
            raise PoolingRejected(f"model {self._model_name} cannot serve {KIND_URLS[kind]}")
        return processor

    def _parse(self, request: EngineRequest) -> Any:
        from pydantic import TypeAdapter, ValidationError
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
        from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, ScoreRequest

        body = {k: v for k, v in request.body.items() if k in _ACCEPTED[request.kind]}
        if request.kind == "embeddings" and body.get("encoding_format") in ("bytes", "bytes_only"):
            raise PoolingRejected("encoding_format must be float or base64 (a batch result line is JSON)")
        adapter = self._adapters.get(request.kind)
        if adapter is None:  # building one costs milliseconds: once per kind, not per line
            shape: Any = {"embeddings": EmbeddingRequest, "score": ScoreRequest, "rerank": RerankRequest}[request.kind]
            adapter = self._adapters[request.kind] = TypeAdapter(shape)
        try:
            return adapter.validate_python(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("Embedding", "Score", "Rerank")))
            raise PoolingRejected(f"{where}: {first['msg']}" if where else str(first["msg"])) from None

    def _embeddings_body(self, ctx: Any) -> tuple[dict[str, Any], int]:
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingResponse, EmbeddingResponseData
        from vllm.entrypoints.pooling.utils import get_pooling_output_encoder, get_pooling_usage

        request = ctx.request
        encode = get_pooling_output_encoder(request.encoding_format, request.embed_dtype, request.endianness)
        usage = get_pooling_usage(ctx.final_res_batch)
        response = EmbeddingResponse(
            id=ctx.request_id,
            created=ctx.created_time,
            model=ctx.model_name,
            data=[EmbeddingResponseData(index=i, embedding=encode(out)) for i, out in enumerate(ctx.final_res_batch)],
            usage=usage,
        )
        body = response.model_dump()
        body["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
        return body, usage.prompt_tokens

    def _scoring_body(self, ctx: Any) -> tuple[dict[str, Any], int]:
        from vllm.entrypoints.pooling.scoring.protocol import (
            RerankDocument,
            RerankRequest,
            RerankResponse,
            RerankResult,
            RerankUsage,
            ScoreResponse,
            ScoreResponseData,
        )
        from vllm.entrypoints.serve.engine.protocol import UsageInfo
        from vllm.outputs import ScoringRequestOutput

        tokens = sum(len(_prompt_token_ids(e["prompts"])) for e in ctx.engine_inputs)
        scores = [ScoringRequestOutput.from_base(out).outputs.score for out in ctx.final_res_batch]
        if not isinstance(ctx.request, RerankRequest):
            response = ScoreResponse(
                id=ctx.request_id,
                created=ctx.created_time,
                model=ctx.model_name,
                data=[ScoreResponseData(index=i, score=s) for i, s in enumerate(scores)],
                usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens),
            )
            body = response.model_dump()
            body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            return body, tokens
        documents = ctx.request.documents if isinstance(ctx.request.documents, list) else [ctx.request.documents]
        results = [
            RerankResult(
                index=i,
                document=RerankDocument(text=d) if isinstance(d, str) else RerankDocument(multi_modal=d.get("content", [])),
                relevance_score=s,
            )
            for i, (d, s) in enumerate(zip(documents, scores, strict=True))
        ]
        results.sort(key=lambda r: r.relevance_score, reverse=True)
        top_n = ctx.request.top_n
        if 0 < top_n < len(results):
            results = results[:top_n]
        rerank = RerankResponse(
            id=ctx.request_id,
            model=ctx.model_name,
            results=results,
            usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return rerank.model_dump(), tokens


def _error(request: EngineRequest, code: str, message: str) -> EngineResult:
    return EngineResult(key=request.key, custom_id=request.custom_id, error=EngineError(code, message))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _prompt_token_ids(prompt: Any) -> list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        for key in ("encoder_prompt", "decoder_prompt"):
            if isinstance(prompt.get(key), dict):
                return _prompt_token_ids(prompt[key])
    return []


_COMMON = {"model", "user", "truncate_prompt_tokens", "truncation_side", "priority", "cache_salt", "use_activation"}
_ACCEPTED: dict[str, set[str]] = {
    "embeddings": _COMMON | {"input", "encoding_format", "dimensions", "embed_dtype", "endianness", "add_special_tokens",
                             "messages", "add_generation_prompt", "continue_final_message", "chat_template_kwargs"},
    "score": _COMMON | {"queries", "documents", "items", "data_1", "data_2", "text_1", "text_2",
                        "max_tokens_per_query", "max_tokens_per_doc", "instruction", "chat_template_kwargs"},
    "rerank": _COMMON | {"query", "documents", "top_n", "max_tokens_per_query", "max_tokens_per_doc",
                         "instruction", "chat_template_kwargs"},
}  # fmt: skip
"""Body keys passed on to vLLM; others (sidecar sampling defaults such as max_tokens) are dropped."""
