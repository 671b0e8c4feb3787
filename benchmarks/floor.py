"""The floor: the unavoidable part of what spoold does per chat line, as a plain loop (issue 25).

Per line: `json.loads`, take the last message's text, build the OpenAI-shaped output
record as a dict (`id`, `custom_id`, `response` with `status_code`, `request_id`, a
`chat.completion` body with one choice and `usage`, `error: null`), `json.dumps`, buffer;
every 1,000 lines write the buffer, flush and `os.fsync`. Nothing else: no validating
pass, no checkpoint, no lease, no status file.

Usage: python benchmarks/floor.py INPUT.jsonl OUTPUT.jsonl   (prints {"seconds", "lines"})
"""

from __future__ import annotations

import json
import os
import sys
import time

CHUNK = 1000


def floor(input_path: str, output_path: str, model: str = "echo") -> int:
    """Answer every chat line of `input_path` into `output_path`, echoing the last message; returns the lines done."""
    lines = 0
    buffer: list[str] = []
    created = int(time.time())
    with open(input_path, "rb") as src, open(output_path, "w", encoding="utf-8") as out:
        for raw in src:
            request = json.loads(raw)
            text = request["body"]["messages"][-1]["content"]
            token = os.urandom(16).hex()
            words = len(text.split())
            record = {
                "id": f"batch_req_{token}",
                "custom_id": request["custom_id"],
                "response": {
                    "status_code": 200,
                    "request_id": f"req_{token}",
                    "body": {
                        "id": f"chatcmpl-{token}",
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "logprobs": None,
                                "finish_reason": "stop",
                                "stop_reason": None,
                            }
                        ],
                        "usage": {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words},
                    },
                },
                "error": None,
            }
            buffer.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            lines += 1
            if len(buffer) >= CHUNK:
                out.write("\n".join(buffer) + "\n")
                out.flush()
                os.fsync(out.fileno())
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")
            out.flush()
            os.fsync(out.fileno())
    return lines


def main() -> int:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    started = time.monotonic()
    lines = floor(sys.argv[1], sys.argv[2])
    print(json.dumps({"seconds": time.monotonic() - started, "lines": lines}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
