"""`type: label_studio`: import each record of a finished job as a task of a Label Studio project (label-studio-sdk; `spoold[labelstudio]`).

A task's data holds what `data:` maps (by default the request's prompt and
the model's answer, as `prompt` and `answer`); its meta holds
`spoold_batch_id`, `custom_id` and `spoold_job`. No duplicates on a repeat:
before importing, the handler lists the project's tasks whose meta names this
batch (one filtered query) and imports only the records whose custom_id is
not there yet. Imports go in requests of `batch_size` tasks, each created
whole or not at all by the server, so a run cut short (a `kill -9`, a lost
connection) is completed by the next attempt without repeating a task.
(One handler run per job at a time is the dispatcher's rule; two daemons
never run the same job's handlers.)

A token the server refuses, a missing project or data the project's
labelling config rejects fails at once (PermanentHandlerError); a server
that is down or answers 5xx is retried. The token comes from `token_file`
or the LABEL_STUDIO_API_KEY environment variable and is never logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from spoold.handlers.base import Handler, HandlerError, HandlerEvent, PermanentHandlerError, import_extra, read_secret_file
from spoold.handlers.config import LabelStudioConfig
from spoold.handlers.result_lines import answer_text, error_of, iter_records, prompt_of, requests_by_custom_id, response_body, status_code

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
_LIST_PAGE = 1000


class LabelStudioHandler(Handler):
    def __init__(self, config: LabelStudioConfig) -> None:
        super().__init__(config.settings.model_dump(mode="json"))
        self.config = config
        sdk = import_extra("label_studio_sdk", "labelstudio")
        self._api_error = import_extra("label_studio_sdk.core.api_error", "labelstudio").ApiError
        self._httpx = import_extra("httpx", "labelstudio")
        s = config.settings
        self._client = sdk.LabelStudio(base_url=s.url, api_key=read_token(s.token_file), timeout=s.timeout)

    def handle(self, event: HandlerEvent) -> None:
        s = self.config.settings
        batch_id = str(event.batch.get("id") or event.job)
        try:
            self._client.projects.get(id=s.project_id)
            done = self.imported_custom_ids(batch_id)
            pending: list[dict[str, Any]] = []
            for task in self.tasks(event, batch_id, skip=done):
                pending.append(task)
                if len(pending) >= s.batch_size:
                    self._import(pending)
            if pending:
                self._import(pending)
        except self._api_error as exc:
            raise self.api_failure(exc) from None
        except self._httpx.HTTPError as exc:
            raise HandlerError(f"cannot reach Label Studio at {s.url}: {type(exc).__name__}: {exc}") from None

    def _import(self, tasks: list[dict[str, Any]]) -> None:
        self._client.projects.import_tasks(id=self.config.settings.project_id, request=list(tasks))
        tasks.clear()

    def imported_custom_ids(self, batch_id: str) -> set[str]:
        """custom_ids of this batch's tasks already in the project (by their meta)."""
        query = json.dumps(
            {
                "filters": {
                    "conjunction": "and",
                    "items": [{"filter": "filter:tasks:meta", "operator": "contains", "value": batch_id, "type": "String"}],
                }
            }
        )
        found: set[str] = set()
        for task in self._client.tasks.list(project=self.config.settings.project_id, query=query, page_size=_LIST_PAGE, fields="all"):
            meta = task.meta if isinstance(task.meta, dict) else {}
            if meta.get("spoold_batch_id") == batch_id and meta.get("custom_id") is not None:  # the filter is a substring match
                found.add(str(meta["custom_id"]))
        return found

    def tasks(self, event: HandlerEvent, batch_id: str, skip: set[str]) -> Iterator[dict[str, Any]]:
        """One task per custom_id not in `skip`: outputs first, so an output wins over an error with the same custom_id."""
        s = self.config.settings
        sources = set(s.data.values())
        requests = requests_by_custom_id(event.job_dir / "input.jsonl") if sources & {"prompt", "request"} else {}
        seen = set(skip)
        for name in sorted(s.files, key=lambda n: n != "output.jsonl"):
            for record in iter_records(event.job_dir / name):
                custom_id = str(record.get("custom_id", ""))
                if custom_id in seen:
                    continue
                seen.add(custom_id)
                request = requests.get(custom_id, {})
                data = {key: task_value(source, record, request, event.batch) for key, source in s.data.items()}
                yield {"data": data, "meta": {"spoold_batch_id": batch_id, "custom_id": custom_id, "spoold_job": event.job}}

    def api_failure(self, exc: Any) -> HandlerError:
        s = self.config.settings
        code = getattr(exc, "status_code", None) or 0
        body = getattr(exc, "body", None)
        detail = body.get("detail") or body.get("validation_errors") if isinstance(body, dict) else body
        detail = " ".join(str(detail or "").split())[:300]
        if code in (401, 403):
            return PermanentHandlerError(f"Label Studio at {s.url} refused the token (HTTP {code}: {detail})")
        if code == 404:
            return PermanentHandlerError(f"Label Studio at {s.url} has no project {s.project_id} visible to this token (HTTP 404)")
        if 400 <= code < 500 and code not in (408, 429):
            return PermanentHandlerError(f"Label Studio project {s.project_id} refused the tasks (HTTP {code}: {detail})")
        return HandlerError(f"Label Studio at {s.url}: HTTP {code}: {detail}")


def task_value(source: str, record: dict[str, Any], request: dict[str, Any], batch: dict[str, Any]) -> Any:
    """One task data value (LabelStudioSource); text sources give "" rather than null, which labelling configs render badly."""
    body = response_body(record)
    if source == "prompt":
        return prompt_of(request) or ""
    if source == "answer":
        return answer_text(body) or ""
    if source == "custom_id":
        return str(record.get("custom_id", ""))
    if source == "model":
        return str((body or {}).get("model") or batch.get("model") or "")
    if source == "status_code":
        return status_code(record)
    if source == "error":
        error = error_of(record)
        return str(error.get("message", "")) if error else ""
    if source == "request":
        return request.get("body", request)
    return body  # "response"


def read_token(path: Any) -> str:
    """The API token from `token_file`, else LABEL_STUDIO_API_KEY; ValueError naming only the source."""
    if path is None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ValueError(f"give settings.token_file, or set {TOKEN_ENV} in the daemon's environment")
        return token
    return read_secret_file(path, "token_file")
