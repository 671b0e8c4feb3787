"""Models larger than one GPU (issue 9): engine arguments against the GPUs an instance sees."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoold.engine.profiles import load_profiles
from spoold.service.devices import devices_needed, does_not_fit, model_problem, site_problem, visible_devices

from spoold_helpers import SpooldProcess, assert_exactly_once, chat_line, child_env, drop_job, wait_for

REPO = Path(__file__).resolve().parents[2]
DROP_IN = REPO / "systemd" / "gpu-group.conf"
BIG = "llama-3.3-70b-instruct"


def drop_in_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def test_devices_needed_and_visible() -> None:
    assert devices_needed({}) == 1
    assert devices_needed({"tensor_parallel_size": 4}) == 4
    assert devices_needed({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}) == 4
    assert visible_devices(None) is None
    assert visible_devices("") == []
    assert visible_devices("0,1") == ["0", "1"]
    assert visible_devices("2,-1,3") == ["2"]  # CUDA stops at the first negative index
    assert visible_devices("GPU-8a1b,MIG-77c2") == ["GPU-8a1b", "MIG-77c2"]


def test_does_not_fit_in_one_line() -> None:
    assert does_not_fit("m", {"tensor_parallel_size": 4}, {}) is None  # unset: every GPU of the host, not checked
    assert does_not_fit("m", {"tensor_parallel_size": 2}, {"CUDA_VISIBLE_DEVICES": "0,1"}) is None
    reason = does_not_fit("model m", {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert (
        reason
        == "model m needs 4 GPUs (tensor_parallel_size 2 x pipeline_parallel_size 2) but this daemon sees 2 (CUDA_VISIBLE_DEVICES=0,1)"
    )
    assert "sees 0" in does_not_fit("m", {"tensor_parallel_size": 2}, {"CUDA_VISIBLE_DEVICES": ""})
    # the site's engine.engine_args win over the profile's, as the vLLM backend merges them
    assert model_problem("m", {"tensor_parallel_size": 4}, {"tensor_parallel_size": 1}, {"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert "give this instance a GPU group" in site_problem({"tensor_parallel_size": 2}, {"CUDA_VISIBLE_DEVICES": "0"})


def test_the_big_profile_agrees_with_the_gpu_group_drop_in_and_not_with_one_gpu() -> None:
    profile = load_profiles()[BIG]
    assert profile.engine_args["tensor_parallel_size"] == 4 and profile.model == "meta-llama/Llama-3.3-70B-Instruct"
    group = drop_in_env(DROP_IN)
    assert group["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and group["SPOOLD_NODE_ID"] == "%H-gpu0-3"
    assert model_problem(BIG, profile.engine_args, {}, group) is None
    # a plain spoold@2 (one GPU) cannot run it, and says why
    one_gpu = {"CUDA_VISIBLE_DEVICES": "2"}
    assert model_problem(BIG, profile.engine_args, {}, one_gpu) == (
        f"model {BIG} needs 4 GPUs (tensor_parallel_size 4) but this daemon sees 1 (CUDA_VISIBLE_DEVICES=2)"
    )
    # every other shipped profile fits one GPU
    assert [n for n, p in load_profiles().items() if model_problem(n, p.engine_args, {}, one_gpu)] == [BIG]


@pytest.mark.slow
def test_run_refuses_site_engine_args_wider_than_the_visible_gpus(tmp_path: Path) -> None:
    daemon = SpooldProcess(tmp_path, engine={"engine_args": {"tensor_parallel_size": 2}})
    result = subprocess.run(
        [sys.executable, "-m", "spoold", "run", "--config", str(daemon.config_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=child_env({"CUDA_VISIBLE_DEVICES": "3"}),
    )  # fmt: skip
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(
        "spoold run: engine.engine_args needs 2 GPUs (tensor_parallel_size 2) but this daemon sees 1 (CUDA_VISIBLE_DEVICES=3)"
    )


@pytest.mark.slow
def test_a_one_gpu_daemon_leaves_the_big_model_to_the_gpu_group(tmp_path: Path) -> None:
    """Echo backend: the routing, not the inference. One daemon sees GPU 4, another GPUs 0-3."""
    with SpooldProcess(tmp_path / "one", node_id="host-gpu4") as one:
        big = [f"b{i}" for i in range(6)]
        small = [f"s{i}" for i in range(6)]
        drop_job(one.inbox, "big", [chat_line(c, "hi") for c in big], {"model": BIG})
        drop_job(one.inbox, "small", [chat_line(c, "hi") for c in small], {"model": "tiny-random"})
        one.start({"CUDA_VISIBLE_DEVICES": "4"})
        assert_exactly_once(one.wait_finished("small"), small)
        time.sleep(2)  # several looks at the inbox
        assert (one.inbox / "big.jsonl").exists(), "a one-GPU daemon claimed a 4-GPU model's job"
        told = [line for line in one.log().splitlines() if "left to another daemon" in line]
        assert len(told) == 1 and f"model {BIG} needs 4 GPUs" in told[0] and "CUDA_VISIBLE_DEVICES=4" in told[0]
        group = SpooldProcess(tmp_path / "group", spool_dir=str(one.spool), node_id="host-gpu0-3")
        group.spool = one.spool
        with group:
            group.start(drop_in_env(DROP_IN) | {"SPOOLD_NODE_ID": "host-gpu0-3"})
            job = group.wait_finished("big")
            assert_exactly_once(job, big)
            assert json.loads((job / "batch.json").read_text())["spoold"]["node"] == "host-gpu0-3"
            wait_for(lambda: not (one.inbox / "big.yaml").exists(), 5, what="the sidecar to leave the inbox")
