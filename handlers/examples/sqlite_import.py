"""Example `type: python` handler: import a finished job's results into a SQLite table.

Configure it in spoold.yaml:

    handlers:
      - name: results-db
        type: python
        class: spoold.handlers.examples.sqlite_import:SQLiteImporter
        on: [completed, cancelled]
        settings:
          database: /var/lib/spoold/results.sqlite
          table: results            # optional, default "results"

Each output or error line becomes one row keyed by (batch_id, custom_id).
The whole job goes in one transaction with INSERT OR REPLACE, so a retry
or a repeat after a restart leaves the same rows: the handler is idempotent,
as every handler should be. It raises on failure (an sqlite3 or OS error);
spoold then retries it with backoff.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from spoold.handlers.base import Handler, HandlerEvent, PermanentHandlerError

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SQLiteImporter(Handler):
    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        if "database" not in settings:
            raise ValueError("settings.database (path of the SQLite file) is required")
        self.database = Path(str(settings["database"]))
        self.table = str(settings.get("table", "results"))
        if not _TABLE_NAME.match(self.table):
            raise ValueError(f"settings.table {self.table!r} is not a plain SQL identifier")

    def handle(self, event: HandlerEvent) -> None:
        batch_id = str(event.batch.get("id", event.job))
        rows = [_row(batch_id, event.job, record) for path in (event.output, event.errors) for record in _records(path)]
        # timeout: wait for a lock held by a reader instead of failing at once.
        connection = sqlite3.connect(self.database, timeout=30)
        try:
            with connection:  # one transaction: all rows of the job or none
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} ("
                    " batch_id TEXT NOT NULL, job TEXT NOT NULL, custom_id TEXT NOT NULL,"
                    " status_code INTEGER, content TEXT, error TEXT, record TEXT NOT NULL,"
                    " PRIMARY KEY (batch_id, custom_id))"
                )
                connection.executemany(
                    f"INSERT OR REPLACE INTO {self.table}"
                    " (batch_id, job, custom_id, status_code, content, error, record)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        finally:
            connection.close()


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a results file; a missing file has none."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise PermanentHandlerError(f"{path.name} line {number} is not JSON") from None
            if isinstance(record, dict):
                yield record


def _row(batch_id: str, job: str, record: dict[str, Any]) -> tuple[Any, ...]:
    response = record.get("response") or {}
    body = response.get("body") or {}
    error = record.get("error")
    return (
        batch_id,
        job,
        str(record.get("custom_id", "")),
        response.get("status_code"),
        _content(body),
        error.get("message") if isinstance(error, dict) else None,
        json.dumps(record, ensure_ascii=False),
    )


def _content(body: dict[str, Any]) -> str | None:
    """The generated text of a chat or completion response, if there is one."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content")
    return choice.get("text")
