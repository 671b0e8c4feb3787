"""The embedded tiny models: deterministic, atomic, idempotent builds (no engine needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spoold.tinymodel import (
    BUILTIN_SEEDS,
    MARKER,
    build_tiny_model,
    builtin_dir,
    ensure_builtin,
    weights_digest,
)

pytestmark = pytest.mark.slow


def test_same_seed_same_model_different_seed_different_weights(tmp_path: Path, tiny_state_dir: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    first = builtin_dir("builtin:tiny-random", tiny_state_dir)
    second = builtin_dir("builtin:tiny-random-b", tiny_state_dir)
    assert weights_digest(again) == weights_digest(first)
    assert (again / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    assert weights_digest(second) != weights_digest(first)
    assert json.loads((first / MARKER).read_text())["weights_sha256"] == weights_digest(first)


def test_build_is_idempotent_and_leaves_no_temp_dirs(tiny_state_dir: Path) -> None:
    path = ensure_builtin("builtin:tiny-random", tiny_state_dir)
    before = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin("tiny-random", tiny_state_dir) == path  # bare names work too
    assert (path / "model.safetensors").stat().st_mtime_ns == before
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(BUILTIN_SEEDS)


def test_unknown_builtin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown built-in model"):
        ensure_builtin("builtin:huge", tmp_path)


def test_model_shape_and_chat_template(tiny_state_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    path = builtin_dir("builtin:tiny-random", tiny_state_dir)
    config = AutoConfig.from_pretrained(path)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 128, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 64)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<s><|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = tokenizer.encode("héllo wörld 😀")  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == "héllo wörld 😀"
