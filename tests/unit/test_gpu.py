"""spoold.service.gpu against a fake NVML module, and against the real pynvml on a GPU-less host."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from spoold.service.gpu import GpuMonitor, GpuSample, gpu_health, visible_indices
from spoold.service.metrics import Metrics

NOT_SUPPORTED = 3
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
MEMORY_V2 = 0x02000028


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        names = {NOT_SUPPORTED: "Not Supported", GPU_IS_LOST: "GPU is lost", FUNCTION_NOT_FOUND: "Function Not Found"}
        return names.get(self.value, f"code {self.value}")


@dataclass
class FakeGpu:
    used: int = 1 << 30
    total: int = 16 << 30
    reserved: int = 0
    """Memory the driver reserves: v1 counts it as used, v2 apart (nvidia-smi shows v2's used)."""
    util: int | Exception = 40
    temp: int | Exception = 55
    memory_error: Exception | None = None


@dataclass
class FakeNVML:
    """The slice of pynvml that spoold.service.gpu uses."""

    gpus: list[FakeGpu] = field(default_factory=list)
    init_error: Exception | None = None
    calls: list[str] = field(default_factory=list)
    v2_error: Exception | None = None
    """Set: the driver has no nvmlDeviceGetMemoryInfo_v2 and answers with this."""
    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_FUNCTION_NOT_FOUND = FUNCTION_NOT_FOUND
    nvmlMemory_v2 = MEMORY_V2

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self.calls.append(f"handle {index}")
        return self.gpus[index]

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu, version: int | None = None) -> SimpleNamespace:
        """As pynvml: no version is v1 (reserved counted as used); nvmlMemory_v2 calls the _v2 function."""
        self.calls.append(f"memory v{2 if version else 1}")
        if version:
            assert version == MEMORY_V2
            if self.v2_error is not None:
                raise self.v2_error
        if gpu.memory_error is not None:
            raise gpu.memory_error
        free = gpu.total - gpu.used - gpu.reserved
        if version:
            return SimpleNamespace(version=version, total=gpu.total, reserved=gpu.reserved, free=free, used=gpu.used)
        return SimpleNamespace(total=gpu.total, free=free, used=gpu.used + gpu.reserved)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        if isinstance(gpu.util, Exception):
            raise gpu.util
        return SimpleNamespace(gpu=gpu.util, memory=10)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        if isinstance(gpu.temp, Exception):
            raise gpu.temp
        return gpu.temp


def test_samples_every_gpu() -> None:
    nvml = FakeNVML([FakeGpu(), FakeGpu(used=2 << 30, util=100, temp=80)])
    monitor = GpuMonitor(nvml=nvml, environ={})
    assert monitor.available
    assert monitor.sample() == [
        GpuSample(0, 1 << 30, 16 << 30, 0.4, 55.0),
        GpuSample(1, 2 << 30, 16 << 30, 1.0, 80.0),
    ]
    monitor.close()
    assert nvml.calls[-1] == "shutdown"
    assert monitor.sample() == []


def test_memory_used_comes_from_nvml_v2_and_leaves_reserved_memory_out() -> None:
    """An idle H200: v1 said 645 MB used, nvidia-smi (v2) 0 MiB."""
    nvml = FakeNVML([FakeGpu(used=0, total=140 << 30, reserved=645 << 20)])
    monitor = GpuMonitor(nvml=nvml, environ={})
    assert monitor.sample()[0].memory_used_bytes == 0
    assert monitor.sample()[0].memory_total_bytes == 140 << 30
    assert [c for c in nvml.calls if c.startswith("memory")] == ["memory v2", "memory v2"]


@pytest.mark.parametrize("missing", [FakeNVMLError(FUNCTION_NOT_FOUND), FakeNVMLError(NOT_SUPPORTED)])
def test_memory_falls_back_to_v1_where_the_driver_lacks_v2(missing: Exception, caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNVML([FakeGpu(used=1 << 30, reserved=512 << 20), FakeGpu(used=2 << 30)], v2_error=missing)
    monitor = GpuMonitor(nvml=nvml, environ={})
    with caplog.at_level(logging.INFO, logger="spoold.service.gpu"):
        first = monitor.sample()
        again = monitor.sample()
    assert [s.memory_used_bytes for s in first] == [(1 << 30) + (512 << 20), 2 << 30] == [s.memory_used_bytes for s in again]
    assert all(s.error is None for s in first + again)
    assert [c for c in nvml.calls if c.startswith("memory")] == ["memory v2", "memory v1", "memory v1", "memory v1", "memory v1"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # said once, not per sample


def test_memory_v1_with_an_old_pynvml_that_has_no_v2() -> None:
    class OldNVML(FakeNVML):
        nvmlMemory_v2 = None

    nvml = OldNVML([FakeGpu(used=1 << 30, reserved=1 << 20)])
    assert GpuMonitor(nvml=nvml, environ={}).sample()[0].memory_used_bytes == (1 << 30) + (1 << 20)
    assert [c for c in nvml.calls if c.startswith("memory")] == ["memory v1"]


def test_a_lost_gpu_on_the_v2_call_is_still_an_error() -> None:
    nvml = FakeNVML([FakeGpu()], v2_error=FakeNVMLError(GPU_IS_LOST))
    assert GpuMonitor(nvml=nvml, environ={}).sample() == [GpuSample(0, error="GPU is lost")]


def test_cuda_visible_devices_limits_what_is_watched() -> None:
    nvml = FakeNVML([FakeGpu(temp=50), FakeGpu(temp=51), FakeGpu(temp=52)])
    monitor = GpuMonitor(nvml=nvml, environ={"CUDA_VISIBLE_DEVICES": "2"})
    assert [s.index for s in monitor.sample()] == [2]
    assert "handle 0" not in nvml.calls
    assert [s.index for s in GpuMonitor(nvml=nvml, environ={"CUDA_VISIBLE_DEVICES": "1,0,7"}).sample()] == [1, 0]


def test_visible_indices_follow_cuda_rules() -> None:
    assert visible_indices(None) is None
    assert visible_indices("") == []
    assert visible_indices("0") == [0]
    assert visible_indices(" 1, 3 ") == [1, 3]
    assert visible_indices("0,-1,2") == [0]
    assert visible_indices("-1") == []
    assert visible_indices("GPU-8f6c1a2e-0000-1111-2222-333344445555") is None


def test_unsupported_readings_are_absent_not_errors() -> None:
    gpu = FakeGpu(util=FakeNVMLError(NOT_SUPPORTED), temp=FakeNVMLError(NOT_SUPPORTED))
    [sample] = GpuMonitor(nvml=FakeNVML([gpu]), environ={}).sample()
    assert sample == GpuSample(0, 1 << 30, 16 << 30, None, None)
    assert gpu_health([sample], max_temperature=85) is None


def test_a_failing_gpu_is_an_error_sample_and_closes_the_gate() -> None:
    nvml = FakeNVML([FakeGpu(), FakeGpu(memory_error=FakeNVMLError(GPU_IS_LOST))])
    samples = GpuMonitor(nvml=nvml, environ={}).sample()
    assert samples[1] == GpuSample(1, error="GPU is lost")
    assert gpu_health(samples, max_temperature=None) == "GPU 1: NVML error (GPU is lost)"
    metrics = Metrics()
    metrics.gpu(samples)
    text = metrics.render().decode()
    assert 'spoold_gpu_memory_used_bytes{gpu="0"}' in text
    assert 'gpu="1"' not in text


def test_health_gate_on_temperature() -> None:
    cool, hot = GpuSample(0, 1, 2, 0.5, 70.0), GpuSample(1, 1, 2, 0.5, 91.0)
    assert gpu_health([], max_temperature=85) is None
    assert gpu_health([cool, hot], max_temperature=None) is None
    assert gpu_health([cool], max_temperature=85) is None
    assert gpu_health([cool, hot], max_temperature=85) == "GPU 1 at 91°C (limit 85°C)"
    assert gpu_health([GpuSample(0, 1, 2, 0.5, 85.0)], max_temperature=85) is None


def test_nvml_init_failure_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNVML(init_error=FakeNVMLError(9))
    with caplog.at_level(logging.INFO, logger="spoold.service.gpu"):
        monitor = GpuMonitor(nvml=nvml, environ={})
    assert not monitor.available and monitor.sample() == []
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_no_gpu_at_all_shuts_nvml_down() -> None:
    nvml = FakeNVML([])
    monitor = GpuMonitor(nvml=nvml, environ={})
    assert not monitor.available
    assert nvml.calls == ["init", "shutdown"]
    assert not GpuMonitor(nvml=FakeNVML([FakeGpu()]), environ={"CUDA_VISIBLE_DEVICES": ""}).available


def test_real_pynvml_degrades_quietly_without_a_driver(caplog: pytest.LogCaptureFixture) -> None:
    """Development and CI machines have pynvml but no NVIDIA driver: exactly one info line.
    On a GPU host the same test checks the real samples instead."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        has_driver = False
    else:
        pynvml.nvmlShutdown()
        has_driver = True
    with caplog.at_level(logging.DEBUG, logger="spoold.service.gpu"):
        monitor = GpuMonitor()
    if has_driver:
        samples = monitor.sample()
        assert monitor.available and samples and all(s.memory_total_bytes for s in samples if s.error is None)
        monitor.close()
        return
    assert not monitor.available
    assert monitor.sample() == []
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records] == [(logging.INFO, "GPU monitoring off")]
    metrics = Metrics()
    metrics.gpu(monitor.sample())
    assert b"spoold_gpu_" not in metrics.render()
    monitor.close()


def test_hot_gpu_pauses_the_daemon_until_it_cools(tmp_path: Path) -> None:
    """The health gate as the daemon loop sees it: a hot GPU means no new claims, and STATUS says why."""
    from spoold.config import Config
    from spoold.daemon.loop import Daemon
    from spoold.service.facade import Service
    from spoold.service.notify import Notifier
    from spoold.spool.layout import Spool

    gpu = FakeGpu(temp=91)
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"}, metrics={"listen": ""}, health={"max_gpu_temperature": 85})
    Spool(tmp_path).init()
    service = Service(config, Notifier(None), Metrics(), GpuMonitor(nvml=FakeNVML([gpu]), environ={}))
    daemon = Daemon(config, service=service)
    (tmp_path / "inbox" / "j.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "inbox" / "j.yaml").write_text("{}\n")
    assert daemon.tick(now=1000.0) is False and daemon.tick(now=1010.0) is False
    assert service.paused_reason is not None and "91" in service.paused_reason and "85" in service.paused_reason
    assert (tmp_path / "inbox" / "j.jsonl").exists(), "claimed while the GPU was too hot"
    assert 'spoold_paused{reason="gpu"} 1.0' in service.metrics.render().decode()
    gpu.temp = 60
    service._last_refresh = 0.0  # the next tick samples again
    assert daemon.tick(now=1020.0) is False  # first look at the inbox since the pause: settle starts
    assert service.paused_reason is None
    assert 'spoold_paused{reason="gpu"} 0.0' in service.metrics.render().decode()
    daemon.tick(now=1023.0)  # settled: claimed and started off the loop, then fed on later ticks
    for i in range(500):
        if (tmp_path / "done" / "j" / "batch.json").exists():
            break
        time.sleep(0.01)
        daemon.tick(now=1023.1 + i / 100)
    assert (tmp_path / "done" / "j" / "batch.json").exists()


def test_the_gpu_check_example_prints_readings_gate_and_gauges(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/gpu_check.py (run on a real H200 too, see the README) over a fake NVML with two GPUs."""
    import importlib.util
    from pathlib import Path

    import spoold.service.gpu

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[2] / "examples" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    nvml = FakeNVML([FakeGpu(), FakeGpu(temp=91)])
    monkeypatch.setattr(spoold.service.gpu, "_import_pynvml", lambda: nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "90"])
    assert check.main() == 0
    out = capsys.readouterr().out
    assert "health gate: GPU 1 at 91°C (limit 90°C)" in out
    assert 'spoold_gpu_temperature_celsius{gpu="1"} 91.0' in out and 'spoold_gpu_memory_total_bytes{gpu="0"}' in out
    monkeypatch.setattr(spoold.service.gpu, "_import_pynvml", lambda: None)
    assert check.main() == 1
