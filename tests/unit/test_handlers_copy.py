"""copy handler: complete files only under final names, hidden temp names, idempotent re-runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from spoold.handlers.base import HandlerError, HandlerEvent
from spoold.handlers.copy_files import CopyHandler

from handler_helpers import event_for as shared_event_for
from handler_helpers import handler_config, make_job


def event_for(job_dir: Path, batch: dict, attempt: int = 1) -> HandlerEvent:
    return shared_event_for(job_dir, batch, "outbox", attempt)


def copier(target: Path, **settings: object) -> CopyHandler:
    return CopyHandler(handler_config(name="outbox", type="copy", target_dir=str(target), **settings))


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, dict]:
    job_dir, batch = make_job(tmp_path / "spool")
    batch["spoold"]["handlers"] = {"outbox": {"status": "pending"}}
    (job_dir / "batch.json").write_text(json.dumps(batch))
    return job_dir, batch


@pytest.mark.parametrize("link", [True, False])
def test_copies_results_and_is_idempotent(tmp_path: Path, job: tuple[Path, dict], link: bool) -> None:
    job_dir, batch = job
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    handler = copier(outbox, link=link)
    for _ in range(2):
        handler.handle(event_for(job_dir, batch))
        dest = outbox / "job1"
        assert sorted(p.name for p in dest.iterdir()) == ["batch.json", "errors.jsonl", "output.jsonl"]
        for name in ("output.jsonl", "errors.jsonl"):
            assert (dest / name).read_bytes() == (job_dir / name).read_bytes()
            assert os.path.samefile(dest / name, job_dir / name) is link
        copied_batch = json.loads((dest / "batch.json").read_text())
        assert copied_batch["id"] == batch["id"] and "handlers" not in copied_batch["spoold"]


def test_a_failed_copy_leaves_no_partial_file(tmp_path: Path, job: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    job_dir, batch = job
    outbox = tmp_path / "outbox"
    outbox.mkdir()

    def half_then_fail(src, dst, length=0) -> None:
        dst.write(src.read(5))
        dst.flush()
        assert not (outbox / "job1" / "output.jsonl").exists(), "final name visible before the rename"
        assert [p.name for p in (outbox / "job1").iterdir()][0].startswith("."), "temp names are hidden"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", half_then_fail)
    with pytest.raises(HandlerError, match="No space left on device"):
        copier(outbox, link=False).handle(event_for(job_dir, batch))
    assert list((outbox / "job1").iterdir()) == [], "the partial temp file is removed"


def test_files_appear_complete_and_batch_json_last(tmp_path: Path, job: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    job_dir, batch = job
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    renamed: list[str] = []
    real_replace = os.replace

    def watching_replace(src, dst) -> None:
        assert Path(src).name.startswith("."), "work happens under hidden temp names"
        final = Path(dst)
        if final.name != "batch.json":
            assert Path(src).read_bytes() == (job_dir / final.name).read_bytes(), "only whole files are renamed in"
        renamed.append(final.name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    copier(outbox, link=False).handle(event_for(job_dir, batch))
    assert renamed == ["output.jsonl", "errors.jsonl", "batch.json"]


def test_stale_temp_files_from_dead_processes_are_removed(tmp_path: Path, job: tuple[Path, dict]) -> None:
    job_dir, batch = job
    dest = tmp_path / "outbox" / "job1"
    dest.mkdir(parents=True)
    stale = dest / ".output.jsonl.spoold-tmp-999999999-1"
    stale.write_text("half")
    copier(tmp_path / "outbox").handle(event_for(job_dir, batch))
    assert not stale.exists()


def test_layout_and_missing_files(tmp_path: Path, job: tuple[Path, dict]) -> None:
    job_dir, batch = job
    (job_dir / "errors.jsonl").unlink()
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    copier(outbox, layout="{status}/{batch_id}", files=["output.jsonl", "errors.jsonl", "meta.yaml"]).handle(event_for(job_dir, batch))
    dest = outbox / "completed" / batch["id"]
    assert sorted(p.name for p in dest.iterdir()) == ["meta.yaml", "output.jsonl"]


def test_missing_target_dir_fails_without_creating_it(tmp_path: Path, job: tuple[Path, dict]) -> None:
    job_dir, batch = job
    with pytest.raises(HandlerError, match="does not exist"):
        copier(tmp_path / "not-mounted").handle(event_for(job_dir, batch))
    assert not (tmp_path / "not-mounted").exists()
