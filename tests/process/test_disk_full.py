"""A full disk (a size-limited tmpfs holding the spool): the daemon stays up, loses nothing, and
finishes the job exactly once when space comes back."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoold_helpers import SpooldProcess, assert_exactly_once, chat_line, drop_job, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    assert result.returncode == 0, f"this test needs root and tmpfs: {result.stderr.strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_pauses_then_finishes_exactly_once(tmp_path: Path, small_disk: Path) -> None:
    overrides = {"watch": {"poll_interval": 0.2}, "engine": {"window": 8}, "metrics": {"listen": "127.0.0.1:0"}}
    with SpooldProcess(tmp_path, spool_dir=str(small_disk / "spool"), **overrides) as d:
        d.spool = small_disk / "spool"
        for state in ("inbox", "processing", "done", "failed"):
            (d.spool / state).mkdir(parents=True, exist_ok=True)
        ids = [f"f{i}" for i in range(1500)]
        drop_job(d.inbox, "big", [chat_line(c, "word " * 150) for c in ids], {"chunk_size": 50})
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * max(0, free - 1_500_000))  # room for ~1/3 of the output
        d.start()
        wait_for(lambda: "No space left on device" in d.log(), 60, what="the disk to fill")
        assert d.proc is not None and d.proc.poll() is None, "the daemon must stay up on a full disk"
        assert (d.spool / "processing" / "big").exists()
        assert "pausing new work" in d.log() and "Traceback" not in d.log()
        url = "http://%s/metrics" % re.search(r"serving metrics on http://(\S+)/metrics", d.log()).group(1)  # type: ignore[union-attr]
        wait_for(lambda: 'spoold_paused{reason="disk"} 1.0' in _scrape(url), 30, what="the pause gauge")
        filler.unlink()
        job = d.wait_finished("big", timeout=120)
        wait_for(lambda: 'spoold_paused{reason="disk"} 0.0' in _scrape(url), 30, what="the pause gauge to clear")
        assert job.parent.name == "done"
        assert_exactly_once(job, ids)
        assert d.batch(job)["request_counts"] == {"total": 1500, "completed": 1500, "failed": 0}
        assert d.stop() == 0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
