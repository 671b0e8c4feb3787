"""The store handlers through the real daemon: outcomes in batch.json and spoold_handler_runs_total; a missing extra refused."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from servers import LabelStudioServer, MotoServer, PostgresServer, free_port
from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_s3_postgres_and_label_studio_after_a_job(
    tmp_path: Path, moto_server: MotoServer, postgres_server: PostgresServer, label_studio_server: LabelStudioServer
) -> None:
    moto_server.client().create_bucket(Bucket="daemon")
    project = label_studio_server.new_project("spoold daemon")
    (tmp_path / "aws").write_text(
        f"[default]\naws_access_key_id = {MotoServer.ACCESS_KEY}\naws_secret_access_key = {MotoServer.SECRET_KEY}\n"
    )
    (tmp_path / "pg.dsn").write_text(postgres_server.dsn())
    (tmp_path / "bad.dsn").write_text(postgres_server.dsn(password="wrong-password"))
    (tmp_path / "ls.token").write_text(label_studio_server.TOKEN)
    on = ["completed"]
    handlers = [
        {"name": "archive", "type": "s3", "on": on, "settings": {"bucket": "daemon", "prefix": "jobs/", "endpoint_url": moto_server.url,
                                                                  "region": "us-east-1", "credentials_file": str(tmp_path / "aws")}},
        {"name": "results-db", "type": "postgres", "on": on, "settings": {"dsn_file": str(tmp_path / "pg.dsn"), "table": "daemon_results", "create_table": True}},
        {"name": "bad-db", "type": "postgres", "on": on, "settings": {"dsn_file": str(tmp_path / "bad.dsn"), "create_table": True}},
        {"name": "review", "type": "label_studio", "on": on, "settings": {"url": label_studio_server.url, "token_file": str(tmp_path / "ls.token"),
                                                                           "project_id": project}},
    ]  # fmt: skip
    port = free_port()
    with SpooldProcess(tmp_path, handlers=handlers, metrics={"listen": f"127.0.0.1:{port}"}) as d:
        d.start()
        drop_job(d.inbox, "stores", [chat_line(f"q{i}", f"hello {i}") for i in range(5)], {})
        job = d.wait_finished("stores")
        expected = {"archive": "ok", "results-db": "ok", "bad-db": "failed", "review": "ok"}
        wait_for(
            lambda: {k: v["status"] for k, v in d.batch(job)["spoold"].get("handlers", {}).items()} == expected, 60, what="all four runs"
        )
        values = wait_for(
            lambda: (v := _metrics(port)) and v.get("spoold_handler_runs_total{handler=review,outcome=ok}") and v, 20, what="metrics"
        )
        for name, outcome in expected.items():
            assert values[f"spoold_handler_runs_total{{handler={name},outcome={outcome}}}"] == 1
        keys = sorted(o["Key"] for o in moto_server.client().list_objects_v2(Bucket="daemon")["Contents"])
        assert keys == ["jobs/stores/batch.json", "jobs/stores/errors.jsonl", "jobs/stores/output.jsonl"]
        assert len(list(label_studio_server.client().tasks.list(project=project, page_size=100))) == 5
        import psycopg

        with psycopg.connect(postgres_server.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM daemon_results").fetchone() == (5,)
        log = d.log()
        for secret in (MotoServer.SECRET_KEY, postgres_server.PASSWORD, "wrong-password", label_studio_server.TOKEN):
            assert secret not in log and secret not in (job / "batch.json").read_text()
        assert d.stop() == 0


def test_a_missing_extra_is_refused_at_start_and_on_reload(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['psycopg'] = None  # as if spoold[postgres] were not installed\n")
    env = {"PYTHONPATH": f"{blocker}:{Path.cwd()}"}
    pg = {"name": "results-db", "type": "postgres", "on": ["completed"], "settings": {"table": "t"}}
    with SpooldProcess(tmp_path / "start", handlers=[pg]) as d:
        d.start(env)
        assert d.proc is not None and d.proc.wait(timeout=60) != 0
        lines = [line for line in d.log().splitlines() if "spoold[postgres]" in line]
        assert lines == ["spoold run: handler results-db (postgres): needs the Python package psycopg, which is not installed"
                         " (import of psycopg halted; None in sys.modules): pip install 'spoold[postgres]'"]  # fmt: skip
    with SpooldProcess(tmp_path / "reload", handlers=[]) as d:
        d.start(env)
        wait_for(lambda: "spoold ready on" in d.log(), 30, what="the daemon to start")
        d.config["handlers"] = [pg]
        d.config_path.write_text(yaml.safe_dump(d.config))
        wait_for(d.catches_sigterm, 30, what="signal handlers")
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in d.log(), 30, what="the refused reload")
        line = next(line for line in d.log().splitlines() if "reload failed" in line)
        assert line.endswith("keeping the running config: handler results-db (postgres): needs the Python package psycopg, which is not installed"
                             " (import of psycopg halted; None in sys.modules): pip install 'spoold[postgres]'")  # fmt: skip
        assert d.proc is not None and d.proc.poll() is None
        assert d.stop() == 0
