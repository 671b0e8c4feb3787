"""`type: s3` against moto's standalone S3 server: whole objects, multipart for big files, no stray uploads after a cut."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from spoold.handlers.records import batch_for_handlers
from spoold.handlers.registry import build_handler

from handler_helpers import event_for, handler_config, make_dispatcher, make_job, read_batch  # noqa: F401 (fixture)
from servers import CuttingProxy, MotoServer

MIB = 1 << 20


def _credentials(tmp_path: Path) -> Path:
    path = tmp_path / "aws-credentials"
    path.write_text(f"[default]\naws_access_key_id = {MotoServer.ACCESS_KEY}\naws_secret_access_key = {MotoServer.SECRET_KEY}\n")
    return path


def _config(tmp_path: Path, endpoint: str, bucket: str, **retry: float):
    settings = {"bucket": bucket, "prefix": "spoold/", "endpoint_url": endpoint, "region": "us-east-1", "credentials_file": str(_credentials(tmp_path)),
                "multipart_threshold": 5 * MIB, "multipart_chunksize": 5 * MIB, "max_concurrency": 2, "timeout": 10}  # fmt: skip
    return handler_config(name="archive", type="s3", settings=settings, **({"retry": retry} if retry else {}))


def _big_output(job_dir: Path, size: int) -> str:
    line = (
        json.dumps(
            {"id": "r", "custom_id": "x", "response": {"status_code": 200, "body": {"choices": [{"text": "y" * 900}]}}, "error": None}
        )
        + "\n"
    )
    with open(job_dir / "output.jsonl", "w") as fh:
        for _ in range(size // len(line) + 1):
            fh.write(line)
    return hashlib.sha256((job_dir / "output.jsonl").read_bytes()).hexdigest()


def _sha(s3, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _open_uploads(s3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_a_job_uploads_whole_with_multipart_for_the_big_file(moto_server: MotoServer, tmp_path: Path, make_dispatcher, caplog) -> None:
    s3 = moto_server.client()
    s3.create_bucket(Bucket="results")
    job_dir, batch = make_job(tmp_path / "spool", "big")
    digest = _big_output(job_dir, 12 * MIB)
    outcomes: list[tuple[str, str]] = []
    caplog.set_level(logging.DEBUG)
    dispatcher = make_dispatcher([_config(tmp_path, moto_server.url, "results")], on_outcome=lambda n, o: outcomes.append((n, o)))
    dispatcher.job_finished(job_dir, batch, None)
    assert dispatcher.drain(60)
    assert read_batch(job_dir)["spoold"]["handlers"]["archive"]["status"] == "ok"
    assert outcomes == [("archive", "ok")]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="results")["Contents"])
    assert keys == ["spoold/big/batch.json", "spoold/big/errors.jsonl", "spoold/big/output.jsonl"]
    head = s3.head_object(Bucket="results", Key="spoold/big/output.jsonl")
    assert head["ContentLength"] == os.path.getsize(job_dir / "output.jsonl")
    assert head["ETag"].strip('"').endswith("-3")  # 12 MiB in 5 MiB parts: a multipart upload, completed whole
    assert _sha(s3, "results", "spoold/big/output.jsonl") == digest
    assert s3.get_object(Bucket="results", Key="spoold/big/errors.jsonl")["Body"].read() == (job_dir / "errors.jsonl").read_bytes()
    assert json.loads(s3.get_object(Bucket="results", Key="spoold/big/batch.json")["Body"].read()) == batch_for_handlers(batch)
    assert head["Metadata"] == {"spoold-idempotency-key": f"{batch['id']}:archive"}
    assert _open_uploads(s3, "results") == []
    assert MotoServer.SECRET_KEY not in caplog.text and MotoServer.SECRET_KEY not in (job_dir / "batch.json").read_text()


def test_a_retry_after_a_cut_mid_upload_leaves_one_object_and_no_open_upload(
    moto_server: MotoServer, tmp_path: Path, make_dispatcher
) -> None:
    s3 = moto_server.client()
    s3.create_bucket(Bucket="cut")
    job_dir, batch = make_job(tmp_path / "spool", "cutjob")
    digest = _big_output(job_dir, 16 * MIB)
    proxy = CuttingProxy(moto_server.port, budget=8 * MIB)  # the connection dies in the second part
    try:
        config = _config(tmp_path, proxy.url, "cut", initial_backoff=1.0, max_backoff=1.0, jitter=0.0, max_attempts=30)
        dispatcher = make_dispatcher([config])
        dispatcher.job_finished(job_dir, batch, None)
        from spoold_helpers import wait_for

        wait_for(
            lambda: read_batch(job_dir)["spoold"].get("handlers", {}).get("archive", {}).get("status") == "retrying",
            60,
            what="a failed attempt",
        )
        run = read_batch(job_dir)["spoold"]["handlers"]["archive"]
        assert run["attempts"] == 1 and "s3://cut/spoold/" in run["last_error"]
        assert _open_uploads(s3, "cut") == ["spoold/cutjob/output.jsonl"]  # the cut left one behind (its abort could not get through)
        assert "Contents" not in s3.list_objects_v2(Bucket="cut")  # and no partial object
        proxy.heal()
        assert dispatcher.drain(60)
        assert read_batch(job_dir)["spoold"]["handlers"]["archive"]["status"] == "ok"
    finally:
        proxy.close()
    assert _open_uploads(s3, "cut") == []
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="cut")["Contents"]]
    assert sorted(keys) == ["spoold/cutjob/batch.json", "spoold/cutjob/errors.jsonl", "spoold/cutjob/output.jsonl"]
    assert _sha(s3, "cut", "spoold/cutjob/output.jsonl") == digest


def test_a_missing_bucket_or_bad_key_fails_at_once(moto_server: MotoServer, tmp_path: Path) -> None:
    job_dir, batch = make_job(tmp_path / "spool", "nobucket")
    handler = build_handler(_config(tmp_path, moto_server.url, "no-such-bucket"))
    from spoold.handlers.base import PermanentHandlerError

    with pytest.raises(PermanentHandlerError, match="NoSuchBucket"):
        handler.handle(event_for(job_dir, batch, "archive"))
