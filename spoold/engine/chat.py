"""Chat lines -> prompt text through the model's chat template (tools and template kwargs included).

Rendering happens in spoold rather than inside vLLM so the prompt length is
known before a request enters the engine. Pure apart from the tokenizer it is
given; no vLLM import.
"""

from __future__ import annotations

from typing import Any


class ChatRejected(ValueError):
    """A chat body cannot be rendered (bad messages, a template error): that line's invalid_request."""


def render(
    tokenizer: Any,
    body: dict[str, Any],
    *,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> list[int]:
    """The prompt's token ids: messages (text parts flattened), tools and kwargs through the template.

    `chat_template` replaces the tokenizer's own (the built-in models always render with the
    current template, whatever build is on disk).
    """
    messages = [text_message(m) for m in _messages(body)]
    add_generation_prompt = bool(body.get("add_generation_prompt", True))
    extra = dict(template_kwargs or {})
    if tools is not None:
        extra["tools"] = tools
    if chat_template is not None:
        extra["chat_template"] = chat_template
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
    except (ValueError, TypeError, KeyError, IndexError, _template_error()) as exc:
        raise ChatRejected(f"chat template: {_one_line(exc)}") from None
    # The template already wrote BOS and friends: do not add them twice.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer's Rust encoder, the same ids without transformers' per-call work
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer.encode(text, add_special_tokens=False))


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRejected("messages must be a non-empty list")
    return messages


def text_message(message: Any) -> dict[str, Any]:
    """Flatten OpenAI content parts to text; spoold's engine serves text-only requests."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ChatRejected("each message must be an object with a role")
    content = message.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ChatRejected(f"only text content parts are supported, got {kind!r}")
            texts.append(part["text"])
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise ChatRejected("message content must be a string or a list of text parts")
    return {**message, "content": content}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _template_error() -> type[Exception]:
    try:
        from jinja2 import TemplateError
    except ImportError:  # transformers always brings jinja2; be safe anyway
        return ValueError
    return TemplateError
