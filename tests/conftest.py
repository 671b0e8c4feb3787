"""Shared fixtures. Sections are owned by topic; keep them apart.

Tests by kind (docs/contributing.md): tests/unit/ runs in-process and fast (a file there may hold a
test marked `slow`), tests/process/ starts real daemons and other processes (every test there is
marked `slow`), tests/vllm/ loads a real vLLM engine (marked `slow` and `vllm`). `make test-fast`
runs `tests/unit -m "not slow and not vllm"`.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# ---- core fixtures (spool, daemon process) -------------------------------------------------

# ---- vLLM fixtures (one real engine per test session) --------------------------------------
# The tiny models are built once per session and shared: `tiny_state_dir` is a spoold
# `engine.state_dir` holding both built-in models (give it to a daemon's config to skip
# the build); `vllm_engine` is THE real engine of the session (loading takes ~20 s).

import pytest  # noqa: E402

_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The folder says what a test needs: process/ -> slow; vllm/ -> slow and vllm."""
    for item in items:
        kind = os.path.relpath(str(item.path), _TESTS).split(os.sep)[0]
        if kind in ("process", "vllm"):
            item.add_marker(pytest.mark.slow)
        if kind == "vllm":
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def tiny_state_dir(tmp_path_factory: pytest.TempPathFactory):
    from spoold.tinymodel import BUILTIN_SEEDS, ensure_builtin

    state = tmp_path_factory.mktemp("spoold-state")
    for name in BUILTIN_SEEDS:
        ensure_builtin(name, state)
    return state


@pytest.fixture(scope="session")
def vllm_engine(tiny_state_dir):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spoold.config import Config
    from spoold.engine.profiles import load_profiles
    from spoold.engine.vllm.backend import VllmEngine

    config = Config.model_validate({"engine": {"state_dir": str(tiny_state_dir)}})
    engine = VllmEngine.load(config, load_profiles()["tiny-random"])
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def embed_engine(tiny_state_dir):
    """The session's one pooling engine: the built-in tiny-embed model (embeddings, score, rerank)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spoold.config import Config
    from spoold.engine.profiles import load_profiles
    from spoold.engine.vllm.backend import VllmEngine

    config = Config.model_validate({"engine": {"state_dir": str(tiny_state_dir)}})
    engine = VllmEngine.load(config, load_profiles()["tiny-embed"])
    yield engine
    engine.close()


@pytest.fixture()
def tiny_embed_engine(embed_engine):
    """The session pooling engine, guaranteed empty before and after each test."""
    embed_engine.abort_all()
    yield embed_engine
    embed_engine.abort_all()


@pytest.fixture()
def tiny_engine(vllm_engine):
    """The session engine, guaranteed empty before and after each test."""
    vllm_engine.abort_all()
    yield vllm_engine
    vllm_engine.abort_all()
