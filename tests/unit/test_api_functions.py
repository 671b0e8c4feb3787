"""The API's plain functions over a temp spool, without a server: keys, upload store, scan, create, view."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from openai.types import Batch, FileObject

from spoold.api.area import ApiArea
from spoold.api.batches import records
from spoold.api.batches.create import CreateBatch, Settings, capped_priority, check_lines, choose_model, create_batch
from spoold.api.batches.scan import Summary, scan_file
from spoold.api.batches.view import cancel_batch, list_batches, retrieve
from spoold.api.errors import ApiError
from spoold.api.files.store import Upload, delete_upload, get_upload, jsonl_problem, list_uploads
from spoold.api.ids import new_batch_id, parse_job_file_id
from spoold.api.keys import ApiKey, KeyRing, parse_keys
from spoold.config import parse_config
from spoold.errors import ConfigError
from spoold.spool.layout import Spool

from spoold_helpers import chat_line, write_jsonl

ALICE, BOB, ROOT = ApiKey("alice", "a"), ApiKey("bob", "b", max_priority=2), ApiKey("root", "r", operator=True)
SETTINGS = Settings(frozenset({"tiny-random", "tiny-random-b"}), frozenset({"hook"}), 1 << 20)
ENDPOINT = "/v1/chat/completions"


@pytest.fixture()
def area(tmp_path: Path) -> ApiArea:
    spool = Spool(tmp_path / "spool")
    for state in ("inbox", "processing", "done", "failed"):
        (spool.root / state).mkdir(parents=True)
    area = ApiArea(spool)
    area.ensure()
    return area


def upload(area: ApiArea, key: ApiKey, data: bytes, idem: str | None = None, limit: int = 1 << 20):
    from spoold.api.ids import new_upload_id

    u = Upload(area, key.name, new_upload_id(key.name, idem), limit, idempotent=idem is not None).open()
    for i in range(0, len(data), 7):
        u.write(data[i : i + 7])
    return u.commit("in.jsonl", "batch")


def jsonl(lines: list[object]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_keys_file_parsing_and_reload(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    keys = parse_keys(f"# comment\nalice sha256:{digest} max_priority=3\n\nroot sha256:{'1' * 64} operator # ops\n")
    assert keys[digest] == ApiKey("alice", digest, False, 3) and keys["1" * 64].operator
    for bad in [
        "alice s3cret",
        f"alice sha256:{digest} admin",
        f"a sha256:{digest}\nb sha256:{digest}",
        f"a sha256:{digest} max_priority=x",
    ]:
        with pytest.raises(ConfigError):
            parse_keys(bad)
    path = tmp_path / "keys"
    path.write_text(f"alice sha256:{digest}\n")
    ring = KeyRing(path)
    assert ring.authenticate("Bearer s3cret").name == "alice"
    for header in (None, "Bearer nope", "Basic s3cret", "Bearer "):
        with pytest.raises(ApiError) as err:
            ring.authenticate(header)
        assert err.value.status == 401
    path.write_text(f"bob sha256:{digest}\n")
    assert ring.authenticate("Bearer s3cret").name == "alice"  # until SIGHUP asks
    ring.request_reload()
    assert ring.authenticate("Bearer s3cret").name == "bob"
    path.write_text("garbage\n")
    ring.request_reload()
    assert ring.authenticate("Bearer s3cret").name == "bob"  # a bad file keeps the keys in force
    assert KeyRing(None, allow_anonymous=True).authenticate(None).name == "anonymous"


def test_config_api_section() -> None:
    config = parse_config("api: {max_file_bytes: 2GiB, max_queued_requests_per_key: 100}")
    assert config.api.max_file_bytes == 2 << 30 and parse_config("api: {max_file_bytes: 1000}").api.max_file_bytes == 1000
    assert parse_config("").api.max_file_bytes == 10 << 30
    for bad in ["api: {max_file_bytes: 10 parsecs}", "api: {allow_anonymous: true, listen: '0.0.0.0:8080'}", "api: {typo: 1}"]:
        with pytest.raises(ConfigError):
            parse_config(bad)
    assert parse_config("api: {allow_anonymous: true, listen: '127.0.0.1:9000'}").api.allow_anonymous


def test_jsonl_check() -> None:
    assert jsonl_problem(b'\n{"a": 1}\nnot json\n', 20) is None
    assert jsonl_problem(b"", 0) == "it is empty"
    assert jsonl_problem(b"a,b\n1,2\n", 8) == "its first line is not JSON"
    assert jsonl_problem(b"[1, 2]\n", 7) == "its first line is not a JSON object"
    assert jsonl_problem(b'{"long": "', 10 << 20) is None  # a first line longer than the head: it opens an object


def test_upload_store(area: ApiArea) -> None:
    data = jsonl([chat_line("a", "hi")])
    record = upload(area, ALICE, data)
    FileObject.model_validate(record.file_object())
    assert (area.files / record.id / "content").read_bytes() == data
    assert get_upload(area, ALICE, record.id) == record and get_upload(area, ROOT, record.id) == record
    for key, ident in [(BOB, record.id), (ALICE, "../../etc/passwd"), (ALICE, "file-" + "0" * 32)]:
        with pytest.raises(ApiError) as err:
            get_upload(area, key, ident)
        assert err.value.status == 404
    assert list_uploads(area, BOB) == [] and list_uploads(area, ALICE) == [record]
    # over the limit, or not JSONL: nothing is left
    with pytest.raises(ApiError) as err:
        upload(area, ALICE, data * 10, limit=len(data) * 2)
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:
        upload(area, ALICE, b"\x00\x01binary")
    assert err.value.status == 400
    assert sorted(p.name for p in area.files.iterdir()) == [record.id]
    # the same Idempotency-Key twice: one file, the first answer, kept as a tombstone after a delete
    first = upload(area, ALICE, data, idem="k")
    assert upload(area, ALICE, data + data, idem="k") == first
    assert delete_upload(area, ALICE, first.id) == {"id": first.id, "object": "file", "deleted": True}
    assert upload(area, ALICE, data, idem="k").id == first.id and first.id not in {r.id for r in list_uploads(area, ALICE)}
    delete_upload(area, ALICE, record.id)
    assert sorted(p.name for p in area.files.iterdir()) == [first.id]


def test_scan_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [chat_line("a", "x", model="m1"), "", "not json", {"messages": [{"role": "user", "content": "y"}]}, "x" * 300])
    summary = scan_file(path, max_line_bytes=100)
    assert summary == Summary(lines=4, bad=2, urls={ENDPOINT: 1}, models={"m1": 1})
    check_lines(summary, ENDPOINT)
    with pytest.raises(ApiError, match="line 1: /v1/chat/completions"):
        check_lines(summary, "/v1/embeddings")
    with pytest.raises(ApiError, match="no requests"):
        check_lines(Summary(), ENDPOINT)
    names = frozenset({"m1", "m2"})
    assert choose_model(None, summary, names) == "m1" and choose_model("m2", summary, names) == "m2"
    assert choose_model(None, Summary(lines=1), names) is None
    with pytest.raises(ApiError, match="one model per batch"):
        choose_model(None, Summary(lines=2, models={"m1": 1, "m2": 2}), names)
    for bad, message in [("/models/x", "path"), ("~/x", "path"), ("nope", "Unknown model")]:
        with pytest.raises(ApiError, match=message):
            choose_model(bad, summary, names)
    assert capped_priority(2, BOB) == 2 and capped_priority(0, ApiKey("low", "l", max_priority=-1)) == -1
    with pytest.raises(ApiError, match="max_priority"):
        capped_priority(3, BOB)


def test_create_retrieve_list_cancel_without_a_server(area: ApiArea) -> None:
    data = jsonl([chat_line("a", "x", model="tiny-random"), chat_line("b", "y")])
    file = upload(area, ALICE, data)
    request = CreateBatch(
        input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h", metadata={"team": "a"}, spoold={"handlers": ["hook"]}
    )
    record = create_batch(area, ALICE, request, SETTINGS, idempotency_key="once")
    inbox = area.spool.inbox
    assert (inbox / f"{record.id}.jsonl").read_bytes() == data
    assert yaml.safe_load((inbox / f"{record.id}.yaml").read_text()) == {
        "handlers": ["hook"],
        "model": "tiny-random",
        "priority": 0,
        "metadata": {"team": "a"},
    }
    assert create_batch(area, ALICE, request, SETTINGS, idempotency_key="once") == record  # a retry: nothing new
    assert sorted(p.name for p in inbox.iterdir()) == [f"{record.id}.jsonl", f"{record.id}.yaml"]
    batch = Batch.model_validate(retrieve(area, ALICE, record.id))
    assert batch.status == "validating" and batch.request_counts.total == 2 and batch.input_file_id == file.id
    with pytest.raises(ApiError):
        retrieve(area, BOB, record.id)
    assert [b["id"] for b in list_batches(area, ALICE)["data"]] == [record.id] and list_batches(area, BOB)["data"] == []
    cancelled = Batch.model_validate(cancel_batch(area, ALICE, record.id, "test", []))
    assert cancelled.status == "cancelled" and (area.spool.root / "done" / record.id / "batch.json").exists()
    with pytest.raises(ApiError, match="unknown handler"):
        create_batch(area, ALICE, request.model_copy(update={"spoold": {"handlers": ["nope"]}}), SETTINGS)


def test_a_create_whose_maker_died_is_finished_by_the_retry(area: ApiArea) -> None:
    """A record but no job (the creator was killed after the record): the same Idempotency-Key makes the job, once."""
    file = upload(area, ALICE, jsonl([chat_line("a", "x")]))
    batch_id = new_batch_id(ALICE.name, "k")
    record = records.BatchRecord(
        id=batch_id, owner="alice", input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h", metadata={},
        created_at=1, lines=1, model=None, sidecar="priority: 0\n",
    )  # fmt: skip
    with records.creating(area, record) as (_, wrote):
        assert wrote  # ... and the process dies here
    with pytest.raises(ApiError):
        retrieve(area, ALICE, batch_id)  # not a batch yet
    request = CreateBatch(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
    assert create_batch(area, ALICE, request, SETTINGS, idempotency_key="k").id == batch_id
    assert (area.spool.inbox / f"{batch_id}.yaml").read_text() == "priority: 0\n"
    assert retrieve(area, ALICE, batch_id)["status"] == "validating"


def test_job_file_ids() -> None:
    assert parse_job_file_id("file-output-batch_abc") == ("output", "batch_abc")
    assert parse_job_file_id("file-errors-my.job") == ("errors", "my.job")
    for bad in ["file-output-../x", "file-output-..", "file-input-.hidden", "file-other-x", "file-output-a/b"]:
        assert parse_job_file_id(bad) is None


def test_a_job_ended_but_not_yet_moved_is_finalizing_not_final(area: ApiArea) -> None:
    """batch.json says completed a moment before the job's rename to done/: no final status without its files."""
    job = area.spool.root / "processing" / "batch_ended"
    (job / ".spoold").mkdir(parents=True)
    (job / "output.jsonl").write_text('{"custom_id": "a"}\n')
    batch = {"id": "batch_ended", "object": "batch", "endpoint": "/v1/chat/completions", "status": "completed",
             "completion_window": "24h", "created_at": 1, "input_file_id": "file-input-batch_ended"}  # fmt: skip
    (job / "batch.json").write_text(json.dumps(batch))
    seen = Batch.model_validate(retrieve(area, ROOT, "batch_ended"))
    assert seen.status == "finalizing" and seen.output_file_id is None
    (area.spool.root / "done").mkdir(exist_ok=True)
    job.rename(area.spool.root / "done" / "batch_ended")
    seen = Batch.model_validate(retrieve(area, ROOT, "batch_ended"))
    assert seen.status == "completed" and seen.output_file_id == "file-output-batch_ended"
