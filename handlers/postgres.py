"""`type: postgres`: one row per record of a finished job in a PostgreSQL table (psycopg 3; `spoold[postgres]`).

The whole job goes in one transaction: the records are streamed with COPY
into a temporary table, then moved with one `INSERT ... SELECT ... ON
CONFLICT (batch_id, custom_id) DO UPDATE`. A retry, or a repeat after a
`kill -9` (the server rolls back a transaction whose connection died),
leaves exactly one row per record. Memory stays flat whatever the job's size:
the files are read line by line and COPY sends rows as they come
(benchmarks/postgres_load.py measured it against executemany in batches).

The connection string comes from `dsn_file` or libpq's environment
(PGHOST, PGUSER, PGPASSFILE, ...); it is never logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spoold.handlers.base import Handler, HandlerError, HandlerEvent, PermanentHandlerError, import_extra, read_secret_file
from spoold.handlers.config import PostgresConfig
from spoold.handlers.result_lines import error_of, finished_at, iter_records, response_body, status_code, usage_tokens

COLUMNS = (
    "batch_id",
    "job",
    "custom_id",
    "status_code",
    "response",
    "error",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "finished_at",
)
CREATE_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    batch_id text NOT NULL,
    job text NOT NULL,
    custom_id text NOT NULL,
    status_code integer,
    response jsonb,
    error jsonb,
    model text,
    prompt_tokens integer,
    completion_tokens integer,
    total_tokens integer,
    finished_at timestamptz,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, custom_id)
)"""
STAGE = "spoold_stage"
PERMANENT_SQLSTATE_CLASSES = ("28", "3D", "42", "22", "23")
"""Bad password or role, no such database, undefined table or column / no privilege, bad data, constraint: retrying cannot help."""
_CONNECT_PERMANENT = ("password authentication failed", "no password supplied", "does not exist", "role ", "pg_hba.conf")


class PostgresHandler(Handler):
    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(config.settings.model_dump(mode="json"))
        self.config = config
        self._psycopg = import_extra("psycopg", "postgres")
        self._dsn = read_dsn(config.settings.dsn_file)

    def handle(self, event: HandlerEvent) -> None:
        psycopg = self._psycopg
        s = self.config.settings
        try:
            connection = psycopg.connect(
                self._dsn,
                connect_timeout=max(1, int(s.connect_timeout)),
                application_name=f"spoold:{event.handler}",
                options=f"-c statement_timeout={int(s.statement_timeout * 1000)}",
            )
        except psycopg.Error as exc:
            raise connect_failure(exc) from None
        try:
            with connection:  # commits on success, rolls back on any exception
                load_job(connection, event, s.table, create_table=s.create_table)
        except psycopg.Error as exc:
            raise sql_failure(exc) from None
        finally:
            connection.close()


def load_job(connection: Any, event: HandlerEvent, table: str, *, create_table: bool) -> int:
    """COPY the job's records into a temp table, then upsert them into `table`; the caller's transaction. Returns rows copied."""
    columns = ", ".join(COLUMNS)
    with connection.cursor() as cur:
        if create_table:
            cur.execute(CREATE_TABLE.format(table=table))
        cur.execute(
            f"CREATE TEMP TABLE {STAGE} (seq bigint NOT NULL, batch_id text, job text, custom_id text, status_code integer,"
            " response jsonb, error jsonb, model text, prompt_tokens integer, completion_tokens integer, total_tokens integer,"
            " finished_at timestamptz) ON COMMIT DROP"
        )
        copied = 0
        with cur.copy(f"COPY {STAGE} (seq, {columns}) FROM STDIN") as copy:
            for copied, row in enumerate(job_rows(event), 1):
                copy.write_row((copied, *row))  # psycopg sends its buffer to the server as it fills: nothing piles up here
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[3:])
        # DISTINCT ON: a custom_id twice in one job (a duplicate line's error) keeps its last record, the output one.
        cur.execute(
            f"INSERT INTO {table} ({columns}) SELECT DISTINCT ON (custom_id) {columns} FROM {STAGE}"
            f" ORDER BY custom_id, seq DESC ON CONFLICT (batch_id, custom_id) DO UPDATE SET {updates}"
        )
    return copied


def job_rows(event: HandlerEvent) -> Iterator[tuple[Any, ...]]:
    """One row per record: errors first, then outputs, so an output wins over an error with the same custom_id."""
    batch_id = str(event.batch.get("id") or event.job)
    ended = finished_at(event.batch)
    ended_at = datetime.fromtimestamp(ended, UTC) if ended is not None else None
    default_model = event.batch.get("model")
    for path in (event.errors, event.output):
        for record in iter_records(path):
            yield record_row(batch_id, event.job, record, ended_at, default_model)


def record_row(batch_id: str, job: str, record: dict[str, Any], ended_at: datetime | None, default_model: Any) -> tuple[Any, ...]:
    body = response_body(record)
    error = error_of(record)
    prompt, completion, total = usage_tokens(body)
    model = (body or {}).get("model") or default_model
    return (
        batch_id,
        job,
        str(record.get("custom_id", "")),
        status_code(record),
        json.dumps(body, ensure_ascii=False) if body is not None else None,
        json.dumps(error, ensure_ascii=False) if error is not None else None,
        str(model) if model is not None else None,
        prompt,
        completion,
        total,
        ended_at,
    )


def read_dsn(path: Path | None) -> str:
    """The connection string from `dsn_file`, or "" (libpq's environment); ValueError naming only the file."""
    if path is None:
        return ""
    return read_secret_file(path, "dsn_file")


def connect_failure(exc: Exception) -> HandlerError:
    """A refused login or a missing database is permanent; a server that is down or restarting is retried."""
    message = _one_line(exc)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate[:2] in ("28", "3D") or any(mark in message for mark in _CONNECT_PERMANENT):
        return PermanentHandlerError(f"cannot log in to PostgreSQL: {message}")
    return HandlerError(f"cannot connect to PostgreSQL: {message}")


def sql_failure(exc: Exception) -> HandlerError:
    message = _one_line(exc)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate == "42P01":
        return PermanentHandlerError(f"{message} (create it, or set create_table: true)")
    if sqlstate == "42P10":
        return PermanentHandlerError(f"{message} (the table needs a unique key on (batch_id, custom_id))")
    if sqlstate[:2] in PERMANENT_SQLSTATE_CLASSES:
        return PermanentHandlerError(f"PostgreSQL refused the rows: {message}")
    return HandlerError(f"PostgreSQL: {message}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
