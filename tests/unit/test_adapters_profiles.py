"""LoRA adapters as models (SPEC section 12): built-in tiny adapters, resolution, one-line failures, `spoold validate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spoold import tinymodel
from spoold.cli.validate import validate_command
from spoold.config import Config
from spoold.engine.adapters import AdapterError, adapter_rows, lora_engine_args
from spoold.engine.profiles import engine_model, load_profiles, models_report, resolve_model
from spoold.errors import ConfigError, UnknownModel


def adapter_folder(root: Path, name: str, seed: int = 7, **config: object) -> Path:
    """A PEFT folder made like the built-in ones, with adapter_config.json keys overridden."""
    folder = tinymodel.build_tiny_adapter(root / name, seed=seed)
    path = folder / tinymodel.ADAPTER_CONFIG
    data = json.loads(path.read_text())
    data.update(config)
    path.write_text(json.dumps(data))
    return folder


def profile_dir(tmp_path: Path, text: str) -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "mine.yaml").write_text(text, encoding="utf-8")
    return models


def test_builtin_adapters_are_declared_deterministic_and_peft_shaped(tmp_path: Path) -> None:
    profiles = load_profiles()
    assert [(a.name, a.path) for a in profiles["tiny-random"].adapters] == [
        ("tiny-random-lora-a", "builtin:tiny-random-lora-a"),
        ("tiny-random-lora-b", "builtin:tiny-random-lora-b"),
    ]
    a = tinymodel.ensure_builtin_adapter("tiny-random-lora-a", tmp_path / "one")
    again = tinymodel.ensure_builtin_adapter("builtin:tiny-random-lora-a", tmp_path / "two")
    b = tinymodel.ensure_builtin_adapter("tiny-random-lora-b", tmp_path / "one")
    assert a == tmp_path / "one" / "adapters" / "tiny-random-lora-a"
    assert tinymodel.weights_digest(a) == tinymodel.weights_digest(again) != tinymodel.weights_digest(b)
    config = json.loads((a / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["target_modules"] == ["q_proj", "v_proj"] and config["peft_type"] == "LORA"
    from safetensors.numpy import load_file

    tensors = load_file(str(a / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (8, 128)
    assert tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].shape == (64, 8)
    assert len(tensors) == 8  # 2 layers x (q_proj, v_proj) x (A, B)
    with pytest.raises(ValueError, match="unknown built-in adapter"):
        tinymodel.ensure_builtin_adapter("tiny-random-lora-z", tmp_path)


def test_an_adapter_resolves_to_its_base_and_runs_on_its_engine(tmp_path: Path) -> None:
    profiles = load_profiles()
    profile = resolve_model("tiny-random-lora-b", profiles, tmp_path)
    assert profile.name == "tiny-random" and profile.served_name == "tiny-random-lora-b"
    assert profile.adapter is not None and profile.adapter.rank == 8
    assert profile.adapter.path == str(tmp_path / "adapters" / "tiny-random-lora-b")  # built on first use
    assert tinymodel.is_built(Path(profile.adapter.path))
    assert engine_model("tiny-random-lora-a", profiles) == engine_model("tiny-random", profiles) == "tiny-random"
    assert engine_model("tiny-random-b", profiles) == "tiny-random-b"
    assert resolve_model("tiny-random", profiles).adapter is None
    assert lora_engine_args(profiles["tiny-random"], tmp_path) == {
        "enable_lora": True,
        "max_loras": 4,
        "max_lora_rank": 8,
        "max_cpu_loras": 4,
    }
    assert lora_engine_args(profiles["tiny-random-b"], tmp_path) == {}  # no adapters: no LoRA


def test_profile_keys_set_the_engine_and_models_lists_adapters(tmp_path: Path) -> None:
    folder = adapter_folder(tmp_path, "wide", r=32)
    models = profile_dir(
        tmp_path,
        f"name: mine\nmodel: builtin:tiny-random\nmax_loras: 2\nadapters:\n"
        f"  - {{name: wide, path: {folder}}}\n  - {{name: gone, path: {tmp_path / 'nowhere'}}}\n",
    )
    profiles = load_profiles([models])
    args = lora_engine_args(profiles["mine"], tmp_path)
    assert args == {"enable_lora": True, "max_loras": 3, "max_lora_rank": 32, "max_cpu_loras": 3}  # a slot more than declared
    rows = {r.name: r for r in adapter_rows(profiles, tmp_path)}
    assert (rows["wide"].base, rows["wide"].present, rows["wide"].rank) == ("mine", True, 32)
    assert not rows["gone"].present and "does not exist" in rows["gone"].where
    assert not rows["tiny-random-lora-a"].present and "not built yet" in rows["tiny-random-lora-a"].where
    report = models_report(profiles, tmp_path)
    line = next(x for x in report.splitlines() if x.startswith("wide "))
    assert "adapter of mine" in line and " yes " in line and "rank 32" in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: x\nadapters: [{name: tiny-random, path: /a}]\n", "adapter tiny-random has the name of a model profile"),
        ("model: x\nadapters: [{name: tiny-random-lora-a, path: /a}]\n", "adapter tiny-random-lora-a is declared by both"),
        ("model: x\nadapters: [{name: a, path: /a}, {name: a, path: /b}]\n", "a declared twice"),
        ("model: x\nadapters: [{name: a, path: relative/dir}]\n", "must be an absolute path"),
        ("model: x\nadapters: [{name: a, path: 'builtin:nope'}]\n", "unknown built-in adapter"),
        ("model: x\nadapters: [{name: a, pth: /a}]\n", "pth: unknown key"),
        ("model: x\nmax_lora_rank: 12\n", "max_lora_rank: must be one of 1, 8, 16"),
        ("model: x\nmax_loras: 1\n", "max_loras: Input should be greater than or equal to 2"),
        ("model: x\nadapter: {name: a, path: /a}\n", "declare adapters as `adapters"),
    ],
)
def test_bad_adapter_declarations_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="mine|adapter") as err:
        load_profiles([profile_dir(tmp_path, text)])
    assert message in str(err.value) and "\n" not in str(err.value)


def bad_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Adapter name -> (how it is broken, the words its one-line error must hold)."""
    unreadable = adapter_folder(tmp_path, "unreadable")
    shutil.rmtree(unreadable / "adapter_model.safetensors", ignore_errors=True)
    (unreadable / "adapter_model.safetensors").unlink()
    (unreadable / "adapter_model.safetensors").mkdir()  # cannot be read as a file, even by root
    badjson = adapter_folder(tmp_path, "badjson")
    (badjson / "adapter_config.json").write_text("{not json")
    noconfig = adapter_folder(tmp_path, "noconfig")
    (noconfig / "adapter_config.json").unlink()
    noweights = adapter_folder(tmp_path, "noweights")
    (noweights / "adapter_model.safetensors").unlink()
    return {
        "missing": (str(tmp_path / "no-such-folder"), "adapter missing: its folder"),
        "noconfig": (str(noconfig), "adapter noconfig: " + str(noconfig / "adapter_config.json") + " is missing"),
        "badjson": (str(badjson), "adapter badjson: " + str(badjson / "adapter_config.json") + " is not valid JSON"),
        "noweights": (str(noweights), "adapter noweights: no weights in"),
        "unreadable": (str(unreadable), "adapter unreadable: cannot read"),
        "wide": (
            str(adapter_folder(tmp_path, "wide", r=16)),
            "adapter wide has rank 16, above the engine's max_lora_rank 8 for model mine",
        ),
        "other": (
            str(adapter_folder(tmp_path, "other", base_model_name_or_path="builtin:tiny-random-b")),
            "adapter other was made for model tiny-random-b",
        ),
        "norank": (str(adapter_folder(tmp_path, "norank", r="eight")), "has no valid rank `r`"),
    }


def test_each_bad_adapter_fails_with_one_sentence_naming_it(tmp_path: Path) -> None:
    cases = bad_cases(tmp_path)
    declared = "".join(f"  - {{name: {name}, path: '{path}'}}\n" for name, (path, _) in cases.items())
    profiles = load_profiles([profile_dir(tmp_path, f"name: mine\nmodel: builtin:tiny-random\nmax_lora_rank: 8\nadapters:\n{declared}")])
    for name, (_, words) in cases.items():
        with pytest.raises(AdapterError) as err:
            resolve_model(name, profiles, tmp_path)
        message = str(err.value)
        assert words in message and name in message and "\n" not in message, (name, message)
    with pytest.raises(UnknownModel, match="unknown model 'tiny-random-lora-z'.*an adapter \\(.*tiny-random-lora-a"):
        resolve_model("tiny-random-lora-z", profiles, tmp_path)
    embed = load_profiles([profile_dir(tmp_path, "name: mine\nmodel: builtin:tiny-embed\ntask: embed\nadapters: [{name: e, path: /x}]\n")])
    with pytest.raises(AdapterError, match="adapter e: its base model mine is a embed model"):
        resolve_model("e", embed, tmp_path)


def test_validate_reports_the_same_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = bad_cases(tmp_path)
    declared = "".join(f"  - {{name: {name}, path: '{path}'}}\n" for name, (path, _) in cases.items())
    models = profile_dir(tmp_path, f"name: mine\nmodel: builtin:tiny-random\nmax_lora_rank: 8\nadapters:\n{declared}")
    config = Config.model_validate({"engine": {"state_dir": str(tmp_path / "state"), "model_dirs": [str(models)]}})
    job = tmp_path / "job.jsonl"
    job.write_text(json.dumps({"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "hi"}}) + "\n")
    sidecar = tmp_path / "job.yaml"
    for name, (_, words) in [*cases.items(), ("tiny-random-lora-z", ("", "unknown model 'tiny-random-lora-z'"))]:
        sidecar.write_text(f"model: {name}\n")
        assert validate_command(config, job, sidecar) == 1
        out = capsys.readouterr().out.strip()
        assert out.startswith(f"FAIL {job} with sidecar {sidecar}: ") and words in out and "\n" not in out, out
    sidecar.write_text("model: tiny-random-lora-a\n")
    assert validate_command(config, job, sidecar) == 0
    assert "1 requests for model tiny-random-lora-a, 1 valid" in capsys.readouterr().out
    job.write_text(json.dumps({"custom_id": "a", "url": "/v1/completions", "body": {"model": "tiny-random", "prompt": "x"}}) + "\n")
    assert validate_command(config, job, sidecar) == 1  # a line naming the base in an adapter's job
    assert "body.model 'tiny-random' does not match the job's model 'tiny-random-lora-a'" in capsys.readouterr().out


def test_metrics_count_requests_by_the_model_results_name() -> None:
    from spoold.service.metrics import Metrics

    metrics = Metrics()
    metrics.model_requests("tiny-random-lora-a", 5, 1)
    metrics.model_requests("tiny-random", 2, 0)
    text = metrics.render().decode()
    assert 'spoold_model_requests_total{model="tiny-random-lora-a",outcome="succeeded"} 5.0' in text
    assert 'spoold_model_requests_total{model="tiny-random-lora-a",outcome="failed"} 1.0' in text
    assert 'spoold_model_requests_total{model="tiny-random",outcome="succeeded"} 2.0' in text
