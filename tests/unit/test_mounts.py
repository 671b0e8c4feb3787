"""A spool split across mounts (issue 16): pure mountinfo logic, then real tmpfs mounts over spool
folders: `spoold run` refuses to start, `spoold init` warns, a reload finds it and pauses new work."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from spoold.spool.mounts import Mount, mount_of, parse_mountinfo, split_spool_problem
from spoold.spool.watcher import choose_mode

from spoold_helpers import SpooldProcess, chat_line, drop_job, read_records, wait_for

MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:39 / /srv/spool rw,relatime shared:20 - xfs /dev/sdb1 rw
41 40 0:40 / /srv/spool/inbox rw,relatime shared:21 - nfs4 upload:/export rw
42 22 0:41 / /mnt/with\\040space rw - tmpfs tmpfs rw
43 40 0:39 /done /srv/spool/done rw - xfs /dev/sdb1 rw
"""


def test_parse_mountinfo_and_find_the_mount_of_a_path() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert [m.mount_point for m in mounts] == ["/", "/srv/spool", "/srv/spool/inbox", "/mnt/with space", "/srv/spool/done"]
    assert mount_of("/srv/spool/processing/job", mounts) == Mount(40, "/srv/spool", "xfs", "/dev/sdb1")
    assert mount_of("/srv/spool/inbox", mounts) == Mount(41, "/srv/spool/inbox", "nfs4", "upload:/export")
    assert mount_of("/srv/spoolish", mounts).mount_point == "/"  # a prefix of the name is not a parent
    assert mount_of("/mnt/with space/x", mounts).fstype == "tmpfs"
    assert choose_mode("auto", Path("/srv/spool/inbox"), MOUNTINFO) == "poll"
    assert choose_mode("auto", Path("/srv/spool/processing"), MOUNTINFO) == "inotify"


def test_split_spool_is_found_by_device_and_by_mount() -> None:
    root = Path("/srv/spool")
    dev = {"/srv/spool/inbox": 2}  # st_dev as the kernel would report it; everything else is device 1
    problem = split_spool_problem(root, MOUNTINFO, lambda p: dev.get(str(p), 1))
    assert problem is not None and problem.startswith("spool folders inbox/ and processing/ are on different mounts")
    assert "/srv/spool/inbox (nfs4 upload:/export)" in problem and "/srv/spool (xfs /dev/sdb1)" in problem
    assert "mount the volume on /srv/spool itself rather than on inbox/" in problem
    # Same device, but done/ is a bind mount of its own: rename(2) still fails across mount points.
    no_inbox = MOUNTINFO.replace("41 40 0:40 / /srv/spool/inbox", "41 40 0:40 / /elsewhere")
    problem = split_spool_problem(root, no_inbox, lambda p: 1)
    assert problem is not None and "processing/ and done/" in problem and "rather than on done/" in problem
    whole = "\n".join(line for line in MOUNTINFO.splitlines() if line.split()[0] in ("22", "40"))
    assert split_spool_problem(root, whole, lambda p: 1) is None


@contextlib.contextmanager
def tmpfs_on(path: Path) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_run_refuses_and_init_warns_on_a_spool_split_by_a_tmpfs(tmp_path: Path) -> None:
    d = SpooldProcess(tmp_path)
    with tmpfs_on(d.spool / "done"):
        run = d.cli("run")
        init = d.cli("init")
    assert run.returncode == 2 and run.stdout == "", run.stdout
    line = run.stderr.strip().split("\n")[-1]  # after the log's start-up lines
    assert "Traceback" not in run.stderr and line.startswith("spoold run: spool folders processing/ and done/ are on different mounts")
    assert f"done/ on {d.spool / 'done'} (tmpfs tmpfs)" in line and "rather than on done/" in line
    # a fresh tmpfs also has its own modes, which `spoold init` reports as problems (exit 1); the split comes first
    assert init.stderr.startswith("spoold init: warning: spool folders processing/ and done/")
    assert d.cli("init").stderr == ""  # unmounted: no warning


def test_reload_finds_a_split_spool_and_pauses_until_fixed(tmp_path: Path) -> None:
    with SpooldProcess(tmp_path) as d:
        d.start()
        wait_for(lambda: "spoold ready" in d.log(), what="ready")
        with tmpfs_on(d.inbox):
            d.signal(signal.SIGHUP)
            wait_for(lambda: "reload failed" in d.log(), what="the reload to fail")
            drop_job(d.inbox, "held", [chat_line("a", "hi")], {})
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not (d.inbox / "held.jsonl").exists(), timeout=2, what="a claim")
            assert (d.inbox / "held.jsonl").exists(), "a job was claimed across mounts"
        log = d.log()
        assert "reload failed, keeping the running config: spool folders inbox/ and processing/ are on different mounts" in log
        assert "no new jobs are taken until this is fixed and spoold reloaded" in log
        assert "Invalid cross-device link" not in log and "Traceback" not in log
        d.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in d.log(), what="the reload to pass")
        drop_job(d.inbox, "after", [chat_line("b", "hi")], {})
        assert d.wait_finished("after").parent.name == "done"
        assert d.stop() == 0


def test_a_mount_appearing_at_run_time_is_explained_and_the_job_finishes_once_fixed(tmp_path: Path) -> None:
    """No reload: the finishing rename fails with EXDEV; the log says why in one sentence, the job waits."""
    with SpooldProcess(tmp_path) as d:
        d.start()
        wait_for(lambda: "spoold ready" in d.log(), what="ready")
        with tmpfs_on(d.spool / "done"):
            drop_job(d.inbox, "late", [chat_line(f"r{i}", "hi") for i in range(5)], {})
            wait_for(lambda: "processing/ and done/ are on different mounts" in d.log(), what="the EXDEV explained")
            assert not (d.spool / "done" / "late").exists()
        job = d.wait_finished("late")
        assert job.parent.name == "done" and len(read_records(job)) == 5
        assert d.stop() == 0
        assert "Traceback" not in d.log() and "Invalid cross-device link" not in d.log()
