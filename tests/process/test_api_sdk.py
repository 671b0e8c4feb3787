"""`spoold api` as a real process, driven by the openai SDK and curl, over a spool a real echo daemon serves.

One daemon + one API process per module (`served`); tests that kill API processes or need a quiet
spool (no daemon taking jobs) make their own (`quiet`).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from api_helpers import KEYS, ApiProcess, api_settings, spool_listing
from openai.types import Batch, FileObject

from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for, write_jsonl

ENDPOINT = "/v1/chat/completions"


def lines_file(path: Path, count: int, model: str | None = "tiny-random", bad: int = 0) -> Path:
    lines: list[Any] = [chat_line(f"r{i}", f"hello {i}", **({"model": model} if model else {})) for i in range(count)]
    lines += [{"custom_id": f"bad{i}", "url": ENDPOINT, "body": {"messages": "not a list"}} for i in range(bad)]
    write_jsonl(path, lines)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served")
    daemon = SpooldProcess(root, api=api_settings(root, max_file_bytes="1MiB"))
    daemon.start()
    api = ApiProcess(daemon.config_path, root / "api.log").start()
    try:
        yield daemon, api
    finally:
        api.__exit__()
        daemon.stop()
        daemon.__exit__()


@pytest.fixture()
def quiet(tmp_path: Path):
    """A spool with an API but no daemon: batches stay in the inbox, so what a create left is there to look at."""
    spool = SpooldProcess(tmp_path, api=api_settings(tmp_path, max_queued_requests_per_key=10))
    with ApiProcess(spool.config_path, tmp_path / "api.log") as api:
        yield spool, api.start()


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Batch:
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in ("completed", "failed", "cancelled") and b,
        timeout,
        0.1,
        f"{batch_id} to end",
    )


def test_sdk_end_to_end(served, tmp_path: Path) -> None:
    daemon, api = served
    client = api.client("alice")
    uploaded = client.files.create(file=lines_file(tmp_path / "in.jsonl", 25, bad=2).open("rb"), purpose="batch")
    assert isinstance(uploaded, FileObject) and uploaded.purpose == "batch" and uploaded.bytes == (tmp_path / "in.jsonl").stat().st_size
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == (tmp_path / "in.jsonl").read_bytes()

    batch = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata={"project": "api-test"})
    assert batch.status == "validating" and batch.request_counts.total == 27 and batch.model == "tiny-random"
    done = wait_final(client, batch.id)
    assert done.status == "completed" and done.input_file_id == uploaded.id and done.metadata == {"project": "api-test"}
    assert done.request_counts.completed == 25 and done.request_counts.failed == 2
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in output) == sorted(f"r{i}" for i in range(25))
    assert sorted(r["custom_id"] for r in errors) == ["bad0", "bad1"]
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"

    # `spoold status` sees the API's batch as the job it is
    rows = json.loads(daemon.cli("status", batch.id, "--json", check=True).stdout)
    assert rows[0]["name"] == batch.id and rows[0]["state"] == "done"

    # the upload can go; the batch keeps its own copy of the input
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert (daemon.spool / "done" / batch.id / "input.jsonl").read_bytes() == (tmp_path / "in.jsonl").read_bytes()


def test_list_with_pagination(served, tmp_path: Path) -> None:
    _, api = served
    client = api.client("bob")
    ids = []
    for i in range(3):
        f = client.files.create(file=(f"f{i}.jsonl", lines_file(tmp_path / f"{i}.jsonl", 2).read_bytes()), purpose="batch")
        ids.append(client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h").id)
        time.sleep(1.05)  # created_at is in seconds: one apart, for a definite order
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [ids[0]] and not rest.has_more
    assert [b.id for b in client.batches.list(limit=10)] == ids[::-1]
    files = client.files.list(purpose="batch", order="asc")
    assert len(files.data) == 3 and not files.has_more
    for batch_id in ids:
        wait_final(client, batch_id)


def test_cancel(served, tmp_path: Path) -> None:
    _, api = served
    client = api.client("alice")
    f = client.files.create(file=lines_file(tmp_path / "big.jsonl", 3000).open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h")
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert wait_final(client, batch.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="completed"):
        done = client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h")
        wait_final(client, done.id)
        client.batches.cancel(done.id)


def test_keys_see_only_their_own_and_the_operator_sees_all(served, tmp_path: Path) -> None:
    daemon, api = served
    alice, bob, root = api.client("alice"), api.client("bob"), api.client("root")
    f = alice.files.create(file=lines_file(tmp_path / "a.jsonl", 2).open("rb"), purpose="batch")
    batch = alice.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h")
    done = wait_final(alice, batch.id)
    for call in (
        lambda: bob.files.retrieve(f.id), lambda: bob.files.content(f.id), lambda: bob.files.delete(f.id),
        lambda: bob.batches.retrieve(batch.id), lambda: bob.batches.cancel(batch.id), lambda: bob.files.content(done.output_file_id),
        lambda: bob.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h"),
    ):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in {b.id for b in bob.batches.list(limit=100)}
    assert f.id not in {x.id for x in bob.files.list()}
    assert root.batches.retrieve(batch.id).id == batch.id and root.files.retrieve(f.id).id == f.id

    # a job dropped by hand: the operator sees it, its results included; a tenant does not
    drop_job(daemon.inbox, "by-hand", [chat_line("h1", "hi")], {"model": "tiny-random"})
    daemon.wait_finished("by-hand")
    seen = root.batches.retrieve("by-hand")
    assert seen.status == "completed" and seen.input_file_id == "file-input-by-hand"
    assert json.loads(root.files.content(seen.output_file_id).text)["custom_id"] == "h1"
    assert "by-hand" in {b.id for b in root.batches.list(limit=100)}
    with pytest.raises(openai.NotFoundError):
        alice.batches.retrieve("by-hand")


def curl(api: ApiProcess, *args: str, key: str | None = "alice") -> tuple[int, Any]:
    auth = ["-H", f"Authorization: Bearer {KEYS[key]}"] if key else []
    result = subprocess.run(
        ["curl", "-sS", "--path-as-is", "-w", "\n%{http_code}", *auth, *args], capture_output=True, text=True, timeout=60
    )
    body, _, status = result.stdout.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), body


def test_curl_multipart_and_every_refusal_leaves_nothing(quiet, tmp_path: Path) -> None:
    spool, api = quiet
    base = api.base_url
    good = lines_file(tmp_path / "good.jsonl", 6)
    status, obj = curl(api, "-F", "purpose=batch", "-F", f"file=@{good}", f"{base}/files")
    assert status == 200 and FileObject.model_validate(obj).bytes == good.stat().st_size
    file_id = obj["id"]
    (tmp_path / "not.jsonl").write_text("id,name\n1,x\n")
    (tmp_path / "huge.jsonl").write_bytes(good.read_bytes() * 2000)
    write_jsonl(tmp_path / "two.jsonl", [chat_line("a", "x", model="tiny-random"), chat_line("b", "y", model="tiny-random-b")])
    write_jsonl(tmp_path / "path.jsonl", [chat_line("a", "x", model="/etc/models/m")])
    two = curl(api, "-F", "purpose=batch", "-F", f"file=@{tmp_path / 'two.jsonl'}", f"{base}/files")[1]["id"]
    path_model = curl(api, "-F", "purpose=batch", "-F", f"file=@{tmp_path / 'path.jsonl'}", f"{base}/files")[1]["id"]
    before = spool_listing(spool.spool)

    def create(body: dict[str, Any], key: str = "alice") -> tuple[int, Any]:
        full = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h", **body}
        return curl(api, "-H", "Content-Type: application/json", "-d", json.dumps(full), f"{base}/batches", key=key)

    refusals = {
        "no key": (curl(api, f"{base}/files", key=None), 401),
        "bad key": (curl(api, "-H", "Authorization: Bearer wrong", f"{base}/models", key=None), 401),
        "wrong purpose": (curl(api, "-F", "purpose=fine-tune", "-F", f"file=@{good}", f"{base}/files"), 400),
        "no purpose": (curl(api, "-F", f"file=@{good}", f"{base}/files"), 400),
        "not JSONL": (curl(api, "-F", "purpose=batch", "-F", f"file=@{tmp_path / 'not.jsonl'}", f"{base}/files"), 400),
        "over the limit": (curl(api, "-F", "purpose=batch", "-F", f"file=@{tmp_path / 'huge.jsonl'}", f"{base}/files"), 413),
        "not multipart": (curl(api, "-d", "x=1", f"{base}/files"), 400),
        "file path id": (curl(api, f"{base}/files/../../etc/passwd"), 404),
        "file dotted id": (curl(api, f"{base}/files/..%2F..%2Fetc%2Fpasswd/content"), 404),
        "batch path id": (curl(api, f"{base}/batches/../../etc/passwd"), 404),
        "job file path id": (curl(api, f"{base}/files/file-output-..%2F..%2Fetc/content", key="root"), 404),
        "unknown batch": (curl(api, f"{base}/batches/batch_{'0' * 32}"), 404),
        "unknown file": (curl(api, f"{base}/files/file-{'0' * 32}/content"), 404),
        "wrong endpoint": (create({"endpoint": "/v1/embeddings"}), 400),
        "unknown endpoint": (create({"endpoint": "/v1/images"}), 400),
        "bad window": (create({"completion_window": "1h"}), 400),
        "17 metadata pairs": (create({"metadata": {f"k{i}": "v" for i in range(17)}}), 400),
        "metadata not strings": (create({"metadata": {"n": 1}}), 400),
        "two models": (create({"input_file_id": two}), 400),
        "model path in lines": (create({"input_file_id": path_model}), 400),
        "model path in extra": (create({"spoold": {"model": "/srv/models/llama"}}), 400),
        "unknown model": (create({"spoold": {"model": "no-such-model"}}), 400),
        "unknown sidecar key": (create({"spoold": {"modle": "tiny-random"}}), 400),
        "bad sampling": (create({"spoold": {"sampling": {"temprature": 1}}}), 400),
        "priority over the cap": (create({"spoold": {"priority": 6}}, key="bob"), 404),  # bob cannot see alice's file
        "missing input_file_id": (curl(api, "-H", "Content-Type: application/json", "-d", "{}", f"{base}/batches"), 400),
        "not JSON": (curl(api, "-H", "Content-Type: application/json", "-d", "{nope", f"{base}/batches"), 400),
    }
    for what, ((status, body), expected) in refusals.items():
        assert status == expected, f"{what}: {status} {body}"
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], what
    assert "one model per batch" in refusals["two models"][0][1]["error"]["message"]
    assert "path" in refusals["model path in extra"][0][1]["error"]["message"]
    assert spool_listing(spool.spool) == before, "a refused request left something in the spool"

    # bob's own file, over his max_priority; then the queue limit (10 requests per key) as a 429
    bob_file = curl(api, "-F", "purpose=batch", "-F", f"file=@{good}", f"{base}/files", key="bob")[1]["id"]
    status, body = create({"input_file_id": bob_file, "spoold": {"priority": 6}}, key="bob")
    assert status == 400 and "max_priority" in body["error"]["message"]
    assert create({"metadata": {"n": "1"}, "spoold": {"priority": 3, "sampling": {"max_tokens": 4}}})[0] == 200
    before = spool_listing(spool.spool)
    status, body = create({})
    assert (
        status == 429 and "6 requests queued" in body["error"]["message"] and "api.max_queued_requests_per_key" in body["error"]["message"]
    )
    assert spool_listing(spool.spool) == before
    with pytest.raises(openai.RateLimitError):
        api.client("alice").batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")
    sidecars = list((spool.spool / "inbox").glob("batch_*.yaml"))
    assert len(sidecars) == 1
    assert yaml.safe_load(sidecars[0].read_text()) == {
        "priority": 3,
        "sampling": {"max_tokens": 4},
        "model": "tiny-random",
        "metadata": {"n": "1"},
    }


def test_two_api_processes_and_idempotency_keys(quiet, tmp_path: Path) -> None:
    spool, first = quiet
    with ApiProcess(spool.config_path, tmp_path / "api2.log") as second:
        second.start()
        a, b = first.client("alice"), second.client("alice")
        data = lines_file(tmp_path / "in.jsonl", 3).read_bytes()
        results: list[Any] = []

        def upload(client: openai.OpenAI) -> None:
            results.append(client.files.create(file=("in.jsonl", data), purpose="batch", extra_headers={"Idempotency-Key": "up-1"}))

        threads = [threading.Thread(target=upload, args=(c,)) for c in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({r.id for r in results}) == 1 and len(results) == 4
        assert len([p for p in (spool.spool / ".spoold/api/files").iterdir() if p.name.startswith("file-")]) == 1

        batches: list[Any] = []

        def create(client: openai.OpenAI) -> None:
            batches.append(
                client.batches.create(
                    input_file_id=results[0].id, endpoint=ENDPOINT, completion_window="24h", extra_headers={"Idempotency-Key": "b-1"}
                )
            )

        threads = [threading.Thread(target=create, args=(c,)) for c in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({x.id for x in batches}) == 1
        assert sorted(p.name for p in (spool.spool / "inbox").iterdir()) == [f"{batches[0].id}.jsonl", f"{batches[0].id}.yaml"]
        # each process serves what the other made; another key's same Idempotency-Key is its own
        assert b.batches.retrieve(batches[0].id).id == a.batches.retrieve(batches[0].id).id
        other = second.client("bob").files.create(file=("in.jsonl", data), purpose="batch", extra_headers={"Idempotency-Key": "up-1"})
        assert other.id != results[0].id


def test_kill_9_during_upload_and_during_create(quiet, tmp_path: Path) -> None:
    spool, api = quiet
    big = tmp_path / "big.jsonl"
    lines_file(big, 1)
    spool.config["api"].update(max_file_bytes="2GiB", max_queued_requests_per_key=None)
    spool.config_path.write_text(yaml.safe_dump(spool.config))
    api.kill()
    api.start()
    files_dir, inbox = spool.spool / ".spoold/api/files", spool.spool / "inbox"

    # an upload cut off by kill -9: nothing visible, and the same upload again works
    import http.client
    from urllib.parse import urlparse

    url = urlparse(api.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    boundary = "xyzzy"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    conn.putrequest("POST", "/v1/files")
    conn.putheader("Authorization", f"Bearer {KEYS['alice']}")
    conn.putheader("Idempotency-Key", "big-upload")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + 100 * (8 << 20)))
    conn.endheaders()
    conn.send(head.encode())
    line = big.read_bytes()
    block = line * ((8 << 20) // len(line)) + b"\n" * ((8 << 20) % len(line))
    for _ in range(3):
        conn.send(block)
    wait_for(
        lambda: any(
            p.name.startswith(".up-") and (p / "content").exists() and (p / "content").stat().st_size > 0 for p in files_dir.iterdir()
        ),
        what="the upload to reach the spool",
    )
    api.kill()
    conn.close()
    assert not [p for p in files_dir.iterdir() if p.name.startswith("file-")]
    api.start()
    client = api.client("alice", timeout=120)
    assert client.files.list().data == []
    payload = block * 12  # ~100 MB
    (tmp_path / "payload.jsonl").write_bytes(payload)
    uploaded = client.files.create(
        file=(tmp_path / "payload.jsonl").open("rb"), purpose="batch", extra_headers={"Idempotency-Key": "big-upload"}
    )
    assert uploaded.bytes == len(payload)
    assert client.files.content(uploaded.id).content == payload

    # a create cut off by kill -9 while it copies the input into the inbox; the same create again makes it once
    result: list[Any] = []

    def create() -> None:
        try:
            result.append(
                client.batches.create(
                    input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", extra_headers={"Idempotency-Key": "big"}
                )
            )
        except openai.APIError as exc:
            result.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    saw_copy = wait_for(
        lambda: [p for p in inbox.iterdir() if p.name.endswith(".part")] or result, timeout=60, interval=0.001, what="the copy"
    )
    api.kill()
    thread.join()
    assert isinstance(saw_copy, list) and saw_copy and isinstance(saw_copy[0], Path), (
        "the create ended before the copy could be interrupted"
    )
    assert not [p for p in inbox.iterdir() if p.suffix == ".yaml"], "a job was committed by a create that was killed"
    api.start()
    client = api.client("alice", timeout=120)
    again = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", extra_headers={"Idempotency-Key": "big"}
    )
    twice = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", extra_headers={"Idempotency-Key": "big"}
    )
    assert again.id == twice.id and again.request_counts.total == sum(1 for x in payload.split(b"\n") if x.strip())
    jobs = sorted(p.name for p in inbox.iterdir() if not p.name.startswith("."))
    assert jobs == [f"{again.id}.jsonl", f"{again.id}.yaml"]
    assert (inbox / f"{again.id}.jsonl").read_bytes() == payload
    assert [b.id for b in client.batches.list()] == [again.id]
