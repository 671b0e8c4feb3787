"""Model profiles: the shipped ones load, typos are rejected, availability is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoold.engine.profiles import ModelProfile, hf_snapshot, load_profiles, models_report, profile_available
from spoold.errors import ConfigError
from spoold.tinymodel import MARKER


def test_shipped_profiles_load_and_are_complete() -> None:
    profiles = load_profiles()
    expected = {"tiny-random", "tiny-random-b", "gemma-3-4b-it", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "qwen3-4b"}
    assert expected <= set(profiles)
    for name in expected - {"tiny-random", "tiny-random-b"}:
        p = profiles[name]
        assert "/" in p.model, name  # a Hugging Face id
        assert p.gpu_memory_gb and p.engine_args["max_model_len"] and p.engine_args["dtype"], name
        assert p.sampling["max_tokens"] > 16, name
    assert profiles["tiny-random"].engine_args["enforce_eager"] is True
    assert profiles["tiny-random-b"].model == "builtin:tiny-random-b"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: x\nmodle: y\n", "modle: unknown key"),
        ("model: x\nengine_args: {max_model_lenn: 4096}\n", "max_model_lenn: unknown key"),
        ("model: x\nengine_args: {gpu_memory_utilization: 1.5}\n", "gpu_memory_utilization"),
        ("model: x\nengine_args: {dtype: fp7}\n", "dtype"),
        ("model: x\nsampling: {temprature: 0.5}\n", "temprature: unknown sampling parameter"),
        ("model: x\nsampling: {max_tokens: 0}\n", "max_tokens must be >= 1"),
        ("model: builtin:huge\n", "unknown built-in model"),
        ("model: x\ngpu_memory_gb: -1\n", "gpu_memory_gb"),
    ],
)
def test_bad_profiles_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profiles([write(tmp_path, text)])


def test_extra_dir_profile_named_by_file_stem(tmp_path: Path) -> None:
    profiles = load_profiles([write(tmp_path, "model: org/m\nengine_args: {max_model_len: 2048}\n")])
    assert profiles["p"].engine_args == {"max_model_len": 2048}


def test_builtin_availability_follows_the_build_marker(tmp_path: Path) -> None:
    profile = ModelProfile(name="tiny-random", model="builtin:tiny-random")
    ok, why = profile_available(profile, tmp_path)
    assert not ok and "models build" in why
    built = tmp_path / "models" / "tiny-random"
    built.mkdir(parents=True)
    (built / MARKER).write_text("{}")
    assert profile_available(profile, tmp_path) == (True, f"built at {built}")


def test_local_directory_availability(tmp_path: Path) -> None:
    profile = ModelProfile(name="local", model=str(tmp_path / "m"))
    assert not profile_available(profile, tmp_path)[0]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert profile_available(profile, tmp_path)[0]


def test_hf_cache_availability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    profile = ModelProfile(name="q", model="Qwen/Qwen3-4B")
    assert profile_available(profile, tmp_path) == (False, "not downloaded (huggingface-cli download Qwen/Qwen3-4B)")
    snap = tmp_path / "hub" / "models--Qwen--Qwen3-4B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert hf_snapshot("Qwen/Qwen3-4B") is None  # an interrupted download: no config.json yet
    (snap / "config.json").write_text("{}")
    assert hf_snapshot("Qwen/Qwen3-4B") == snap
    assert profile_available(profile, tmp_path)[0]
    # vLLM's download_dir replaces the hub cache
    elsewhere = ModelProfile(name="q", model="Qwen/Qwen3-4B", engine_args={"download_dir": str(tmp_path / "none")})
    assert not profile_available(elsewhere, tmp_path)[0]


def test_models_report_lists_every_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    profiles = load_profiles()
    lines = models_report(profiles, tmp_path).splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODEL", "MAX"]
    assert len(lines) == len(profiles) + 1 + sum(len(p.adapters) for p in profiles.values())  # adapters have rows too
    row = next(line for line in lines if line.startswith("qwen3-4b "))
    assert "Qwen/Qwen3-4B" in row and "32768" in row and " no " in row
