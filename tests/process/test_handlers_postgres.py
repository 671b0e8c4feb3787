"""`type: postgres` against a throwaway PostgreSQL cluster: one row per record, once, across kill -9 and repeats."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spoold.handlers.base import PermanentHandlerError
from spoold.handlers.registry import build_handler

from handler_helpers import event_for, handler_config, make_dispatcher, make_job, read_batch  # noqa: F401 (fixture)
from servers import PostgresServer, free_port
from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for


def _dsn_file(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "pg.dsn"
    path.write_text(dsn + "\n")
    path.chmod(0o600)
    return path


def _settings(tmp_path: Path, pg: PostgresServer, table: str, **extra: object) -> dict:
    return {"dsn_file": str(_dsn_file(tmp_path, extra.pop("dsn", pg.dsn()))), "table": table, "create_table": True, **extra}


def _rows(pg: PostgresServer, sql: str) -> list[tuple]:
    with psycopg.connect(pg.dsn()) as conn:
        return conn.execute(sql).fetchall()


def test_rows_once_with_the_documented_columns_and_a_repeat_changes_nothing(postgres_server: PostgresServer, tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path / "spool", "pgjob")
    out = {"id": "r3", "custom_id": "b", "response": {"status_code": 200, "body": {"model": "m1", "choices": [{"message": {"content": "ok"}}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}}, "error": None}  # fmt: skip
    with open(job_dir / "output.jsonl", "a") as fh:  # "b" also has an error record (a duplicate line): the output wins
        fh.write(json.dumps(out) + "\n")
    handler = build_handler(handler_config(name="db", type="postgres", settings=_settings(tmp_path, postgres_server, "results_a")))
    for attempt in (1, 2):
        handler.handle(event_for(job_dir, batch, "db", attempt))
    rows = _rows(postgres_server, "SELECT batch_id, job, custom_id, status_code, response, error, model, prompt_tokens, completion_tokens,"
                                  " total_tokens, extract(epoch from finished_at) FROM results_a ORDER BY custom_id")  # fmt: skip
    assert [r[2] for r in rows] == ["a", "b"]
    a, b = rows
    assert a[:4] == ("batch_pgjob", "pgjob", "a", 200) and a[4] == {"choices": [{"text": "hi"}]} and a[5] is None
    assert a[6] == "tiny-random" and a[10] == 1_700_000_100  # the batch's model; completed_at
    assert b[3:10] == (200, out["response"]["body"], None, "m1", 3, 2, 5)


def test_a_missing_table_without_create_table_fails_at_once_with_a_hint(postgres_server: PostgresServer, tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path / "spool", "notable")
    settings = _settings(tmp_path, postgres_server, "no_such_table", create_table=False)
    with pytest.raises(PermanentHandlerError, match="create_table: true"):
        build_handler(handler_config(name="db", type="postgres", settings=settings)).handle(event_for(job_dir, batch, "db"))


def test_a_wrong_password_is_a_permanent_failure(postgres_server: PostgresServer, tmp_path: Path, make_dispatcher) -> None:
    job_dir, batch = make_job(tmp_path / "spool", "badpw")
    bad = postgres_server.dsn(password="not-the-password")
    outcomes: list[tuple[str, str]] = []
    config = handler_config(name="db", type="postgres", settings=_settings(tmp_path, postgres_server, "results_b", dsn=bad))
    dispatcher = make_dispatcher([config], on_outcome=lambda n, o: outcomes.append((n, o)))
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(30)
    run = read_batch(job_dir)["spoold"]["handlers"]["db"]
    assert run["status"] == "failed" and run["attempts"] == 1
    assert "password authentication failed" in run["last_error"] and "not-the-password" not in run["last_error"]
    assert outcomes == [("db", "failed")]


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def test_a_100k_record_job_lands_once_across_a_kill_mid_insert(postgres_server: PostgresServer, tmp_path: Path) -> None:
    n = 100_000
    port = free_port()
    handlers = [{"name": "results-db", "type": "postgres", "on": ["completed"], "settings": _settings(tmp_path, postgres_server, "results_big"),
                 "retry": {"initial_backoff": 0.2, "max_backoff": 0.5, "jitter": 0.0}}]  # fmt: skip
    with SpooldProcess(tmp_path, handlers=handlers, chunk_size=5000, metrics={"listen": f"127.0.0.1:{port}"}) as d:
        drop_job(d.inbox, "big", [chat_line(f"r{i}", "one two") for i in range(n)], {})
        d.start()
        job = d.wait_finished("big", timeout=240)

        def loading() -> bool:
            states = _rows(postgres_server, "SELECT state FROM pg_stat_activity WHERE application_name = 'spoold:results-db'")
            return any(state == "active" for (state,) in states)

        wait_for(loading, 60, interval=0.01, what="the handler's COPY to be under way")
        d.kill()  # kill -9 mid-insert: the server rolls the job's transaction back
        wait_for(lambda: not _rows(postgres_server, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'spoold:results-db'"), 30,
                 what="the dead connection's backend to end")  # fmt: skip
        assert _rows(postgres_server, "SELECT to_regclass('results_big')") == [(None,)]  # even its CREATE TABLE was rolled back
        assert d.batch(job)["spoold"]["handlers"]["results-db"]["status"] in ("pending", "retrying")
        d.start()
        wait_for(
            lambda: d.batch(job)["spoold"].get("handlers", {}).get("results-db", {}).get("status") == "ok",
            120,
            what="the load after restart",
        )
        assert _rows(postgres_server, "SELECT count(*), count(DISTINCT custom_id) FROM results_big") == [(n, n)]
        assert d.batch(job)["spoold"]["handlers"]["results-db"]["attempts"] == 2
        values = wait_for(
            lambda: (v := _scrape(port)) and "spoold_handler_runs_total{handler=results-db,outcome=ok}" in v and v, 20, what="metrics"
        )
        assert values["spoold_handler_runs_total{handler=results-db,outcome=ok}"] == 1
        assert postgres_server.PASSWORD not in d.log()
        assert d.stop() == 0
