"""`type: webhook`: POST the final batch object as JSON, signed when a secret is set.

The body is the batch object with the job's paths under `spoold.paths`,
serialised the same way on every attempt, so the signature and the
`Idempotency-Key` header let a receiver verify and drop duplicates.
Connection errors, timeouts, 5xx, 408 and 429 are retried; other answers
of 3xx (redirects are not followed) or 4xx fail the run at once.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any

from spoold.handlers.base import Handler, HandlerError, HandlerEvent, PermanentHandlerError, read_secret_file
from spoold.handlers.config import WebhookConfig

SIGNATURE_HEADER = "X-Spoold-Signature"
RETRYABLE_STATUS = frozenset({408, 425, 429})
_ERROR_BODY_CHARS = 200
_MAX_RESPONSE_BYTES = 1 << 16


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects of a POST would silently drop the body; surface them as errors instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookHandler(Handler):
    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config.model_dump(mode="json", exclude={"headers"}))
        self.config = config
        self._secret = read_secret(config)
        self._opener = urllib.request.build_opener(_NoRedirect())

    def handle(self, event: HandlerEvent) -> None:
        body = webhook_body(event)
        request = urllib.request.Request(self.config.url, data=body, method="POST")
        for key, value in self.config.headers.items():
            request.add_header(key, value)
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "spoold")
        request.add_header("Idempotency-Key", event.idempotency_key)
        request.add_header("X-Spoold-Job", urllib.parse.quote(event.job, safe=""))  # headers are latin-1 only
        request.add_header("X-Spoold-Status", event.status)
        request.add_header("X-Spoold-Attempt", str(event.attempt))
        if self._secret is not None:
            request.add_header(SIGNATURE_HEADER, sign(self._secret, body))
        try:
            with self._opener.open(request, timeout=self.config.timeout) as response:
                response.read(_MAX_RESPONSE_BYTES)  # the answer is not used; do not hold a huge one
        except urllib.error.HTTPError as exc:
            raise _http_failure(exc) from None
        except urllib.error.URLError as exc:
            raise HandlerError(f"cannot reach {_where(self.config.url)}: {exc.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise HandlerError(f"{_where(self.config.url)}: {type(exc).__name__}: {exc}") from None


def webhook_body(event: HandlerEvent) -> bytes:
    """The exact bytes that are posted (and signed)."""
    batch = dict(event.batch)
    spoold = dict(batch.get("spoold") or {})
    spoold["paths"] = {
        "job_dir": str(event.job_dir),
        "output": str(event.output),
        "errors": str(event.errors),
        "batch": str(event.batch_file),
    }
    batch["spoold"] = spoold
    return json.dumps(batch, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(config: WebhookConfig) -> bytes | None:
    """The HMAC secret from the environment or a file; ValueError (naming only the source) if absent."""
    if config.secret_env:
        value = os.environ.get(config.secret_env)
        if not value:
            raise ValueError(f"environment variable {config.secret_env} is not set")
        return value.encode("utf-8")
    if config.secret_file:
        return read_secret_file(config.secret_file, "secret_file").encode("utf-8")
    return None


def retry_after_seconds(headers: Message | None) -> float | None:
    """A Retry-After given in seconds; the HTTP-date form is ignored (the backoff applies)."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _http_failure(exc: urllib.error.HTTPError) -> HandlerError:
    try:
        detail = exc.read(_ERROR_BODY_CHARS * 4).decode("utf-8", "replace").strip()[:_ERROR_BODY_CHARS]
    except (OSError, http.client.HTTPException):
        detail = ""
    finally:
        exc.close()
    message = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
    if exc.code >= 500 or exc.code in RETRYABLE_STATUS:
        return HandlerError(message, retry_after=retry_after_seconds(exc.headers))
    return PermanentHandlerError(message)


def _where(url: str) -> str:
    """The URL without its query string or credentials, fit for a log line."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
