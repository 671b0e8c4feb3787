"""Several people, one spool (issue 13), with real Unix users: the documented install, then a
submitter (group member) and an outsider using the real CLI while the real daemon (echo backend)
runs as its own user. Needs root to create the users (CI runs as root)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from spoold_helpers import LatestCheckpoint, chat_line, child_env, wait_for, write_jsonl
from unix_users import UnixUsers, as_user_argv, code_paths, opened_for_others, run_as, spoold_argv

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix users: needs root (CI runs as root)")]


@dataclass
class Site:
    base: Path
    spool: Path
    config: Path
    log: Path
    group: str
    daemon_user: str
    submitter: str
    outsider: str
    init_result: subprocess.CompletedProcess[str]

    def cli(self, user: str, *args: str, umask: str = "022") -> subprocess.CompletedProcess[str]:
        return run_as(user, *spoold_argv(*args, "--config", str(self.config)), umask=umask, cwd=self.base)

    def home(self, user: str) -> Path:
        return self.base / f"home-{user}"

    def job_file(self, user: str, name: str, lines: list[dict], sidecar: dict | None = None) -> Path:
        """A job in the user's own folder, owned by them (what they would scp from)."""
        path = self.home(user) / f"{name}.jsonl"
        write_jsonl(path, lines)
        os.chown(path, pwd_uid(user), -1)
        if sidecar is not None:
            side = path.with_suffix(".yaml")
            side.write_text(yaml.safe_dump(sidecar))
            os.chown(side, pwd_uid(user), -1)
        return path

    def finished(self, name: str, timeout: float = 60) -> Path:
        def found() -> Path | None:
            for state in ("done", "failed"):
                if (self.spool / state / name / "batch.json").exists():
                    return self.spool / state / name
            return None

        try:
            return wait_for(found, timeout, what=f"job {name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log.read_text()}") from None

    def batch(self, job: Path) -> dict:
        return json.loads((job / "batch.json").read_text())


def pwd_uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def _install(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    users = UnixUsers()
    base = Path(tempfile.mkdtemp(prefix="spoold-users-"))  # not pytest's tmp (0700 under /tmp/pytest-of-root)
    os.chmod(base, 0o755)
    proc = None
    try:
        with opened_for_others([*code_paths(), base]):  # e.g. /root/.pyenv's python; a private $TMPDIR
            # systemd/README.md "Install", step by step, on a temp directory.
            group = users.add_group()
            daemon_user = users.add_user("daemon", primary=group)
            submitter = users.add_user("alice", member_of=group)
            outsider = users.add_user("mallory")
            spool = base / "spool"
            _install(["install", "-d", "-o", daemon_user, "-g", group, "-m", "2770", str(spool)])
            init = run_as(daemon_user, *spoold_argv("init", "--spool", str(spool)), umask="022", cwd=base, runuser=True)
            state = base / "state"
            _install(["install", "-d", "-o", daemon_user, "-g", group, "-m", "0750", str(state)])
            config = base / "spoold.yaml"
            draft = base / "draft.yaml"
            draft.write_text(yaml.safe_dump({
                "spool_dir": str(spool), "node_id": "mu-node",
                "watch": {"settle_seconds": 0.3, "poll_interval": 0.3, "orphan_seconds": 300},
                "engine": {"backend": "echo", "state_dir": str(state), "window": 2},
                "chunk_size": 10, "lease_seconds": 5, "metrics": {"listen": ""},
                "logging": {"format": "text", "level": "info"},
            }))  # fmt: skip
            _install(["install", "-o", "root", "-g", group, "-m", "0640", str(draft), str(config)])
            for user in (submitter, outsider):
                home = base / f"home-{user}"
                _install(["install", "-d", "-o", user, "-m", "0700", str(home)])
            log = base / "daemon.log"
            with open(log, "wb") as out:  # by hand as the unit runs it: `umask 0007; spoold run`
                proc = subprocess.Popen(
                    as_user_argv(daemon_user, spoold_argv("run", "--config", str(config)), umask="0007", runuser=True),
                    stdout=out, stderr=subprocess.STDOUT, cwd=base, start_new_session=True,
                    env=child_env({"SPOOLD_ECHO_DELAY": "0.05"}),
                )  # fmt: skip
            wait_for(lambda: "spoold ready" in log.read_text() or proc.poll() is not None, 60, what="the daemon")
            assert proc.poll() is None, log.read_text()
            yield Site(base, spool, config, log, group, daemon_user, submitter, outsider, init)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
        users.remove()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_documented_install_makes_a_spool_the_group_can_use(site: Site) -> None:
    assert site.init_result.returncode == 0, site.init_result.stderr
    out = site.init_result.stdout
    gid = site.spool.stat().st_gid
    for name in ("inbox", "processing", "done", "failed"):
        path = site.spool / name
        assert f"created {path} (drwxrws---, group {site.group})" in out
        assert _mode(path) == 0o2770 and path.stat().st_gid == gid
        assert path.stat().st_uid == pwd_uid(site.daemon_user)
    assert f"members of group {site.group} can submit jobs" in out
    log = site.log.read_text()
    assert "spool permissions" not in log and "umask" not in log  # started as documented: nothing to warn about


def test_submitter_drops_with_cp_rsync_and_submit_and_reads_results(site: Site) -> None:
    lines = [chat_line("r1", "hello there"), chat_line("r2", "general kenobi")]
    a = site.job_file(site.submitter, "by-cp", lines, {})
    inbox = site.spool / "inbox"
    copied = run_as(site.submitter, "sh", "-c", f"cp {a} {inbox}/.by-cp.jsonl.part && mv {inbox}/.by-cp.jsonl.part {inbox}/by-cp.jsonl"
                    f" && cp {a.with_suffix('.yaml')} {inbox}/by-cp.yaml")  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    b = site.job_file(site.submitter, "by-rsync", lines, {})
    synced = run_as(site.submitter, "rsync", str(b), str(b.with_suffix(".yaml")), f"{inbox}/")
    assert synced.returncode == 0, synced.stderr
    c = site.job_file(site.submitter, "by-submit", lines)
    submitted = site.cli(site.submitter, "submit", str(c), "--set", "metadata.team=nlp")
    assert submitted.returncode == 0 and "submitted by-submit" in submitted.stdout, submitted.stderr
    gid = site.spool.stat().st_gid
    for name in ("by-cp", "by-rsync", "by-submit"):
        job = site.finished(name)
        assert job.parent.name == "done", site.batch(job)
        read = run_as(site.submitter, "cat", str(job / "output.jsonl"), str(job / "batch.json"))
        assert read.returncode == 0 and "general kenobi" in read.stdout, read.stderr
        for path in [job, *job.rglob("*")]:
            assert path.stat().st_gid == gid, path  # setgid folders: everything keeps the spool's group
            assert _mode(path) & 0o040, path  # group-readable
            if path.name not in ("input.jsonl", "meta.yaml"):  # the submitter's files keep their modes
                assert _mode(path) & 0o007 == 0, path  # what the daemon wrote: nothing for others
        status = site.cli(site.submitter, "status", name, "--json")
        assert status.returncode == 0 and json.loads(status.stdout)[0]["name"] == name, status.stderr


def test_outsider_can_neither_drop_nor_read(site: Site) -> None:
    secret_job = site.job_file(site.submitter, "private", [chat_line("p1", "private words")], {})
    assert run_as(site.submitter, "cp", str(secret_job), str(secret_job.with_suffix(".yaml")), str(site.spool / "inbox")).returncode == 0
    done = site.finished("private")
    mine = site.job_file(site.outsider, "intruder", [chat_line("x", "let me in")], {})
    dropped = run_as(site.outsider, "cp", str(mine), str(site.spool / "inbox") + "/")
    assert dropped.returncode != 0 and "Permission denied" in dropped.stderr
    read = run_as(site.outsider, "cat", str(done / "output.jsonl"))
    assert read.returncode != 0 and "private words" not in read.stdout
    listed = run_as(site.outsider, "ls", str(site.spool / "done"))
    assert listed.returncode != 0 and "private" not in listed.stdout
    for args in (("submit", str(mine), "--spool", str(site.spool)), ("status", "--spool", str(site.spool)),
                 ("cancel", "private", "--spool", str(site.spool))):  # fmt: skip
        result = run_as(site.outsider, *spoold_argv(*args), cwd=site.base)  # no --config: theirs is unreadable
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (site.spool / "inbox" / "intruder.jsonl").exists() and not (site.spool / "done" / "intruder").exists()


def test_submitter_cancels_a_queued_and_a_running_job(site: Site) -> None:
    queued = site.job_file(site.submitter, "waiting", [chat_line("w1", "later")])  # no sidecar: waits in inbox
    assert run_as(site.submitter, "cp", str(queued), str(site.spool / "inbox")).returncode == 0
    cancelled = site.cli(site.submitter, "cancel", "waiting")
    assert cancelled.returncode == 0 and "cancelled waiting before it ran" in cancelled.stdout, cancelled.stderr
    job = site.spool / "done" / "waiting"
    assert site.batch(job)["status"] == "cancelled"
    assert _mode(job) == 0o2770 and _mode(job / "batch.json") == 0o660  # the CLI writes for the group too
    long = site.job_file(site.submitter, "long", [chat_line(f"k{i}", f"text {i}") for i in range(400)], {"chunk_size": 5})
    assert site.cli(site.submitter, "submit", str(long)).returncode == 0
    ckpt = LatestCheckpoint(site.spool / "processing" / "long" / ".spoold")
    wait_for(ckpt.exists, 60, what="the long job to make progress")
    stop = site.cli(site.submitter, "cancel", "long")
    assert stop.returncode == 0 and "cancel requested" in stop.stdout, stop.stderr
    job = site.finished("long")
    batch = site.batch(job)
    assert job.parent.name == "done" and batch["status"] == "cancelled"
    assert 0 < batch["request_counts"]["completed"] < 400


def test_submitter_requeues_and_unreadable_input_fails_with_one_sentence(site: Site) -> None:
    path = site.job_file(site.submitter, "closed", [chat_line("c1", "mine only")], {})
    dropped = run_as(site.submitter, "cp", str(path), str(site.spool / "inbox"), umask="077")  # -rw-------
    assert dropped.returncode == 0, dropped.stderr
    assert run_as(site.submitter, "cp", str(path.with_suffix(".yaml")), str(site.spool / "inbox")).returncode == 0
    job = site.finished("closed")
    reason = site.batch(job)["errors"]["data"][0]["message"]
    assert job.parent.name == "failed"
    assert reason == ("input.jsonl is not readable by the daemon (mode -rw-------): make it readable by the "
                      "spool's group (chmod g+r) and `spoold requeue` the job")  # fmt: skip
    assert (job / "input.jsonl").stat().st_uid == pwd_uid(site.submitter)  # left as it was, unread
    assert "mine only" in (job / "input.jsonl").read_text()
    assert run_as(site.submitter, "chmod", "g+r", str(job / "input.jsonl")).returncode == 0
    again = site.cli(site.submitter, "requeue", "closed")
    assert again.returncode == 0 and "requeued closed" in again.stdout, again.stderr
    assert not (site.spool / "failed" / "closed").exists()
    job = site.finished("closed")
    assert job.parent.name == "done" and site.batch(job)["request_counts"]["completed"] == 1
