"""GPU readings through NVML (pynvml) and the health gate that pauses claiming.

A host without the NVIDIA library, driver or GPUs is normal (CPU builds, CI): the
monitor says so in one info line, samples nothing, and the daemon runs on.
NVML is passed in so tests drive a fake; NVML never creates a CUDA context, so
sampling beside a running vLLM engine is safe and cheap (about 1 ms per GPU).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED, if the module does not say
_NO_V2_ERRORS = {"NVML_ERROR_NOT_SUPPORTED": 3, "NVML_ERROR_FUNCTION_NOT_FOUND": 13, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25}
"""What a driver without nvmlDeviceGetMemoryInfo_v2 answers (names as pynvml spells them, values if it does not)."""


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment; `error` set means NVML could not read it."""

    index: int
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    error: str | None = None


def visible_indices(value: str | None) -> list[int] | None:
    """$CUDA_VISIBLE_DEVICES as a list of GPU indices; None means "all GPUs".

    CUDA's rules: empty hides every GPU, the list ends at the first negative index.
    UUIDs or MIG names are not mapped here: all GPUs are watched then.
    """
    if value is None:
        return None
    indices: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            index = int(part)
        except ValueError:
            log.info("CUDA_VISIBLE_DEVICES=%s is not a list of indices; watching every GPU", value)
            return None
        if index < 0:
            break
        indices.append(index)
    return indices


class GpuMonitor:
    """Reads the visible GPUs; `available` is False when there is nothing to read."""

    def __init__(self, nvml: Any | None = None, environ: Mapping[str, str] | None = None) -> None:
        """`nvml`: the pynvml module or a fake (None imports pynvml); `environ` for CUDA_VISIBLE_DEVICES."""
        self._nvml: Any = nvml  # the module (or a fake): untyped
        self._devices: list[tuple[int, Any, str | None]] = []  # index, handle, error at start
        self.available = False
        self._memory_v2: bool | None = None  # None: not tried yet; False: the driver lacks it, v1 from then on
        env = os.environ if environ is None else environ
        self._start(visible_indices(env.get("CUDA_VISIBLE_DEVICES")))

    def _start(self, wanted: Sequence[int] | None) -> None:
        nvml = self._nvml if self._nvml is not None else _import_pynvml()
        if nvml is None:
            log.info("GPU monitoring off: the nvidia-ml-py package (pynvml) is not installed")
            return
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.info("GPU monitoring off: NVML unavailable (%s)", exc)
            return
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.info("GPU monitoring off: NVML cannot count GPUs (%s)", exc)
            self._shutdown()
            return
        indices = [i for i in (range(count) if wanted is None else wanted) if 0 <= i < count]
        for index in indices:
            try:
                self._devices.append((index, nvml.nvmlDeviceGetHandleByIndex(index), None))
            except nvml.NVMLError as exc:
                self._devices.append((index, None, str(exc)))
        if not self._devices:
            log.info("GPU monitoring off: no visible GPU (%d found by NVML)", count)
            self._shutdown()
            return
        self.available = True
        log.info("watching GPU %s", ", ".join(str(i) for i, _, _ in self._devices))

    def sample(self) -> list[GpuSample]:
        """A reading of every watched GPU; [] when monitoring is off."""
        if not self.available:
            return []
        return [self._read(index, handle, error) for index, handle, error in self._devices]

    def close(self) -> None:
        if self.available:
            self.available = False
            self._shutdown()

    def _read(self, index: int, handle: Any, error: str | None) -> GpuSample:
        nvml = self._nvml
        if handle is None:
            return GpuSample(index, error=error or "no NVML handle")
        try:
            memory = self._memory(handle)
            utilization = self._optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
            temperature = self._optional(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
        except nvml.NVMLError as exc:
            return GpuSample(index, error=str(exc))
        return GpuSample(
            index,
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            utilization_ratio=utilization,
            temperature_celsius=temperature,
        )

    def _memory(self, handle: Any) -> Any:
        """NVML's v2 memory information, whose `used` leaves out the driver's reserved memory (as
        nvidia-smi shows it); v1, which counts reserved memory as used, where the driver lacks v2."""
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None and self._memory_v2 is not False:
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except TypeError:  # an old pynvml without the version argument
                self._no_memory_v2("this pynvml has no version argument")
            except nvml.NVMLError as exc:
                missing = {getattr(nvml, name, value) for name, value in _NO_V2_ERRORS.items()}
                if getattr(exc, "value", None) not in missing:
                    raise
                self._no_memory_v2(str(exc))
            else:
                self._memory_v2 = True
                return memory
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def _no_memory_v2(self, why: str) -> None:
        self._memory_v2 = False
        log.info("NVML v2 memory information unavailable (%s); GPU memory used includes reserved memory", why)

    def _optional(self, read: Any) -> float | None:
        """A reading some GPUs (MIG, older boards) do not support: None, not an error."""
        nvml = self._nvml
        try:
            return float(read())
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED):
                return None
            raise

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)


def gpu_health(samples: Iterable[GpuSample], max_temperature: float | None) -> str | None:
    """Why new jobs must wait (for STATUS and the log), or None when every GPU is fine."""
    for s in samples:
        if s.error is not None:
            return f"GPU {s.index}: NVML error ({s.error})"
        if max_temperature is not None and s.temperature_celsius is not None:
            if s.temperature_celsius > max_temperature:
                return f"GPU {s.index} at {s.temperature_celsius:.0f}°C (limit {max_temperature:.0f}°C)"
    return None


def _import_pynvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None
