"""Spool modes (issue 13): `spoold init` makes a group-shared spool whatever the umask, reports and
`--fix`es wrong modes; the daemon warns once per problem; files it writes follow the umask."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from spoold.cli.main import main
from spoold.fsutil import append_durably, atomic_write_bytes, truncate_to
from spoold.spool import permissions as spoolperms
from spoold.spool.permissions import Folder, problems, umask_problem, wanted_mode

from spoold_helpers import SpooldProcess, chat_line, drop_job, wait_for

LAYOUT = ("inbox", "processing", "done", "failed")


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- pure ----------------------------------------------------------------------------------


def test_wanted_mode_adds_what_submitters_need_and_drops_world_access() -> None:
    assert wanted_mode(0o755, is_root=False) == 0o2770
    assert wanted_mode(0o1777, is_root=False) == 0o2770  # sticky and world bits go
    assert wanted_mode(0o2770, is_root=False) == 0o2770
    assert wanted_mode(0o755, is_root=True) == 0o2750  # the root: group enters, need not write
    assert wanted_mode(0o2770, is_root=True) == 0o2770


def test_problems_one_line_each_and_none_for_a_good_spool(tmp_path: Path) -> None:
    good = [Folder(tmp_path, True, stat.S_IFDIR | 0o2770, 50)] + [Folder(tmp_path / n, False, stat.S_IFDIR | 0o2770, 50) for n in LAYOUT]
    assert problems(good) == []
    bad = [
        Folder(tmp_path, True, stat.S_IFDIR | 0o755, 50),
        Folder(tmp_path / "inbox", False, stat.S_IFDIR | 0o2755, 50),
        Folder(tmp_path / "processing", False, stat.S_IFDIR | 0o2770, 51),
        Folder(tmp_path / "done", False, None, None),
        Folder(tmp_path / "failed", False, stat.S_IFREG | 0o644, 50, is_dir=False),
    ]
    found = problems(bad, "spoold")
    assert [p.path.name for p in found] == [tmp_path.name, "inbox", "processing", "done", "failed"]
    assert all("\n" not in p.message for p in found)
    root, inbox, proc, done, failed = found
    assert "not setgid" in root.message and "others have access" in root.message and root.mode == 0o2750
    assert "drwxr-sr-x" in inbox.message and "group members cannot write" in inbox.message and inbox.mode == 0o2770
    assert "not spoold" in proc.message and proc.gid == 50
    assert done.create and done.gid == 50
    assert "not a directory" in failed.message and failed.mode is None and failed.gid is None


def test_umask_problem() -> None:
    assert umask_problem(0o007) is None
    assert umask_problem(0o077) and "group members could not read" in umask_problem(0o077)
    text = umask_problem(0o022)
    assert text and "group members" in text and "others could read" in text and "UMask=0007" in text
    assert "others" in (umask_problem(0o002) or "")


# ---- spoold init -----------------------------------------------------------------------------


def test_init_creates_a_group_shared_spool_whatever_the_umask(tmp_path: Path, umask_022, capsys) -> None:
    spool = tmp_path / "spool"
    assert main(["init", "--spool", str(spool)]) == 0
    out = capsys.readouterr().out
    for path in (spool, *(spool / n for n in LAYOUT)):
        assert _mode(path) == 0o2770, path
        assert f"created {path} (drwxrws---" in out
        assert path.stat().st_gid == spool.stat().st_gid
    assert "members of group" in out and "others have no access" in out
    assert main(["init", "--spool", str(spool)]) == 0  # idempotent, nothing to do
    assert "created" not in capsys.readouterr().out


def test_init_reports_wrong_modes_and_fixes_them_only_with_fix(tmp_path: Path, umask_022, capsys) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o2770)
    spool.chmod(0o2770)
    for name in LAYOUT:
        (spool / name).mkdir()  # drwxr-sr-x, what `spoold init` used to make under umask 022
    (spool / "inbox").chmod(0o3777)  # sticky and world-writable
    os.chown(spool / "done", -1, spool.stat().st_gid + 1)
    assert main(["init", "--spool", str(spool)]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("problem:")]
    assert len(lines) == 5, captured.out  # 4 modes + 1 group
    assert any("inbox" in line and "sticky" in line and "others have access" in line for line in lines)
    assert any("processing is drwxr-sr-x, wants drwxrws---" in line for line in lines)
    assert any("done belongs to group" in line for line in lines)
    assert "--fix" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert _mode(spool / "processing") == 0o2755  # reported, not touched
    assert main(["init", "--fix", "--spool", str(spool)]) == 0
    out = capsys.readouterr().out
    assert "changed" in out and "set the group" in out
    for name in LAYOUT:
        assert _mode(spool / name) == 0o2770
        assert (spool / name).stat().st_gid == spool.stat().st_gid
    assert main(["init", "--spool", str(spool)]) == 0


def test_init_creates_missing_folders_even_without_fix(tmp_path: Path, umask_022, capsys) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    assert main(["init", "--spool", str(spool)]) == 1  # the root is drwxr-xr-x: reported, not fixed
    out = capsys.readouterr().out
    assert all(_mode(spool / n) == 0o2770 for n in LAYOUT)
    assert [line for line in out.splitlines() if line.startswith("problem:")] == [
        f"problem: {spool} is drwxr-xr-x, wants drwxr-s---: not setgid, so new files would not keep the group; others have access"
    ]


# ---- the daemon ------------------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_warns_once_per_problem_at_start(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path) as d:
        (d.spool / "inbox").chmod(0o755)
        d.umask = 0o022
        d.start()
        drop_job(d.inbox, "a", [chat_line("r1", "hi")], {})
        assert d.wait_finished("a").parent.name == "done"  # a warning, not a refusal
        log = d.log()
        assert log.count("spool permissions:") == 1 and f"{d.spool / 'inbox'} is drwxr-xr-x" in log
        assert log.count("umask 0022") == 1 and "UMask=0007" in log


@pytest.mark.slow
def test_daemon_without_problems_says_nothing_about_permissions(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path) as d:
        d.start()
        drop_job(d.inbox, "a", [chat_line("r1", "hi")], {})
        job = d.wait_finished("a")
        assert "spool permissions" not in d.log() and "umask" not in d.log()
        assert stat.S_IMODE(job.stat().st_mode) == 0o2770  # setgid inherited, group-writable (cancel, requeue)
        for name in ("output.jsonl", "batch.json", ".spoold/job.json"):
            assert stat.S_IMODE((job / name).stat().st_mode) == 0o660, name


# ---- files spoold writes -------------------------------------------------------------------


def test_written_files_get_0666_less_the_umask(tmp_path: Path) -> None:
    for umask, want in ((0o007, 0o660), (0o022, 0o644), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            a, b, c = tmp_path / f"a{umask}", tmp_path / f"b{umask}", tmp_path / f"c{umask}"
            atomic_write_bytes(a, b"x")
            append_durably(b, b"x")
            truncate_to(c, 0)
        finally:
            os.umask(old)
        assert {_mode(p) for p in (a, b, c)} == {want}, oct(umask)


def test_writes_never_follow_a_planted_symlink_or_block_on_a_fifo(tmp_path: Path) -> None:
    secret = tmp_path / "outside"
    secret.write_text("keep")
    job = tmp_path / "job"
    job.mkdir()
    (job / "output.jsonl").symlink_to(secret)
    for write in (lambda: append_durably(job / "output.jsonl", b"x"), lambda: truncate_to(job / "output.jsonl", 0)):
        with pytest.raises(OSError) as exc:
            write()
        assert exc.value.errno == errno.ELOOP
    assert secret.read_text() == "keep"
    os.mkfifo(job / "errors.jsonl")
    done = threading.Event()

    def append() -> None:
        try:
            append_durably(job / "errors.jsonl", b"x")
        except OSError as exc:
            assert exc.errno == errno.ENXIO
            done.set()

    threading.Thread(target=append, daemon=True).start()
    wait_for(done.is_set, 5, what="the append to a FIFO to fail instead of blocking")


def test_spoolperms_start_warnings_reads_the_umask_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert spoolperms.current_umask() == 0o027
        assert spoolperms.current_umask() == 0o027
    finally:
        os.umask(old)


def test_init_on_a_file_says_so_in_one_line_and_offers_no_fix(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_text("")
    assert main(["init", "--spool", str(tmp_path / "f")]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == f"problem: {tmp_path / 'f'} is not a directory (move it away, then run `spoold init`)"
    assert "--fix" not in captured.err and len(captured.err.strip().splitlines()) == 1


def test_spool_init_used_by_tools_makes_the_same_modes(tmp_path: Path, umask_022) -> None:
    from spoold.spool.layout import Spool

    Spool(tmp_path / "s").init()
    assert spoolperms.check(tmp_path / "s") == []
