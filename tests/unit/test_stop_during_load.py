"""SIGTERM while a model loads: the daemon asks systemd for more time (EXTEND_TIMEOUT_USEC=), then stops cleanly."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from spoold.config import Config
from spoold.daemon.loop import Daemon
from spoold.engine.echo import EchoEngine
from spoold.service.facade import Service
from spoold.service.gpu import GpuMonitor
from spoold.service.metrics import Metrics
from spoold.service.notify import Notifier
from spoold.spool.layout import Spool

from notify_listener import NotifyListener


class _NoNVML:
    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None:
        raise self.NVMLError("no driver")


def test_sigterm_during_a_model_load_extends_the_stop_timeout(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("spoold.service.facade.STOP_EXTENSION_SECONDS", 0.6)
    config = Config(spool_dir=tmp_path, engine={"backend": "echo"}, metrics={"listen": ""},
                    watch={"settle_seconds": 0.0, "poll_interval": 0.1})  # fmt: skip
    Spool(tmp_path).init()
    (tmp_path / "inbox" / "j.jsonl").write_text('{"prompt": "hi"}\n{"prompt": "there"}\n')
    (tmp_path / "inbox" / "j.yaml").write_text("{}\n")
    with NotifyListener() as listener:
        service = Service(config, Notifier(listener.path), Metrics(), GpuMonitor(nvml=_NoNVML(), environ={}))
        loads: list[float] = []

        def slow_loader(cfg: Config, profile: Any) -> EchoEngine:
            daemon._on_stop(signal.SIGTERM, None)  # systemctl stop arrives while the model loads
            loads.append(time.monotonic())
            time.sleep(1.0)  # the load goes on: vLLM cannot be interrupted half-way
            return EchoEngine(profile.name)

        daemon = Daemon(config, loader=slow_loader, service=service)
        assert daemon.run() == 0
        extends = listener.wait_for(lambda m: "EXTEND_TIMEOUT_USEC" in m, timeout=5)
        stopping = listener.wait_for(lambda m: "STOPPING" in m, timeout=5)
    assert extends["EXTEND_TIMEOUT_USEC"] == "600000"
    assert loads and extends.at - loads[0] < 0.5  # asked for at once, not after the load
    assert stopping.at > extends.at
    assert len(listener.messages_with("EXTEND_TIMEOUT_USEC")) >= 3  # kept alive through the 1 s load
    assert (tmp_path / "processing" / "j").is_dir() and not (tmp_path / "done" / "j").exists()  # resumes on the next start
