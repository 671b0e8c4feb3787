"""Shared fixtures. Sections are owned by topic; keep them apart."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# ---- core fixtures (spool, daemon process) -------------------------------------------------

# ---- vLLM fixtures (one real engine per test session) --------------------------------------
# The tiny models are built once per session and shared: `tiny_state_dir` is a spoold
# `engine.state_dir` holding both built-in models (give it to a daemon's config to skip
# the build); `vllm_engine` is THE real engine of the session (loading takes ~20 s).

import pytest  # noqa: E402


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
    from spoold.engine.vllm.backend import VllmEngine
    from spoold.engine.profiles import load_profiles

    config = Config.model_validate({"engine": {"state_dir": str(tiny_state_dir)}})
    engine = VllmEngine.load(config, load_profiles()["tiny-random"])
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def embed_engine(tiny_state_dir):
    """The session's one pooling engine: the built-in tiny-embed model (embeddings, score, rerank)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spoold.config import Config
    from spoold.engine.vllm.backend import VllmEngine
    from spoold.engine.profiles import load_profiles

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
