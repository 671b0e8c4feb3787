"""Nothing a submitter puts in inbox/ makes the daemon read what it should not, hang, write outside
the spool or run an unconfigured command (issue 13). Symlinks, FIFOs, devices and hard links with a
second name are never read; the job fails with one sentence and the entry is left unread."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from spoold import inputcheck
from spoold.handlers.base import HandlerError
from spoold.handlers.config import CopyConfig
from spoold.handlers.copy_files import CopyHandler
from spoold.job.reader import read_lines
from spoold.spool.claim import claim
from spoold.spool.layout import Spool

from handler_helpers import event_for, make_job
from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for, write_jsonl

SECRET = "TOP-SECRET-do-not-echo"


def _secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.jsonl"
    write_jsonl(secret, [chat_line("s1", SECRET)])
    return secret


# ---- pure ------------------------------------------------------------------------------------


def test_refusal_by_kind(tmp_path: Path) -> None:
    regular = tmp_path / "r"
    regular.write_text("x")
    assert inputcheck.refusal(os.lstat(regular)) is None
    (tmp_path / "l").symlink_to(regular)
    assert inputcheck.refusal(os.lstat(tmp_path / "l")) == "is a symbolic link"
    os.mkfifo(tmp_path / "f")
    assert inputcheck.refusal(os.lstat(tmp_path / "f")) == "is a FIFO"
    assert inputcheck.refusal(os.lstat("/dev/null")) == "is a character device"
    assert inputcheck.refusal(os.lstat(tmp_path)) == "is a directory"
    os.link(regular, tmp_path / "second")
    assert inputcheck.refusal(os.lstat(regular)) == "is a hard link with 2 names"
    assert inputcheck.refusal(os.lstat(regular), one_name=False) is None


def test_reader_never_follows_a_symlink_or_opens_a_fifo(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path)
    (tmp_path / "link.jsonl").symlink_to(secret)
    with pytest.raises(PermissionError, match="symbolic link"):
        list(read_lines(tmp_path / "link.jsonl"))
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(PermissionError, match="FIFO"):  # opening it without O_NONBLOCK would block forever
        list(read_lines(tmp_path / "fifo.jsonl"))
    assert [r.data for r in read_lines(secret)] == [secret.read_bytes()]


# ---- the claim -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_claim_moves_an_unsafe_input_aside_unread_and_fails_the_job(tmp_path: Path, kind: str) -> None:
    spool = Spool(tmp_path / "spool")
    spool.init()
    secret = _secret_file(tmp_path)
    entry = spool.inbox / "x.jsonl"
    {"symlink": lambda: entry.symlink_to(secret), "hardlink": lambda: os.link(secret, entry), "fifo": lambda: os.mkfifo(entry)}[kind]()
    (spool.inbox / "x.yaml").write_text("{}\n")
    job = claim(spool, "x", "n1")  # as if it was swapped in after the scan saw a regular file
    assert job is not None
    reason = job.load_record().pending_failure
    assert reason and "input.jsonl is a" in reason and "left unread as input.jsonl.refused" in reason
    assert "\n" not in reason
    assert not os.path.lexists(job.input) and os.path.lexists(job.path / "input.jsonl.refused")
    assert job.meta.exists()  # the safe sidecar stays


def test_claim_refuses_a_fifo_sidecar_and_keeps_a_safe_input(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.init()
    write_jsonl(spool.inbox / "x.jsonl", [chat_line("a", "hi")])
    os.mkfifo(spool.inbox / "x.yaml")
    job = claim(spool, "x", "n1")
    assert job is not None
    reason = job.load_record().pending_failure
    assert reason and reason.startswith("meta.yaml is a FIFO; it was left unread as meta.yaml.refused")
    assert job.input.is_file() and stat.S_ISFIFO(os.lstat(job.path / "meta.yaml.refused").st_mode)


def test_claim_of_a_safe_job_sets_no_failure(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.init()
    drop_job(spool.inbox, "x", [chat_line("a", "hi")], {})
    job = claim(spool, "x", "n1")
    assert job is not None and job.load_record().pending_failure is None


# ---- the real daemon ---------------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_fails_refused_jobs_with_one_sentence_and_never_reads_them(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path)
    with SpooldProcess(tmp_path / "d") as d:
        os.link(secret, d.inbox / "linked.jsonl")
        (d.inbox / "linked.yaml").write_text("{}\n")
        write_jsonl(d.inbox / "fifo-sidecar.jsonl", [chat_line("a", "hi")])
        os.mkfifo(d.inbox / "fifo-sidecar.yaml")  # scan ignores it: the job looks sidecar-less
        (d.inbox / "sym.jsonl").symlink_to(secret)  # not a regular file: never a job
        (d.inbox / "sym.yaml").write_text("{}\n")
        os.mkfifo(d.inbox / "pipe.jsonl")
        (d.inbox / "pipe.yaml").write_text("{}\n")
        d.start()
        linked = d.wait_finished("linked")
        reason = d.batch(linked)["errors"]["data"][0]["message"]
        assert linked.parent.name == "failed"
        assert reason.startswith("input.jsonl is a hard link with 2 names; it was left unread as input.jsonl.refused")
        assert "copy the file" in reason and f"failed: {reason}" in d.log()
        fifo = d.wait_finished("fifo-sidecar", timeout=30)  # before: the daemon blocked reading the FIFO
        assert fifo.parent.name == "failed"
        assert "meta.yaml is a FIFO" in d.batch(fifo)["errors"]["data"][0]["message"]  # the refusal reason wins
        assert stat.S_ISFIFO(os.lstat(fifo / "meta.yaml.refused").st_mode)  # left, unread
        drop_job(d.inbox, "after", [chat_line("a", "hi")], {})
        assert d.wait_finished("after").parent.name == "done"  # the daemon goes on
        assert (d.inbox / "sym.jsonl").is_symlink() and stat.S_ISFIFO(os.lstat(d.inbox / "pipe.jsonl").st_mode)
        leaked = [p for p in d.spool.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_ino != secret.stat().st_ino
                  and SECRET in p.read_text(errors="replace")]  # fmt: skip
        assert leaked == []
        assert secret.read_text().count(SECRET) == 1  # unchanged


# ---- the audit: names, sidecars and handlers cannot leave the spool --------------------------


@pytest.mark.slow
def test_job_names_cannot_leave_the_spool(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path / "d") as d:
        src = tmp_path / "job.jsonl"
        write_jsonl(src, [chat_line("a", "hi")])
        for args in (("submit", str(src), "--name", "../escaped"), ("submit", str(src), "--name", ".."),
                     ("cancel", "../inbox"), ("requeue", "../../etc"), ("status", "../done")):  # fmt: skip
            result = d.cli(*args)
            assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert not (d.spool / "escaped.jsonl").exists() and not (tmp_path / "escaped.jsonl").exists()
        drop_job(d.inbox, "a..b", [chat_line("a", "hi")], {})
        (d.inbox / "..jsonl").write_text(json.dumps(chat_line("a", "hi")) + "\n")  # a dot name: ignored
        d.start()
        job = d.wait_finished("a..b")
        assert job == d.spool / "done" / "a..b"
        assert (d.inbox / "..jsonl").exists()


@pytest.mark.slow
def test_a_sidecar_cannot_pick_an_unconfigured_handler(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    handler = {"name": "mark", "type": "exec", "command": ["touch", str(marker)], "on": ["completed", "failed"]}
    with SpooldProcess(tmp_path / "d", handlers=[handler]) as d:
        drop_job(d.inbox, "evil", [chat_line("a", "hi")], {"handlers": ["/bin/sh", "../../bin/sh"]})
        d.start()
        job = d.wait_finished("evil")
        assert job.parent.name == "failed"
        assert "unknown handler(s) /bin/sh, ../../bin/sh (configured: mark)" in d.batch(job)["errors"]["data"][0]["message"]
        wait_for(marker.exists, 20, what="the configured handler")  # only the configured command runs
        assert yaml.safe_load((job / "meta.yaml").read_text())["handlers"] == ["/bin/sh", "../../bin/sh"]


def test_copy_handler_never_copies_what_a_planted_symlink_points_to(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    job_dir, batch = make_job(tmp_path / "spool")
    (job_dir / "output.jsonl").unlink()
    (job_dir / "output.jsonl").symlink_to(secret)
    event = event_for(job_dir, batch, "c")
    handler = CopyHandler(
        CopyConfig.model_validate({"name": "c", "type": "copy", "on": ["completed"], "target_dir": str(outbox), "link": False})
    )
    with pytest.raises(HandlerError, match="is a symbolic link; spoold copies only regular files"):
        handler.handle(event)
    assert not any(SECRET in p.read_text() for p in outbox.rglob("*") if p.is_file())


def test_requeue_copies_a_linked_input_and_refuses_a_refused_one(tmp_path: Path) -> None:
    from spoold.control.cancel import requeue
    from spoold.errors import SpooldError

    spool = Spool(tmp_path / "spool")
    spool.init()
    job_dir, _ = make_job(spool.root, "linked", status="failed")
    os.link(job_dir / "input.jsonl", tmp_path / "outbox-copy.jsonl")  # as a copy handler with link: true
    assert requeue(spool, "linked") == "linked"
    requeued = spool.inbox / "linked.jsonl"
    assert os.lstat(requeued).st_nlink == 1 and requeued.read_text() == (tmp_path / "outbox-copy.jsonl").read_text()
    assert not job_dir.exists() and (spool.inbox / "linked.yaml").read_text() == "model: tiny-random\n"
    assert claim(spool, "linked", "n1").load_record().pending_failure is None  # one name: it runs
    refused, _ = make_job(spool.root, "refused", status="failed")
    (refused / "input.jsonl").rename(refused / "input.jsonl.refused")
    with pytest.raises(SpooldError, match="has no input.jsonl that can run again"):
        requeue(spool, "refused")
