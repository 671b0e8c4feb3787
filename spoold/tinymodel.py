"""The embedded models: tiny random-weight Llamas that spoold builds itself.

They exist so that the demo and the tests run real vLLM inference on any CPU
with nothing downloaded. The output is gibberish, but it is real generation:
real tokenizer, chat template, sampling, stop strings, token counts.

A build is deterministic (fixed seed -> the same weights and tokenizer),
atomic (built in a temporary directory, renamed into place) and idempotent (a
second call returns the directory already built).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUILTIN_PREFIX = "builtin:"
BUILTIN_SEEDS: dict[str, int] = {"tiny-random": 0, "tiny-random-b": 1, "tiny-embed": 2, "tiny-rerank": 3}
"""Built-in model names and the seed each is built from (a second model for model-switch tests;
`tiny-embed` is served as an embedding model, `tiny-rerank` as a cross-encoder: their profiles
run them with vLLM's pooling runner)."""
BUILTIN_CONFIG: dict[str, dict[str, Any]] = {
    "tiny-embed": {"matryoshka_dimensions": [32, 64, 128]},
    "tiny-rerank": {"num_labels": 1, "architectures": ["LlamaForSequenceClassification"]},
}
"""Extra config.json keys per built-in model (tiny-embed accepts `dimensions` 32, 64 or 128;
tiny-rerank is a one-label sequence classifier, i.e. a cross-encoder)."""

MARKER = "spoold-tiny.json"
"""Written last inside the build; its presence means the build is complete."""

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
VOCAB_SIZE = 1024
MAX_POSITIONS = 2048
HIDDEN_SIZE, NUM_LAYERS, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 128, 2, 2, 1, 64
"""The tiny Llama's shape (the built-in adapters are made to fit it)."""

BUILTIN_ADAPTERS: dict[str, tuple[str, int]] = {"tiny-random-lora-a": ("tiny-random", 100), "tiny-random-lora-b": ("tiny-random", 101)}
"""Built-in LoRA adapters: name -> (base built-in model, seed). Rank ADAPTER_RANK on q_proj and v_proj."""
ADAPTER_RANK = 8
ADAPTER_TARGETS = ("q_proj", "v_proj")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>\nYou may call these functions. To call one, answer '"
    ' + \'<tool_call>{"name": NAME, "arguments": {...}}</tool_call>\n<tools>\n\' }}'
    "{% for tool in tools %}{{ (tool | tojson) + '\n' }}{% endfor %}"
    "{{ '</tools><|end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '<tool_call>' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " + '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""Renders `tools` (a system turn listing them) and assistant `tool_calls` the Hermes way, so the
profile's `hermes` tool-call parser reads the answers; without tools the prompt is as before.
The engine renders built-in models with this template, whatever build is on disk."""

# Written for spoold (plain, varied English so BPE learns useful merges).
_CORPUS = """\
A spool directory is a simple queue. Files arrive in the inbox, a daemon claims
them by renaming them, works through them in chunks, and moves the results to
done or failed. Nothing is lost when the power goes out, because every step is
written to disk before the next one starts.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor
jugs. How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.
Numbers matter too: 0 1 2 3 4 5 6 7 8 9, 10, 42, 100, 256, 1024, 3.14, 2026-11-05.
Questions and answers: What is the capital of France? Paris. Who wrote the
report? The team did. Summarise the review in one sentence, please.
Customers wrote that the product was good, bad, fast, slow, cheap or expensive;
some asked for a refund, others for a new feature, and a few only said thanks.
JSON looks like {"name": "value", "count": 3, "tags": ["a", "b"]} and YAML like
key: value. Code looks like def main(): return 0 and for i in range(10): print(i).
The model reads a prompt, predicts one token at a time, and stops at a stop
string, at the end-of-sequence token, or when it reaches its token budget.
"""


def is_builtin(model: str) -> bool:
    return model.startswith(BUILTIN_PREFIX)


def builtin_name(model: str) -> str:
    """`builtin:tiny-random` -> `tiny-random`; raises ValueError for unknown names."""
    name = model.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_SEEDS:
        known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_SEEDS))
        raise ValueError(f"unknown built-in model {model!r} (known: {known})")
    return name


def builtin_dir(model: str, state_dir: Path) -> Path:
    """Where a built-in model lives (built or not) under the state directory."""
    return Path(state_dir) / "models" / builtin_name(model)


def is_built(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def ensure_builtin(model: str, state_dir: Path) -> Path:
    """Resolve `builtin:NAME` (or bare NAME) to its built directory, building it the first time."""
    name = builtin_name(model if is_builtin(model) else BUILTIN_PREFIX + model)
    return build_tiny_model(Path(state_dir) / "models" / name, seed=BUILTIN_SEEDS[name], extra_config=BUILTIN_CONFIG.get(name))


def builtin_adapter_dir(name: str, state_dir: Path) -> Path:
    """Where a built-in adapter lives (built or not): `builtin:tiny-random-lora-a` or the bare name."""
    bare = name.removeprefix(BUILTIN_PREFIX)
    if bare not in BUILTIN_ADAPTERS:
        known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_ADAPTERS))
        raise ValueError(f"unknown built-in adapter {name!r} (known: {known})")
    return Path(state_dir) / "adapters" / bare


def ensure_builtin_adapter(name: str, state_dir: Path) -> Path:
    """Resolve a built-in adapter to its built PEFT folder, building it the first time."""
    dest = builtin_adapter_dir(name, state_dir)
    return build_tiny_adapter(dest, seed=BUILTIN_ADAPTERS[dest.name][1], base=BUILTIN_PREFIX + BUILTIN_ADAPTERS[dest.name][0])


def build_tiny_adapter(dest: Path, seed: int, base: str = BUILTIN_PREFIX + "tiny-random", rank: int = ADAPTER_RANK) -> Path:
    """Build a PEFT LoRA folder for the tiny Llama into `dest` (deterministic from `seed`); return `dest`.

    Random A and B (PEFT would start B at zero: no effect), scaled so the answers visibly differ
    from the base model's. numpy only: no torch import. Atomic and idempotent like the model build.
    """
    import numpy as np
    from safetensors.numpy import save_file

    dest = Path(dest)
    if is_built(dest):
        return dest
    rng = np.random.default_rng(seed)
    out_features = {"q_proj": NUM_HEADS * HEAD_DIM, "v_proj": NUM_KV_HEADS * HEAD_DIM}
    tensors: dict[str, Any] = {}
    for layer in range(NUM_LAYERS):
        for target in ADAPTER_TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0.0, 0.5, (rank, HIDDEN_SIZE)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0.0, 0.5, (out_features[target], rank)).astype(np.float32)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(ADAPTER_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return _publish(dest, seed, write)


def build_tiny_model(dest: Path, seed: int = 0, extra_config: dict[str, Any] | None = None) -> Path:
    """Build a tiny random Llama plus tokenizer into `dest`; return `dest`.

    Another process building the same directory at the same time is fine: one
    rename wins and the loser discards its copy.
    """
    dest = Path(dest)
    if is_built(dest):
        return dest

    def write(tmp: Path) -> None:
        _save_model(tmp, seed, _save_tokenizer(tmp), extra_config or {})

    return _publish(dest, seed, write)


def _publish(dest: Path, seed: int, write: Callable[[Path], None]) -> Path:
    """Build into a private folder beside `dest` (`write`), mark it built, rename it into place; another
    process building the same `dest` at the same time is fine: one rename wins, the loser drops its copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({"seed": seed, "weights_sha256": weights_digest(tmp)}, indent=2) + "\n", encoding="utf-8")
        _make_readable(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_built(dest):  # not a lost race: a real problem
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def weights_digest(path: Path) -> str:
    """SHA-256 over the weight files, to check that a build is reproducible."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _make_readable(directory: Path) -> None:
    """mkdtemp creates 0700: let other users (the daemon, an operator) read the model."""
    directory.chmod(0o755)
    for file in directory.iterdir():
        file.chmod(0o644)


def _train_tokenizer() -> Any:
    """A byte-level BPE trained on the built-in text: every input is encodable, nothing is unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # Completion prompts get a BOS like Llama's; the chat template writes its own.
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return tokenizer


def _save_tokenizer(directory: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def _save_model(directory: Path, seed: int, tokenizer: Any, extra_config: dict[str, Any]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=256,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,  # the CPU attention kernel rejects 16
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
        **extra_config,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config) if config.num_labels == 1 else LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
