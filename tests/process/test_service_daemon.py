"""The real daemon as systemd and Prometheus see it: sd_notify sequence, watchdog, reload, /metrics."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from notify_listener import NotifyListener
from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_notify_sequence_watchdog_and_reload(tmp_path: Path) -> None:
    with NotifyListener() as listener, SpooldProcess(tmp_path, engine={"window": 1}) as d:
        d.start({**listener.env(watchdog_sec=1.0), "SPOOLD_ECHO_DELAY": "3"})
        ready = listener.wait_for(lambda m: m.get("READY") == "1", timeout=20)
        assert ready.pid == d.proc.pid
        assert "idle" in listener.wait_for(lambda m: "STATUS" in m)["STATUS"]
        time.sleep(1.5)
        idle_pings = [m.at for m in listener.messages_with("WATCHDOG") if m.get("WATCHDOG") == "1"]
        assert len(idle_pings) >= 2, "an idle daemon must keep pinging"
        assert max(b - a for a, b in zip(idle_pings, idle_pings[1:])) < 1.0

        # A blocked work loop (one engine step takes 3 s) must stop the pings.
        drop_job(d.inbox, "slow", [chat_line("a", "hi"), chat_line("b", "hi")], {"chunk_size": 1})
        status = listener.wait_for(lambda m: "chunk" in m.get("STATUS", ""), timeout=30)
        assert "slow" in status["STATUS"]
        d.wait_finished("slow", timeout=60)
        pings = [m.at for m in listener.messages_with("WATCHDOG") if m.get("WATCHDOG") == "1"]
        assert max(b - a for a, b in zip(pings, pings[1:])) >= 2.5, "pings continued while the loop was blocked"

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; a bad config keeps the old one.
        start = len(listener.messages)
        d.signal(signal.SIGHUP)
        reloading = listener.wait_for(lambda m: m.get("RELOADING") == "1", timeout=20, start=start)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        listener.wait_for(lambda m: m.get("READY") == "1", timeout=20, start=start)
        d.config_path.write_text("chunk_size: -5\n")
        start = len(listener.messages)
        d.signal(signal.SIGHUP)
        listener.wait_for(lambda m: m.get("READY") == "1", timeout=20, start=start)
        wait_for(lambda: "reload failed, keeping the running config" in d.log(), 10, what="reload error")
        drop_job(d.inbox, "after", [chat_line("a", "hi")], {})
        assert d.wait_finished("after", timeout=60).parent.name == "done"

        start = len(listener.messages)
        assert d.stop() == 0
        listener.wait_for(lambda m: m.get("STOPPING") == "1", timeout=10, start=start)


def test_metrics_endpoint_after_a_job(tmp_path: Path) -> None:
    port = _free_port()
    with SpooldProcess(tmp_path, metrics={"listen": f"127.0.0.1:{port}"}, handlers=[]) as d:
        drop_job(d.inbox, "m", [chat_line(f"r{i}", "one two three") for i in range(5)] + ["bad"], {"chunk_size": 2})
        d.start()
        d.wait_finished("m")

        def scrape() -> dict[str, float]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            values = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    values[f"{sample.name}{{{labels}}}"] = sample.value
            return values

        values = wait_for(lambda: (v := scrape()) and v.get("spoold_spool_jobs{state=done}") == 1 and v, 20, what="spool gauge")
        assert values["spoold_jobs_total{outcome=completed}"] == 1
        assert values["spoold_jobs_total{outcome=failed}"] == 0
        assert values["spoold_requests_total{outcome=succeeded}"] == 5
        assert values["spoold_requests_total{outcome=failed}"] == 1
        assert values["spoold_tokens_total{kind=prompt}"] == 15
        assert values["spoold_spool_jobs{state=inbox}"] == 0
        assert values["spoold_last_success_timestamp_seconds{}"] > time.time() - 120
        assert values["spoold_model_loaded{model=tiny-random}"] == 1
        assert values["spoold_job_duration_seconds_count{}"] == 1
        assert values["spoold_chunk_duration_seconds_count{}"] >= 3
        assert any(k.startswith("spoold_build_info{version=") for k in values)
        assert not any(k.startswith("spoold_gpu_") for k in values)  # no GPU here: absent, not zero
        assert d.stop() == 0


def test_node_id_and_metrics_port_from_the_template_environment(tmp_path: Path) -> None:
    base = _free_port()
    with SpooldProcess(tmp_path, metrics={"listen": f"127.0.0.1:{base}"}) as d:
        d.start({"SPOOLD_NODE_ID": "host-gpu1", "SPOOLD_METRICS_PORT_OFFSET": "1"})
        drop_job(d.inbox, "n", [chat_line("a", "hi")], {})
        job = d.wait_finished("n")
        assert d.batch(job)["spoold"]["node"] == "host-gpu1"
        body = wait_for(lambda: _get(f"http://127.0.0.1:{base + 1}/metrics"), 10, what="metrics on the offset port")
        assert "spoold_jobs_total" in body


def _get(url: str) -> str | None:
    try:
        return urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return None


def test_bad_config_fails_start_with_one_line(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path) as d:
        cfg = yaml.safe_load(d.config_path.read_text())
        cfg["watch"]["mode"] = "telepathy"
        d.config_path.write_text(yaml.safe_dump(cfg))
        d.start()
        assert d.proc is not None and d.proc.wait(timeout=30) != 0
        lines = [line for line in d.log().splitlines() if line.strip()]
        assert len(lines) == 1 and "watch.mode" in lines[0] and "Traceback" not in d.log()
