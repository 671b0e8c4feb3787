"""Check on a GPU host what spoold reads from NVML: every visible GPU's memory, utilization and
temperature, the health gate (`health.max_gpu_temperature`) and the `spoold_gpu_*` gauges.

    python examples/gpu_check.py [MAX_TEMPERATURE_C]

Needs only nvidia-ml-py, pydantic and prometheus-client besides spoold (run from the repository root
or with spoold installed). Exit status 1 when no GPU can be read.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.getcwd())

from spoold.service.gpu import GpuMonitor, gpu_health  # noqa: E402
from spoold.service.metrics import Metrics  # noqa: E402


def main() -> int:
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else None
    monitor = GpuMonitor()
    if not monitor.available:
        print("no GPU readable through NVML (driver, nvidia-ml-py or CUDA_VISIBLE_DEVICES)")
        return 1
    samples = list(monitor.sample())
    for s in samples:
        print(s)
    print("health gate:", gpu_health(samples, limit) or f"healthy (limit {limit if limit is not None else 'none'})")
    metrics = Metrics()
    metrics.gpu(samples)
    print("\n".join(line for line in metrics.render().decode().splitlines() if line.startswith("spoold_gpu")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
