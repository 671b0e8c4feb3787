"""etc/prometheus/spoold-alerts.yml and etc/grafana/spoold-dashboard.json, checked by promtool (Debian's `prometheus` package).

promtool is required, not optional: .ci/run installs it, and these tests fail (never skip) without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from spoold.service.gpu import GpuSample
from spoold.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "etc" / "prometheus" / "spoold-alerts.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "spoold-alerts.test.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "spoold-dashboard.json"

SPEC_METRICS = [
    "spoold_jobs_total", "spoold_requests_total", "spoold_tokens_total", "spoold_spool_jobs",
    "spoold_oldest_inbox_job_timestamp_seconds", "spoold_last_success_timestamp_seconds",
    "spoold_chunk_duration_seconds", "spoold_job_duration_seconds", "spoold_handler_runs_total",
    "spoold_model_loaded", "spoold_model_load_seconds", "spoold_active_jobs", "spoold_requests_in_flight",
    "spoold_engine_idle_seconds_total", "spoold_gpu_memory_used_bytes", "spoold_gpu_memory_total_bytes",
    "spoold_gpu_utilization_ratio", "spoold_gpu_temperature_celsius", "spoold_build_info",
    "spoold_paused",  # spoold's addition (README, beside SPEC's list)
]  # fmt: skip


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: install Debian's `prometheus` package (.ci/run does when it is missing)"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])]
    for var in _dashboard()["templating"]["list"]:
        inner = re.fullmatch(r"label_values\((.+), *\w+\)", var["query"]["query"])
        assert inner, f"variable {var['name']}: expected label_values(SELECTOR, LABEL)"
        exprs.append(inner.group(1))
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what Grafana would put there."""
    return expr.replace("$__rate_interval", "5m").replace('"$job"', '"spoold"').replace('"$instance"', '".*"')


def _rules_file(exprs: list[str], path: Path) -> Path:
    rules = [{"record": f"spoold_dashboard:expr_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    return path


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


# ---- alerts -------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in _alert_rules()}
    assert alerts == firing, f"alerts without a firing test: {alerts - firing}"
    assert alerts <= quiet, f"alerts without a quiet test: {alerts - quiet}"
    wanted = {"SpooldDown", "SpooldNotScraped", "SpooldNoProgress", "SpooldEngineIdleWhileWorkWaits", "SpooldJobsFailing",
              "SpooldHandlerFailures", "SpooldGpuHot", "SpooldPausedDisk", "SpooldPausedGpu"}  # fmt: skip
    assert wanted <= alerts


def test_a_wrong_alert_expectation_fails(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expectation flipped does."""
    broken = ALERT_TESTS.read_text().replace("rule_files:\n  - ../../etc", f"rule_files:\n  - {ROOT}/etc")
    broken = broken.replace('instance: "gpu1:9464", reason: gpu}', 'instance: "gpu0:9464", reason: gpu}')
    (tmp_path / "broken.test.yml").write_text(broken)
    result = promtool("test", "rules", str(tmp_path / "broken.test.yml"))
    assert result.returncode != 0 and "SpooldPausedGpu" in result.stdout + result.stderr


# ---- dashboard ----------------------------------------------------------------------------------


def test_every_dashboard_expression_parses_with_promtool(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 25
    result = promtool("check", "rules", str(_rules_file(exprs, tmp_path / "dashboard.yml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(_rules_file(["sum by (le) (rate(spoold_jobs_total[5m])"], tmp_path / "bad.yml")))
    assert result.returncode != 0


def test_dashboard_shows_every_metric_and_only_real_ones() -> None:
    text = "\n".join(_dashboard_exprs())
    missing = [m for m in SPEC_METRICS if m not in text]
    assert not missing, f"metrics without a panel: {missing}"
    metrics = Metrics(version="0.0.0")
    metrics.gpu([GpuSample(0, 1, 2, 0.5, 50.0)])
    metrics.handlers_configured(["results-webhook"])
    metrics.model_loaded("tiny-random")
    served = {s.name for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    alert_text = "\n".join(r["expr"] for r in _alert_rules())
    for where, body in (("dashboard", text), ("alerts", alert_text)):
        unknown = sorted({n for n in re.findall(r"\bspoold_[a-z_]+\b", body)} - served)
        assert not unknown, f"{where} uses metrics spoold does not serve: {unknown}"


def test_dashboard_is_importable() -> None:
    dash = _dashboard()
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    panels = _panels(dash)
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for cx in range(g["x"], g["x"] + g["w"]):
            for cy in range(g["y"], g["y"] + g["h"]):
                assert (cx, cy) not in cells, f"{panel['title']} overlaps {cells[(cx, cy)]}"
                cells[(cx, cy)] = panel["title"]


@pytest.mark.parametrize("title", ["Queue by state", "Oldest waiting job", "Requests per second", "Tokens per second",
                                   "Engine idle share", "Chunk duration", "Job duration", "Model loads", "Handler runs per hour",
                                   "GPU memory used", "GPU utilisation", "GPU temperature", "Paused"])  # fmt: skip
def test_dashboard_has_the_panels_operators_look_for(title: str) -> None:
    assert title in {p["title"] for p in _panels(_dashboard())}
