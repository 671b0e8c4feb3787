"""One OpenAI SDK round trip through `spoold api` and a daemon on real vLLM (the tiny random model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_helpers import ApiProcess, api_settings

from spoold_helpers import SpooldProcess, chat_line, wait_for, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_sdk_round_trip_on_vllm(tmp_path: Path, tiny_state_dir: Path) -> None:
    engine = {"backend": "vllm", "state_dir": str(tiny_state_dir), "window": 16, "max_attempts": 1}
    with (
        SpooldProcess(tmp_path, engine=engine, api=api_settings(tmp_path)) as daemon,
        ApiProcess(daemon.config_path, tmp_path / "api.log") as api,
    ):
        daemon.start({"VLLM_CPU_KVCACHE_SPACE": "1"})
        api.start()
        client = api.client("alice")
        write_jsonl(
            tmp_path / "in.jsonl",
            [chat_line(f"c{i}", f"Count to {i}.", model="tiny-random", max_tokens=6, temperature=0) for i in range(4)],
        )
        uploaded = client.files.create(file=(tmp_path / "in.jsonl").open("rb"), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed") and b, 300, 0.5, "the batch")
        assert done.status == "completed" and done.request_counts.completed == 4 and done.error_file_id is None, daemon.log()
        records = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(r["custom_id"] for r in records) == [f"c{i}" for i in range(4)]
        body = records[0]["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "tiny-random" and body["usage"]["completion_tokens"] > 0
        assert done.usage.output_tokens > 0
