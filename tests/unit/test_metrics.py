"""spoold.service.metrics scraped over real HTTP and parsed by prometheus_client's own parser."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spoold.errors import ConfigError, SpooldError
from spoold.service.gpu import GpuSample
from spoold.service.metrics import Metrics, count_spool, effective_listen, parse_listen

SPEC_FAMILIES = {  # SPEC section 8, without the GPU gauges: name (as parsed) -> type
    "spoold_jobs": "counter",
    "spoold_requests": "counter",
    "spoold_tokens": "counter",
    "spoold_spool_jobs": "gauge",
    "spoold_oldest_inbox_job_timestamp_seconds": "gauge",
    "spoold_last_success_timestamp_seconds": "gauge",
    "spoold_chunk_duration_seconds": "histogram",
    "spoold_job_duration_seconds": "histogram",
    "spoold_handler_runs": "counter",
    "spoold_model_loaded": "gauge",
    "spoold_model_load_seconds": "histogram",
    "spoold_active_jobs": "gauge",
    "spoold_requests_in_flight": "gauge",
    "spoold_engine_idle_seconds": "counter",
    "spoold_build_info": "gauge",
    "spoold_paused": "gauge",  # spoold's addition beside SPEC section 8 (README)
    "spoold_pruned_jobs": "counter",  # spoold's own addition (README), beside SPEC section 8's
    "spoold_model_requests": "counter",  # spoold's addition: requests by model, a LoRA adapter as itself (docs/monitoring.md)
}
GPU_FAMILIES = {
    "spoold_gpu_memory_used_bytes",
    "spoold_gpu_memory_total_bytes",
    "spoold_gpu_utilization_ratio",
    "spoold_gpu_temperature_celsius",
}


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(version="0.1.0")
    yield m
    m.stop_server()


Samples = dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def scrape(metrics: Metrics, types: dict[str, str] | None = None) -> Samples:
    """{family: {(sample name, sorted labels): value}} from the live endpoint; fills `types`."""
    address = metrics.server_address
    assert address is not None
    host, port = address
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        if types is not None:
            types[family.name] = family.type
    return out


def value(data: Samples, family: str, sample: str, **labels: str) -> float:
    return data[family][(sample, tuple(sorted(labels.items())))]


def test_every_spec_metric_is_served_with_zeroed_labels(metrics: Metrics) -> None:
    host, port = metrics.start_server("127.0.0.1:0")  # type: ignore[misc]
    assert host == "127.0.0.1" and port > 0
    types: dict[str, str] = {}
    data = scrape(metrics, types)
    assert types == SPEC_FAMILIES  # exactly these: no *_created, no GPU gauges without samples
    for outcome in ("completed", "failed", "cancelled"):
        assert value(data, "spoold_jobs", "spoold_jobs_total", outcome=outcome) == 0
    for state in ("done", "failed"):
        assert value(data, "spoold_pruned_jobs", "spoold_pruned_jobs_total", state=state) == 0
    for outcome in ("succeeded", "failed"):
        assert value(data, "spoold_requests", "spoold_requests_total", outcome=outcome) == 0
    for kind in ("prompt", "completion"):
        assert value(data, "spoold_tokens", "spoold_tokens_total", kind=kind) == 0
    for state in ("inbox", "processing", "done", "failed"):
        assert value(data, "spoold_spool_jobs", "spoold_spool_jobs", state=state) == 0
    assert value(data, "spoold_build_info", "spoold_build_info", version="0.1.0") == 1
    for reason in ("disk", "gpu"):
        assert value(data, "spoold_paused", "spoold_paused", reason=reason) == 0
    assert value(data, "spoold_job_duration_seconds", "spoold_job_duration_seconds_count") == 0


def test_counters_after_a_job(metrics: Metrics) -> None:
    metrics.start_server("127.0.0.1:0")
    metrics.handlers_configured(["results-webhook"])
    metrics.model_loaded("qwen3-4b")
    metrics.model_load_seconds(42.0)
    metrics.chunk_done(3.5)
    metrics.chunk_done(4.0)
    metrics.requests(succeeded=9, failed=1)
    metrics.tokens(prompt=120, completion=340)
    before = time.time()
    metrics.job_finished("completed", 8.0)
    metrics.handler_run("results-webhook", "failed")
    metrics.handler_run("results-webhook", "ok")
    metrics.job_finished("failed", 0.5)
    metrics.model_loaded("tiny-random")
    data = scrape(metrics)
    assert value(data, "spoold_jobs", "spoold_jobs_total", outcome="completed") == 1
    assert value(data, "spoold_jobs", "spoold_jobs_total", outcome="failed") == 1
    assert value(data, "spoold_jobs", "spoold_jobs_total", outcome="cancelled") == 0
    assert value(data, "spoold_requests", "spoold_requests_total", outcome="succeeded") == 9
    assert value(data, "spoold_requests", "spoold_requests_total", outcome="failed") == 1
    assert value(data, "spoold_tokens", "spoold_tokens_total", kind="prompt") == 120
    assert value(data, "spoold_tokens", "spoold_tokens_total", kind="completion") == 340
    assert value(data, "spoold_chunk_duration_seconds", "spoold_chunk_duration_seconds_count") == 2
    assert value(data, "spoold_chunk_duration_seconds", "spoold_chunk_duration_seconds_sum") == 7.5
    assert value(data, "spoold_job_duration_seconds", "spoold_job_duration_seconds_count") == 2
    assert value(data, "spoold_model_load_seconds", "spoold_model_load_seconds_count") == 1
    runs = "spoold_handler_runs"
    assert value(data, runs, "spoold_handler_runs_total", handler="results-webhook", outcome="ok") == 1
    assert value(data, runs, "spoold_handler_runs_total", handler="results-webhook", outcome="failed") == 1
    assert value(data, "spoold_model_loaded", "spoold_model_loaded", model="tiny-random") == 1
    assert value(data, "spoold_model_loaded", "spoold_model_loaded", model="qwen3-4b") == 0
    last = value(data, "spoold_last_success_timestamp_seconds", "spoold_last_success_timestamp_seconds")
    assert before <= last <= time.time()
    with pytest.raises(ValueError):
        metrics.job_finished("exploded", 1.0)


def test_gpu_gauges_follow_the_samples(metrics: Metrics) -> None:
    metrics.start_server("127.0.0.1:0")
    metrics.gpu([])
    assert not GPU_FAMILIES & set(scrape(metrics))
    metrics.gpu(
        [
            GpuSample(0, 2_000, 8_000, 0.25, 61.0),
            GpuSample(1, 1_000, 8_000, None, None),
            GpuSample(2, error="GPU is lost"),
        ]
    )
    data = scrape(metrics)
    assert value(data, "spoold_gpu_memory_used_bytes", "spoold_gpu_memory_used_bytes", gpu="0") == 2_000
    assert value(data, "spoold_gpu_memory_total_bytes", "spoold_gpu_memory_total_bytes", gpu="1") == 8_000
    assert value(data, "spoold_gpu_utilization_ratio", "spoold_gpu_utilization_ratio", gpu="0") == 0.25
    assert value(data, "spoold_gpu_temperature_celsius", "spoold_gpu_temperature_celsius", gpu="0") == 61
    assert ("spoold_gpu_temperature_celsius", (("gpu", "1"),)) not in data["spoold_gpu_temperature_celsius"]
    assert all(("gpu", "2") not in labels for _, labels in data["spoold_gpu_memory_used_bytes"])
    metrics.gpu([GpuSample(1, 5, 8, 0.5, 40.0)])
    data = scrape(metrics)
    assert set(data["spoold_gpu_memory_used_bytes"]) == {("spoold_gpu_memory_used_bytes", (("gpu", "1"),))}


def _touch(path: Path, mtime: float | None = None, directory: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        path.mkdir()
    else:
        path.write_text("{}\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_count_spool_sees_what_is_on_disk(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert count_spool(spool) == ({"inbox": 0, "processing": 0, "done": 0, "failed": 0}, None)
    _touch(spool / "inbox" / "a.jsonl", mtime=1_700_000_100)
    _touch(spool / "inbox" / "a.yaml")
    _touch(spool / "inbox" / "b.jsonl", mtime=1_700_000_000)
    for ignored in (".b.jsonl.Xa3f", ".c.jsonl", "d.jsonl.part", "e.jsonl.tmp", "f.jsonl~", "g.txt"):
        _touch(spool / "inbox" / ignored, mtime=1_600_000_000)
    _touch(spool / "inbox" / "dir.jsonl", directory=True)
    (spool / "inbox" / "link.jsonl").symlink_to(spool / "inbox" / "a.jsonl")
    _touch(spool / "processing" / "job1", directory=True)
    _touch(spool / "processing" / ".claim-job2", directory=True)
    for name in ("x", "x.2", "y"):
        _touch(spool / "done" / name, directory=True)
    _touch(spool / "failed" / "z", directory=True)
    _touch(spool / "failed" / "stray-file")
    _touch(spool / "done" / ".prune-temp", directory=True)
    counts, oldest = count_spool(spool)
    # done/ failed/ processing/ are counted by name alone (no per-job stat): a stray file counts too.
    assert counts == {"inbox": 2, "processing": 1, "done": 3, "failed": 2}
    assert oldest == 1_700_000_000


def test_update_spool_sets_gauges_and_survives_an_unreadable_spool(
    metrics: Metrics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _touch(tmp_path / "inbox" / "a.jsonl", mtime=1_700_000_000)
    _touch(tmp_path / "done" / "old", directory=True)
    assert metrics.update_spool(tmp_path)
    metrics.start_server("127.0.0.1:0")
    data = scrape(metrics)
    assert value(data, "spoold_spool_jobs", "spoold_spool_jobs", state="inbox") == 1
    assert value(data, "spoold_spool_jobs", "spoold_spool_jobs", state="done") == 1
    oldest = "spoold_oldest_inbox_job_timestamp_seconds"
    assert value(data, oldest, oldest) == 1_700_000_000
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert not metrics.update_spool(not_a_dir)  # NotADirectoryError: an OSError, not a crash
    assert not metrics.update_spool(not_a_dir)
    assert len([r for r in caplog.records if "cannot count jobs" in r.getMessage()]) == 1
    assert value(scrape(metrics), "spoold_spool_jobs", "spoold_spool_jobs", state="inbox") == 1


def test_listen_addresses(metrics: Metrics) -> None:
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("9464", "::1:9464", "host:port", "host:70000", "[::1]9464"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert metrics.start_server("") is None
    assert metrics.server_address is None


def test_ipv6_endpoint(metrics: Metrics) -> None:
    """Serves on [::1]; where the host has no IPv6 loopback, says so in one readable error."""
    try:
        bound = metrics.start_server("[::1]:0")
    except SpooldError as exc:
        assert not socket.has_ipv6 or "cannot serve metrics on [::1]:0" in str(exc)
        return
    assert bound is not None and bound[0] == "::1"
    assert "spoold_jobs" in scrape(metrics)


def test_port_in_use_is_one_readable_error(metrics: Metrics) -> None:
    _, port = metrics.start_server("127.0.0.1:0")  # type: ignore[misc]
    other = Metrics()
    with pytest.raises(SpooldError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        other.start_server(f"127.0.0.1:{port}")


def test_restart_on_another_address(metrics: Metrics) -> None:
    _, first = metrics.start_server("127.0.0.1:0")  # type: ignore[misc]
    _, second = metrics.start_server("127.0.0.1:0")  # type: ignore[misc]
    assert first != second
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=2)
    metrics.stop_server()
    metrics.stop_server()


def test_per_instance_listen_overrides() -> None:
    assert effective_listen("127.0.0.1:9464", {}) == "127.0.0.1:9464"
    assert effective_listen("127.0.0.1:9464", {"SPOOLD_METRICS_PORT_OFFSET": "3"}) == "127.0.0.1:9467"
    assert effective_listen("[::1]:9464", {"SPOOLD_METRICS_PORT_OFFSET": "1"}) == "[::1]:9465"
    assert effective_listen("", {"SPOOLD_METRICS_PORT_OFFSET": "1"}) == ""
    env = {"SPOOLD_METRICS_LISTEN": "0.0.0.0:9500", "SPOOLD_METRICS_PORT_OFFSET": "2"}
    assert effective_listen("127.0.0.1:9464", env) == "0.0.0.0:9502"
    with pytest.raises(ConfigError):
        effective_listen("127.0.0.1:9464", {"SPOOLD_METRICS_PORT_OFFSET": "gpu0"})
    with pytest.raises(ConfigError):
        effective_listen("127.0.0.1:65535", {"SPOOLD_METRICS_PORT_OFFSET": "1"})


def test_two_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()
    a.job_finished("completed", 1.0)
    assert b'spoold_jobs_total{outcome="completed"} 1.0' in a.render()
    assert b'spoold_jobs_total{outcome="completed"} 0.0' in b.render()


def test_relisten_on_reload_keeps_serving_when_the_new_address_fails(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    busy = Metrics()
    _, busy_port = busy.start_server("127.0.0.1:0")  # type: ignore[misc]
    try:
        metrics.start_server("127.0.0.1:0")
        metrics.relisten(f"127.0.0.1:{busy_port}")
        assert metrics.server_address is not None and metrics.server_address[1] != busy_port
        assert "spoold_jobs" in scrape(metrics)
        assert any("metrics stay on 127.0.0.1:0" in r.getMessage() for r in caplog.records)
        metrics.relisten("not an address")
        assert "spoold_jobs" in scrape(metrics)
        metrics.relisten("")
        assert metrics.server_address is None
    finally:
        busy.stop_server()
