"""`type: s3`: upload a finished job's files to `s3://BUCKET/PREFIX{job}/{file}` (boto3; `spoold[s3]`).

AWS or any S3-compatible store (`endpoint_url`). Each file is streamed from
disk; one at least `multipart_threshold` big goes up in parts of
`multipart_chunksize`, at most `max_concurrency` at once, so memory stays
about `max_concurrency x multipart_chunksize` whatever the file's size. An
object appears under its key only when whole (S3 publishes a multipart
upload at its completion), and batch.json goes last, so a reader that waits
for `.../batch.json` knows the other files are complete.

A repeat (retry, restart) writes the same keys again. Before each attempt,
and after a failed one, unfinished multipart uploads of this job's keys
(left by a `kill -9` or a dropped connection) are aborted, so none linger
(and bill) in the bucket.

Credentials: boto3's usual chain (environment, ~/.aws, instance role), or an
AWS shared-credentials file named by `credentials_file`. They are never
written to the log or to batch.json.
"""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path
from typing import Any

from spoold.handlers.base import Handler, HandlerError, HandlerEvent, PermanentHandlerError, import_extra
from spoold.handlers.config import S3Config
from spoold.handlers.copy_files import refuse_planted
from spoold.inputcheck import safe_opener

PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AllAccessDisabled",
        "InvalidToken",
    }
)
CONTENT_TYPES = {".jsonl": "application/x-ndjson", ".json": "application/json", ".yaml": "application/yaml"}


class S3Handler(Handler):
    def __init__(self, config: S3Config) -> None:
        super().__init__(config.settings.model_dump(mode="json"))
        self.config = config
        boto3 = import_extra("boto3", "s3")
        self._botocore = import_extra("botocore", "s3")
        transfer = import_extra("boto3.s3.transfer", "s3")
        s = config.settings
        self._client = session(boto3, s.credentials_file, s.profile, s.region).client(
            "s3",
            endpoint_url=s.endpoint_url,
            config=self._botocore.config.Config(
                connect_timeout=s.timeout, read_timeout=s.timeout, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )
        self._transfer = transfer.TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.max_concurrency,
            use_threads=s.max_concurrency > 1,
        )

    def keys(self, event: HandlerEvent) -> dict[str, str]:
        """File name -> object key, batch.json last."""
        names = sorted(self.config.settings.files, key=lambda n: n == "batch.json")
        return {name: f"{self.config.settings.prefix}{event.job}/{name}" for name in names}

    def handle(self, event: HandlerEvent) -> None:
        keys = self.keys(event)
        try:
            self.abort_unfinished(event.job, set(keys.values()))
            for name, key in keys.items():
                self._upload(event, name, key)
        except Exception as exc:
            self._abort_quietly(event.job, set(keys.values()))
            raise self.failure(exc) from None

    def _upload(self, event: HandlerEvent, name: str, key: str) -> None:
        bucket = self.config.settings.bucket
        extra = {
            "ContentType": CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"),
            "Metadata": {"spoold-idempotency-key": event.idempotency_key},
        }
        if name == "batch.json":  # the final object, without the live handler results (as the copy handler writes it)
            body = json.dumps(event.batch, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
            self._client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
            return
        source = event.job_dir / name
        if not os.path.lexists(source):
            return  # e.g. input-only files a job never had
        refuse_planted(source)
        with open(source, "rb", opener=safe_opener) as fh:
            self._client.upload_fileobj(fh, bucket, key, ExtraArgs=extra, Config=self._transfer)

    def abort_unfinished(self, job: str, keys: set[str]) -> int:
        """Abort every unfinished multipart upload of these keys; returns how many."""
        bucket, prefix = self.config.settings.bucket, f"{self.config.settings.prefix}{job}/"
        aborted = 0
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads") or []:
                if upload.get("Key") in keys:
                    self._client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        return aborted

    def _abort_quietly(self, job: str, keys: set[str]) -> None:
        try:
            self.abort_unfinished(job, keys)
        except Exception:  # noqa: S110 (the store is unreachable: the next attempt aborts them first)
            pass

    def failure(self, exc: Exception) -> HandlerError:
        """A refused key or a missing bucket is permanent; a dropped connection or a 5xx is retried."""
        if isinstance(exc, HandlerError):
            return exc
        botocore = self._botocore
        cause: BaseException = exc
        while not isinstance(cause, botocore.exceptions.ClientError) and cause.__cause__ is not None:
            cause = cause.__cause__  # boto3's S3UploadFailedError wraps the ClientError
        where = f"s3://{self.config.settings.bucket}/{self.config.settings.prefix}"
        if isinstance(cause, botocore.exceptions.ClientError):
            error = cause.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = f"{where}: {code}: {error.get('Message') or cause}"
            return PermanentHandlerError(message) if code in PERMANENT_CODES else HandlerError(message)
        if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
            return PermanentHandlerError(f"{where}: {exc}")
        return HandlerError(f"{where}: {type(exc).__name__}: {exc}")


def session(boto3: Any, credentials_file: Path | None, profile: str | None, region: str | None) -> Any:
    """A boto3 session: keys from `credentials_file` (INI, [profile or default]) or boto3's usual chain."""
    if credentials_file is None:
        return boto3.session.Session(profile_name=profile, region_name=region)
    parser = configparser.ConfigParser()
    try:
        with open(credentials_file, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ValueError(f"cannot read credentials_file {credentials_file}: {exc.strerror}") from None
    except configparser.Error:
        raise ValueError(f"credentials_file {credentials_file} is not an AWS credentials (INI) file") from None
    section = profile or "default"
    if not parser.has_section(section):
        raise ValueError(f"credentials_file {credentials_file} has no [{section}] section")
    values = parser[section]
    if not values.get("aws_access_key_id") or not values.get("aws_secret_access_key"):
        raise ValueError(f"credentials_file {credentials_file} [{section}] needs aws_access_key_id and aws_secret_access_key")
    return boto3.session.Session(
        aws_access_key_id=values["aws_access_key_id"],
        aws_secret_access_key=values["aws_secret_access_key"],
        aws_session_token=values.get("aws_session_token") or None,
        region_name=region or values.get("region") or None,
    )
