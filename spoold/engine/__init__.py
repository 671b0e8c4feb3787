"""Inference backends behind one interface (`base.Engine`)."""

from __future__ import annotations

from spoold.config import Config
from spoold.engine.base import Engine, ModelLoadError
from spoold.engine.profiles import ModelProfile


def load_engine(config: Config, profile: ModelProfile) -> Engine:
    """Load `profile` with the configured backend; raises ModelLoadError with a readable reason."""
    if config.engine.backend == "echo":
        from spoold.engine.echo import EchoEngine

        return EchoEngine(profile.name)
    try:
        from spoold.engine.vllm.backend import VllmEngine
    except ImportError as exc:
        raise ModelLoadError(f"the vllm backend is not installed ({exc}); install spoold[cpu] or spoold[gpu]") from None
    return VllmEngine.load(config, profile)
