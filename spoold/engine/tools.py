"""`tools`, `tool_choice` and reasoning on chat lines, through vLLM's own parsers, as its OpenAI server applies them.

Per model (`ChatTooling`): the profile's `tool_call_parser` and `reasoning_parser`
composed by vLLM's `ParserManager`, as `vllm serve --enable-auto-tool-choice
--tool-call-parser X --reasoning-parser Y --tool-strict-level parameter` does.
Per line (`ChatTooling.plan`): the tools and template kwargs for the chat
template, and the structured-outputs constraint the parser derives for
`tool_choice` (vLLM's `adjust_request`). Per answer (`ChatTooling.answer`):
the generated text split into reasoning, content and tool calls (vLLM's
`Parser.parse`), shaped and given a finish_reason the way vLLM's
`chat_completion_full_generator` does.

The strict level is `parameter` (vLLM's default is `auto`, which pins the call's
shape but leaves its arguments free unless a tool says `strict: true`): in a
batch job a forced call whose arguments do not match the function's schema is a
lost line, so `required`, a named function and any call made under `auto` are
constrained to the function's parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_STRICT_LEVEL = "parameter"
RAW_CHARS = 2000
"""How much of a failed forced call's raw output its error message keeps."""
TEMPLATE_DEFAULT_KEYS = ("chat_template_kwargs", "reasoning_effort", "response_format")
"""Keys of the profile's sampling defaults that matter here (the rest are SamplingParams)."""
_STRUCTURED_FIELDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


class ToolsRejected(ValueError):
    """This line's tools, tool_choice or reasoning settings cannot run on this model: its invalid_request."""


class ForcedCallFailed(ValueError):
    """A line whose tool_choice forces a call (`required` or a named function) got no parseable call:
    that line's error record (its raw text in the message), never a success with the call left in content."""

    code = "tool_call_failed"


@dataclass
class ChatPlan:
    """How one chat line is rendered, constrained and parsed."""

    template_kwargs: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    """The tools as vLLM hands them to the chat template (its ChatCompletionToolsParam dumps)."""
    structured_outputs: dict[str, Any] | None = None
    """Replaces the response_format constraint (tool_choice required / named, auto at strict level)."""
    skip_special_tokens: bool | None = None
    request: Any = None
    """vLLM's ChatCompletionRequest after adjust_request; None: the answer is plain text."""

    def apply(self, kwargs: dict[str, Any]) -> None:
        """Put the plan's constraint into SamplingParams keyword arguments (from engine/sampling.py)."""
        if self.structured_outputs is not None:
            kwargs["structured_outputs"] = self.structured_outputs
        if self.skip_special_tokens is not None:
            kwargs["skip_special_tokens"] = self.skip_special_tokens


class ChatTooling:
    """One loaded model's tool-call and reasoning parsers (either may be None)."""

    def __init__(self, model: str, tokenizer: Any, tool_call_parser: str | None, reasoning_parser: str | None) -> None:
        self.model = model
        self.tool_call_parser = tool_call_parser
        self.reasoning_parser = reasoning_parser
        self._tokenizer = tokenizer
        self._parser_cls = parser_class(tool_call_parser, reasoning_parser, tokenizer, model)

    # ---- before generation -------------------------------------------------------------------

    def plan(self, body: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> ChatPlan:
        """Raises ToolsRejected with one sentence."""
        merged = {k: v for k, v in (defaults or {}).items() if k in TEMPLATE_DEFAULT_KEYS and v is not None}
        merged.update((k, v) for k, v in body.items() if v is not None)
        kwargs = template_kwargs(merged, self.model, reasoning=self.reasoning_parser is not None)
        tools = merged.get("tools")
        choice = merged.get("tool_choice", "auto" if tools else "none")
        if tools and choice != "none" and self.tool_call_parser is None:
            raise ToolsRejected(
                f"model {self.model} has no tool-call parser (tool_call_parser in its profile), so it can only "
                f'take tools with tool_choice "none"'
            )
        if not tools and self.reasoning_parser is None:
            return ChatPlan(template_kwargs=kwargs)
        request = self._request(merged, kwargs)
        plan = ChatPlan(template_kwargs=kwargs, tools=[t.model_dump() for t in request.tools] if request.tools else None)
        if self._parser_cls is None or (self.reasoning_parser is None and choice == "none"):
            return plan
        request = self._parser(request, kwargs).adjust_request(request)
        if request.structured_outputs is not None:
            plan.structured_outputs = {k: v for k in _STRUCTURED_FIELDS if (v := getattr(request.structured_outputs, k, None)) is not None}
        if request.skip_special_tokens is False:
            plan.skip_special_tokens = False
        plan.request = request
        return plan

    def _request(self, merged: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        keys = ("messages", "tools", "tool_choice", "parallel_tool_calls", "response_format", "skip_special_tokens")
        data = {k: merged[k] for k in keys if k in merged}
        data["chat_template_kwargs"] = kwargs
        try:
            return ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error.get("loc", ()))
            message = str(error.get("msg", exc)).removeprefix("Value error, ").splitlines()[0]
            raise ToolsRejected(f"{where}: {message}" if where else message) from None
        except ValueError as exc:
            raise ToolsRejected(str(exc).splitlines()[0]) from None

    def _parser(self, request: Any, kwargs: dict[str, Any]) -> Any:
        assert self._parser_cls is not None
        return self._parser_cls(self._tokenizer, request.tools, model_config=None, chat_template_kwargs=kwargs)

    # ---- after generation --------------------------------------------------------------------

    def answer(
        self, plan: ChatPlan | None, text: str, token_ids: Sequence[int], finish_reason: str, prompt_ids: Sequence[int]
    ) -> tuple[dict[str, Any], str, int]:
        """One choice's `message`, finish_reason and reasoning tokens (vLLM's parser counts them)."""
        if plan is None or plan.request is None:
            return {"role": "assistant", "content": text}, finish_reason, 0
        request = plan.request
        parser = self._parser(request, plan.template_kwargs)  # parsers are stateful: one per choice, as in vLLM
        parser.set_prompt_token_ids(list(prompt_ids))
        reasoning, content, calls = parser.parse(
            text, request, enable_auto_tools=self.tool_call_parser is not None, model_output_token_ids=token_ids
        )
        found = [(c.id, c.name, c.arguments) for c in calls or []]
        kind = tool_choice_kind(request.tool_choice, bool(request.tools))
        check_forced_call(kind, found, text, finish_reason)
        message, finish = shape_answer(
            reasoning if self.reasoning_parser else None,
            content,
            found,
            kind,
            finish_reason,
            with_reasoning=self.reasoning_parser is not None,
        )
        return message, finish, parser.count_reasoning_tokens(list(token_ids))


# ---- pure helpers (unit-tested without vLLM) ---------------------------------------------------


def template_kwargs(merged: Mapping[str, Any], model: str, *, reasoning: bool) -> dict[str, Any]:
    """chat_template_kwargs plus reasoning_effort, mapped as vLLM maps it (`enable_thinking` unless given)."""
    kwargs = dict(merged.get("chat_template_kwargs") or {})
    effort = merged.get("reasoning_effort")
    if effort is not None:
        if not reasoning:
            raise ToolsRejected(f"reasoning_effort: model {model} is not a reasoning model (its profile names no reasoning_parser)")
        kwargs["reasoning_effort"] = effort
        kwargs.setdefault("enable_thinking", effort != "none")
    return kwargs


def tool_choice_kind(tool_choice: Any, has_tools: bool) -> str:
    """ "none" | "auto" | "required" | "named" (a vLLM request's tool_choice, or a body's)."""
    if not has_tools or tool_choice in (None, "none"):
        return "none"
    if isinstance(tool_choice, str):
        return tool_choice
    return "named"


def check_forced_call(choice: str, calls: list[tuple[str | None, str, str]], text: str, finish_reason: str) -> None:
    """`required` / a named function: at least one call, each with JSON-object arguments, or ForcedCallFailed."""
    if choice not in ("required", "named"):
        return
    why = "" if calls else "no tool call could be parsed from the output"
    for _, name, arguments in calls:
        try:
            parsed = json.loads(arguments) if arguments else {}
        except ValueError as exc:
            why = f"the arguments of its call to {name} are not valid JSON ({exc})"
            break
        if not isinstance(parsed, dict):
            why = f"the arguments of its call to {name} are not a JSON object"
            break
    if why:
        cut = "; the output was cut at max_tokens" if finish_reason == "length" else ""
        raw = text if len(text) <= RAW_CHARS else text[:RAW_CHARS] + "..."
        raise ForcedCallFailed(f"tool_choice {choice!r} forces a tool call, but {why}{cut}; the model's raw output: {raw!r}")


def shape_answer(
    reasoning: str | None,
    content: str | None,
    calls: list[tuple[str | None, str, str]],
    choice: str,
    finish_reason: str,
    *,
    with_reasoning: bool,
) -> tuple[dict[str, Any], str]:
    """The message and finish_reason of vLLM's chat_completion_full_generator.

    `calls` are (id or None, name, arguments JSON). finish_reason becomes "tool_calls" when
    `auto` called a tool or `required` stopped normally; a named function keeps "stop", as in
    OpenAI's API. `reasoning_content` (the name OpenAI clients and older vLLM use) and
    `reasoning` (vLLM 0.32's name) carry the same text.
    """
    message: dict[str, Any] = {"role": "assistant"}
    if choice in ("required", "named"):
        message["content"] = content or ""
    else:
        message["content"] = content
        if choice != "auto":
            calls = []
    if with_reasoning:
        message["reasoning_content"] = reasoning
        message["reasoning"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": call_id or _tool_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in calls
        ]
    called = (choice == "auto" and bool(calls)) or (choice == "required" and finish_reason == "stop")
    return message, "tool_calls" if called else finish_reason


def _tool_call_id() -> str:
    import uuid

    return f"chatcmpl-tool-{uuid.uuid4().hex[:16]}"


def parser_class(tool_call_parser: str | None, reasoning_parser: str | None, tokenizer: Any, model: str) -> Any:
    """vLLM's composed Parser class, or None; raises ValueError naming a parser vLLM does not know."""
    if not tool_call_parser and not reasoning_parser:
        return None
    from vllm.parser.parser_manager import ParserManager

    try:
        return ParserManager.get_parser(
            tool_parser_name=tool_call_parser,
            reasoning_parser_name=reasoning_parser,
            enable_auto_tools=tool_call_parser is not None,
            model_name=model,
            tool_strict_level=TOOL_STRICT_LEVEL,
            tokenizer=tokenizer,
        )
    except (TypeError, KeyError, ValueError) as exc:
        known = _known_parsers()
        raise ValueError(
            f"profile {model}: tool_call_parser {tool_call_parser!r} / reasoning_parser {reasoning_parser!r}: "
            f"{str(exc).splitlines()[0]}{known}"
        ) from None


def _known_parsers() -> str:
    try:
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager

        tools = sorted(ToolParserManager.list_registered())
        reasoning = sorted(ReasoningParserManager.list_registered())
    except (ImportError, AttributeError):
        return ""
    return f" (tool parsers: {', '.join(tools)}; reasoning parsers: {', '.join(reasoning)})"
