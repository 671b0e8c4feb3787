"""The vLLM backend: a rolling window over vLLM's LLMEngine (add_request / step).

Importing this module needs vllm only inside `VllmEngine.load`, so a machine
without the extra gets a clean ModelLoadError from `load_engine`, not an
ImportError at start-up.

Requests are rendered here (chat template -> token ids) rather than inside
vLLM, so the prompt length is known before a request enters the engine and an
over-long prompt becomes that line's error instead of an engine exception.

`add` renders a request and queues it; `step` hands everything queued to vLLM
in one burst before it steps (outbox.py).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from spoold import tinymodel
from spoold.config import Config
from spoold.engine import chat, responses, sampling
from spoold.engine.base import KIND_URLS, Engine, EngineError, EngineRequest, EngineResult, ModelLoadError
from spoold.engine.profiles import ModelProfile
from spoold.engine.tools import ChatPlan, ChatTooling, ForcedCallFailed, ToolsRejected, parser_class
from spoold.engine.vllm.liveness import CoreWatch, request_errors
from spoold.engine.vllm.load import (
    CPU_DEFAULTS,
    check_engine_arg_names,
    freeze_heap,
    hub_offline,
    load_reason,
    merged_engine_args,
    one_line,
    resolve_model_path,
)
from spoold.engine.vllm.lora import AdapterRejected, LoraBook
from spoold.engine.vllm.outbox import Outbox
from spoold.engine.vllm.pooling import POOLING_KINDS, PoolingFrontend, PoolingRejected

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 30.0
"""How long the engine's processes get to exit after SIGTERM before vLLM kills them (its default, 5 s,
is often too short for a clean exit, and vLLM then logs the kill as a warning)."""


class RequestRejected(ValueError):
    """One request cannot run (bad prompt or parameters): becomes that line's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Pending:
    request: EngineRequest
    prompt_tokens: int
    logprobs: int | None
    created: int
    prompt_ids: list[int]
    plan: ChatPlan | None = None


class VllmEngine(Engine):
    """One loaded model. Not thread-safe: the engine loop drives it from the main thread."""

    def __init__(
        self,
        name: str,
        llm: Any,
        sampling_defaults: dict[str, Any],
        load_seconds: float = 0.0,
        *,
        tool_call_parser: str | None = None,
        reasoning_parser: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.model = name
        self.load_seconds = load_seconds
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self._tooling = ChatTooling(name, self._tokenizer, tool_call_parser, reasoning_parser)
        """tools, tool_choice and reasoning through vLLM's parsers (engine/tools.py)."""
        self._chat_template = chat_template
        self._max_model_len = int(llm.model_config.max_model_len)
        self._defaults = sampling_defaults
        self._pending: dict[str, _Pending] = {}
        self._outbox = Outbox()
        """Rendered, not yet handed to vLLM: `step` hands them over all at once."""
        self._ids = itertools.count()
        self._errors = request_errors()
        self._pooling = PoolingFrontend(llm, name)
        """Embeddings, score and rerank lines (see pooling.py); `kinds` is what this model serves."""
        self.kinds = self._pooling.kinds
        self.watch = CoreWatch(getattr(llm, "engine_core", None), 30.0)  # a dead or hung core: EngineFailure in seconds
        self.loras = LoraBook(name, {})  # each adapter's LoRARequest (`load` sets it from the engine arguments)

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, config: Config, profile: ModelProfile) -> VllmEngine:
        """Build the engine for `profile`; any failure becomes one readable ModelLoadError."""
        model_path = resolve_model_path(profile, config.engine.state_dir)
        engine_args = merged_engine_args(profile, dict(config.engine.engine_args), config.engine.state_dir)
        local = Path(model_path).is_dir()
        started = time.monotonic()
        try:
            from vllm import EngineArgs
            from vllm.platforms import current_platform
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.llm_engine import LLMEngine

            check_engine_arg_names(engine_args, EngineArgs)
            parser_class(profile.tool_call_parser, profile.reasoning_parser, None, profile.name)  # names, before the load
            if current_platform.is_cpu():
                engine_args = {**CPU_DEFAULTS, **engine_args}
            if profile.reasoning_parser:  # structured outputs then start after the thinking (`--reasoning-parser`)
                engine_args.setdefault("reasoning_parser", profile.reasoning_parser)
            args = EngineArgs(model=model_path, served_model_name=[profile.name], **engine_args)
            with hub_offline(local):
                # An offline batch engine, like vLLM's LLM class: its scheduler defaults (max_num_seqs,
                # max_num_batched_tokens) are the offline ones, twice the bare engine's on CPU.
                llm = LLMEngine.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
            try:
                engine = cls(
                    profile.name,
                    llm,
                    dict(profile.sampling),
                    tool_call_parser=profile.tool_call_parser,
                    reasoning_parser=profile.reasoning_parser,
                    chat_template=tinymodel.CHAT_TEMPLATE if tinymodel.is_builtin(profile.model) else None,
                )
            except ValueError as exc:  # a parser vLLM does not know, or one this tokenizer cannot serve
                with contextlib.suppress(Exception):
                    llm.engine_core.shutdown(timeout=SHUTDOWN_SECONDS)
                raise ModelLoadError(str(exc)) from exc
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any vLLM start-up failure is a model-load failure
            log.error("loading model %s (%s) failed", profile.name, model_path, exc_info=True)
            raise ModelLoadError(load_reason(exc)) from exc
        engine.watch.timeout = config.engine.step_timeout_seconds
        engine.load_seconds, engine.loras = time.monotonic() - started, LoraBook(profile.name, engine_args)
        freeze_heap()
        log.debug("model %s loaded from %s in %.1fs", profile.name, model_path, engine.load_seconds)
        return engine

    # ---- the Engine interface --------------------------------------------------------------

    def auto_window(self) -> int:
        """Twice vLLM's batch (max_num_seqs): requests that finish are replaced from its own queue at
        once, as under `LLM.chat` over a whole list, not after the loop's next add."""
        scheduler = getattr(getattr(self._llm, "vllm_config", None), "scheduler_config", None)
        seqs = getattr(scheduler, "max_num_seqs", None)
        return 2 * int(seqs) if seqs else super().auto_window()

    def add(self, request: EngineRequest) -> EngineResult | None:
        if request.kind not in self.kinds:
            return _error(request, "unsupported_kind", f"model {self.model} cannot serve {KIND_URLS[request.kind]} lines")
        if request.kind in POOLING_KINDS:
            return self._add_pooling(request)
        try:
            lora = self.loras.request_for(request.adapter)
            plan = self._tooling.plan(request.body, self._defaults) if request.kind == "chat" else None
            prompt_ids = self._prompt_ids(request, plan)
            if len(prompt_ids) >= self._max_model_len:
                raise RequestRejected(
                    "context_length_exceeded",
                    f"prompt is {len(prompt_ids)} tokens; model {self.model} allows at most "
                    f"{self._max_model_len} tokens in total (prompt plus at least one generated token)",
                )
            kwargs = sampling.sampling_kwargs(
                request.body, cast(sampling.Kind, request.kind), len(prompt_ids), self._max_model_len, self._defaults
            )
            if plan is not None:
                plan.apply(kwargs)
            request_id = f"{next(self._ids)}-{request.key}"
            self._queue(request_id, prompt_ids, kwargs, request.key, lora)
        except RequestRejected as exc:
            return _error(request, exc.code, str(exc))
        except (sampling.SamplingError, chat.ChatRejected, ToolsRejected, AdapterRejected) as exc:
            return _error(request, "invalid_request", str(exc))
        except self._errors as exc:
            return _error(request, "invalid_request", one_line(exc))
        except Exception as exc:  # noqa: BLE001 - anything else means the engine itself is gone
            raise self.watch.failure(exc, "rejected a request unexpectedly") from exc
        self._pending[request_id] = _Pending(request, len(prompt_ids), kwargs["logprobs"], int(time.time()), prompt_ids, plan)
        return None

    def _add_pooling(self, request: EngineRequest) -> EngineResult | None:
        try:
            for sub_id, prompt, params in self._pooling.add(request):
                self._outbox.put(sub_id, prompt, params, request.key)
        except PoolingRejected as exc:
            return _error(request, "invalid_request", str(exc))
        except self._errors as exc:
            return _error(request, "invalid_request", one_line(exc))
        except Exception as exc:  # noqa: BLE001 - anything else means the engine itself is gone
            raise self.watch.failure(exc, "rejected a pooling request unexpectedly") from exc
        return None

    def step(self) -> list[EngineResult]:
        if not self._pending and not len(self._pooling):
            return []  # an empty multiprocess engine would block in step()
        results = self._flush()
        if not self._pending and not len(self._pooling):
            return results  # vLLM refused all that was queued
        self.watch.await_output()  # a dead or hung core: EngineFailure now, not a step that never returns
        try:
            outputs = self._llm.step()
        except Exception as exc:  # noqa: BLE001 - a dead engine (EngineDeadError, worker crash) fails the attempt
            raise self.watch.failure(exc, "step failed") from exc
        for output in outputs:
            if not output.finished:
                continue
            if self._pooling.owns(output.request_id):
                pooled = self._pooling.take(output)
                if pooled is not None:
                    results.append(pooled)
                continue
            pending = self._pending.pop(output.request_id, None)
            if pending is not None:
                results.append(self._result(pending, output))
        return results

    def in_flight(self) -> int:
        return len(self._pending) + len(self._pooling)

    def abort(self, keys: list[int]) -> None:
        drop = set(keys)
        self._outbox.drop(drop)
        self._pooling.abort(drop)
        ids = [rid for rid, p in self._pending.items() if p.request.key in drop]
        if ids:
            self._llm.abort_request(ids)
            for rid in ids:
                del self._pending[rid]

    def abort_all(self) -> None:
        self._outbox.clear()
        if self._pending:
            self._llm.abort_request(list(self._pending))
            self._pending.clear()
        self._pooling.abort_all()

    def close(self) -> None:
        """Stop the engine processes and drop every reference so memory (and GPU memory) is freed."""
        gc.unfreeze()  # what load froze can be collected again
        llm, self._llm = self._llm, None
        self._pending.clear()
        self._outbox.clear()
        self._pooling.close()
        if llm is None:
            return
        with contextlib.suppress(Exception):  # best effort: the engine may already be dead
            llm.engine_core.shutdown(timeout=SHUTDOWN_SECONDS)
        del llm
        self._tokenizer = None
        gc.collect()
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()

    # ---- helpers ---------------------------------------------------------------------------

    def _prompt_ids(self, request: EngineRequest, plan: ChatPlan | None) -> list[int]:
        if request.kind == "chat":
            assert plan is not None
            return chat.render(
                self._tokenizer,
                request.body,
                tools=plan.tools,
                template_kwargs=plan.template_kwargs,
                chat_template=self._chat_template,
            )
        prompt = request.body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            return list(self._tokenizer.encode(prompt))
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = len(self._tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise RequestRejected("invalid_request", f"prompt token ids must be in [0, {vocab})")
            return list(prompt)
        raise RequestRejected("invalid_request", "prompt must be a non-empty string or list of token ids (one prompt per line)")

    def _queue(self, request_id: str, prompt_ids: list[int], kwargs: dict[str, Any], key: int, lora: Any = None) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = kwargs.pop("structured_outputs")  # a plain dict (sampling.py, tools.py) or None
        params = SamplingParams(
            **kwargs,
            structured_outputs=StructuredOutputsParams(**structured) if structured else None,
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, all n choices together
            skip_clone=True,  # built for this request alone: no deep copy in add_request (as vLLM's server does)
        )
        self._outbox.put(request_id, self._engine_input(prompt_ids), params, key, lora)

    def _flush(self) -> list[EngineResult]:
        """Hand every queued request to vLLM; one it refuses is that line's error (returned)."""
        try:
            refused = self._outbox.flush(self._llm.add_request, self._errors)
        except Exception as exc:  # noqa: BLE001 - anything else means the engine itself is gone
            raise self.watch.failure(exc, "rejected a request unexpectedly") from exc
        return [self._refuse(request_id, one_line(exc)) for request_id, exc in refused]

    def _refuse(self, request_id: str, message: str) -> EngineResult:
        if self._pooling.owns(request_id):
            return self._pooling.refuse(request_id, message)
        pending = self._pending.pop(request_id)
        return _error(pending.request, "invalid_request", message)

    def _engine_input(self, prompt_ids: list[int]) -> Any:
        """vLLM 0.32 wants prompts pre-rendered by its renderer; older versions take the plain dict."""
        prompt = {"prompt_token_ids": prompt_ids}
        renderer = getattr(self._llm, "renderer", None)
        if renderer is None or not hasattr(renderer, "render_cmpl"):
            return prompt
        return renderer.render_cmpl([prompt])[0]

    def _result(self, pending: _Pending, output: Any) -> EngineResult:
        request = pending.request
        completions = sorted(output.outputs, key=lambda c: c.index)
        failed = [str(c.finish_reason) for c in completions if str(c.finish_reason) in ("error", "abort")]
        if failed or not completions:
            reason = failed[0] if failed else "no output"
            return _error(request, "engine_error", f"vLLM ended this request without a result ({reason})")
        choices = []
        reasoning_tokens = 0
        for c in completions:
            choice: dict[str, Any] = {
                "text": c.text,
                "finish_reason": str(c.finish_reason or "stop"),
                "stop_reason": c.stop_reason,
            }
            if request.kind == "chat":
                try:
                    choice["message"], choice["finish_reason"], thought = self._tooling.answer(
                        pending.plan, c.text, c.token_ids, choice["finish_reason"], pending.prompt_ids
                    )
                except ForcedCallFailed as exc:  # a forced call is a call or this line's error (tools.py)
                    return _error(request, exc.code, str(exc))
                reasoning_tokens += thought
            if pending.logprobs is not None:
                tokens = _token_logprobs(c, pending.logprobs)
                render = responses.chat_logprobs if request.kind == "chat" else responses.completion_logprobs
                choice["logprobs"] = render(tokens)
            choices.append(choice)
        prompt_tokens = len(output.prompt_token_ids or []) or pending.prompt_tokens
        completion_tokens = sum(len(c.token_ids) for c in completions)
        shape = responses.chat_completion if request.kind == "chat" else responses.text_completion
        body = shape(
            request.adapter[0] if request.adapter else self.model, choices, prompt_tokens, completion_tokens, created=pending.created
        )
        if request.kind == "chat" and self._tooling.reasoning_parser:  # as vLLM's server reports them
            body["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return EngineResult(
            key=request.key,
            custom_id=request.custom_id,
            body=body,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


# ---- module helpers ----------------------------------------------------------------------------


def _token_logprobs(completion: Any, top: int) -> list[responses.TokenLogprob]:
    """vLLM's per-position {token_id: Logprob} maps -> neutral TokenLogprob entries."""
    entries = []
    for token_id, position in zip(completion.token_ids, completion.logprobs or [], strict=False):
        sampled = position.get(token_id)
        ranked = sorted(position.values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)
        alternatives = [(lp.decoded_token or "", lp.logprob) for lp in ranked if lp.rank is not None and lp.rank <= top]
        entries.append(
            responses.TokenLogprob(
                token=(sampled.decoded_token or "") if sampled else "",
                logprob=sampled.logprob if sampled else float("-inf"),
                top=alternatives[:top],
            )
        )
    return entries


def _error(request: EngineRequest, code: str, message: str) -> EngineResult:
    return EngineResult(key=request.key, custom_id=request.custom_id, error=EngineError(code, message))
