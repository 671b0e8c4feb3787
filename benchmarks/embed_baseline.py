"""The ceiling for the embeddings comparison: one in-process LLM.embed over the whole list, no checkpoints.

Usage: embed_baseline.py N MODEL_DIR; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from run import embed_text
    from vllm import LLM

    n, model = int(sys.argv[1]), sys.argv[2]
    started = time.monotonic()
    # The engine arguments of spoold's tiny-embed profile.
    llm = LLM(model=model, runner="pooling", convert="embed", enforce_eager=True, max_model_len=512, dtype="float32",
              enable_chunked_prefill=False, disable_log_stats=True)  # fmt: skip
    load = time.monotonic() - started
    texts = [embed_text(i) for i in range(n)]
    started = time.monotonic()
    outputs = llm.embed(texts, use_tqdm=False)
    seconds = time.monotonic() - started
    print(json.dumps({"load": load, "embed": seconds, "embeddings": len(outputs),
                      "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
