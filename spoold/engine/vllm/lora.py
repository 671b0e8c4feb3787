"""LoRA adapters on one loaded base model: each adapter's vLLM LoRARequest, with a stable id.

The engine is loaded with enable_lora / max_loras / max_lora_rank from the base
profile (adapters.lora_engine_args); every request of an adapter job carries
its adapter's LoRARequest, and vLLM's scheduler lets more adapters than
max_loras take turns. vLLM is imported only when a request needs an adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spoold.tinymodel import ADAPTER_CONFIG


class AdapterRejected(ValueError):
    """One request's adapter cannot run on this engine: that line's error."""


class LoraBook:
    def __init__(self, model: str, engine_args: dict[str, Any]) -> None:
        self._model = model
        self.enabled = bool(engine_args.get("enable_lora"))
        self.max_rank = int(engine_args.get("max_lora_rank") or 16)
        self._requests: dict[tuple[str, str], Any] = {}
        """(name, folder) -> LoRARequest; ids count from 1 in order of first use, one per adapter."""

    def request_for(self, adapter: tuple[str, str] | None) -> Any:
        """The LoRARequest of `adapter` (None for the base model)."""
        if adapter is None:
            return None
        found = self._requests.get(adapter)
        if found is not None:
            return found
        name, folder = adapter
        if not self.enabled:
            raise AdapterRejected(f"adapter {name}: model {self._model} was loaded without LoRA (its profile declares no adapters)")
        rank = _rank(name, Path(folder))
        if rank > self.max_rank:
            raise AdapterRejected(
                f"adapter {name} has rank {rank}, above the engine's max_lora_rank {self.max_rank} for model {self._model}"
            )
        from vllm.lora.request import LoRARequest

        found = LoRARequest(lora_name=name, lora_int_id=len(self._requests) + 1, lora_path=folder)
        self._requests[adapter] = found
        return found

    def ids(self) -> dict[str, int]:
        """Adapter name -> its LoRARequest id on this engine."""
        return {name: request.lora_int_id for (name, _), request in self._requests.items()}


def _rank(name: str, folder: Path) -> int:
    try:
        rank = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("r")
    except (OSError, ValueError, AttributeError) as exc:
        raise AdapterRejected(f"adapter {name}: cannot read {folder / ADAPTER_CONFIG} ({exc})") from None
    if not isinstance(rank, int):
        raise AdapterRejected(f"adapter {name}: {folder / ADAPTER_CONFIG} has no valid rank `r`")
    return rank
