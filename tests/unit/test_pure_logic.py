"""Readiness, scheduling, naming, checkpoint math, sidecar and config: pure functions, no daemon."""

from __future__ import annotations

import random

import pytest

from spoold.config import parse_config
from spoold.errors import ConfigError, SidecarError
from spoold.job.checkpoint import Checkpoint, Progress
from spoold.job.sidecar import parse_sidecar
from spoold.job.validate import ValidationSummary, fatal_reason
from spoold.spool.names import is_ignored, split_job_file, unique_name
from spoold.spool.readiness import FileStat, InboxEntry, ReadinessTracker, Verdict
from spoold.spool.scheduler import Candidate, pick

A = FileStat(10, 1)
B = FileStat(20, 2)


def test_ready_only_after_both_files_are_still_for_settle() -> None:
    t = ReadinessTracker(settle=2, orphan=300, require_sidecar=True)
    assert t.observe([InboxEntry("j", A, None)], 0) == {}
    assert t.observe([InboxEntry("j", B, None)], 1) == {}  # still growing
    assert t.observe([InboxEntry("j", B, A)], 2) == {}  # sidecar arrives: clock restarts
    assert t.observe([InboxEntry("j", B, A)], 3.9) == {}
    assert t.observe([InboxEntry("j", B, A)], 4.0) == {"j": Verdict.READY}


def test_lone_input_is_decided_after_orphan_seconds() -> None:
    strict = ReadinessTracker(settle=1, orphan=10, require_sidecar=True)
    lax = ReadinessTracker(settle=1, orphan=10, require_sidecar=False)
    for t in (strict, lax):
        assert t.observe([InboxEntry("j", A, None)], 0) == {}
        assert t.observe([InboxEntry("j", A, None)], 9) == {}
    assert strict.observe([InboxEntry("j", A, None)], 10) == {"j": Verdict.NO_SIDECAR}
    assert lax.observe([InboxEntry("j", A, None)], 10) == {"j": Verdict.ORPHAN}


def test_lone_sidecar_waits_and_vanished_jobs_are_forgotten() -> None:
    t = ReadinessTracker(settle=0, orphan=0, require_sidecar=True)
    assert t.observe([InboxEntry("j", None, A)], 100) == {}
    t.observe([InboxEntry("k", A, A)], 0)
    t.observe([], 1)
    assert t.observe([InboxEntry("k", A, A)], 1) == {"k": Verdict.READY}  # settle 0: seen again counts anew


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        (".r.jsonl.X1", True),
        ("a.jsonl.part", True),
        ("a.tmp", True),
        ("a.filepart", True),
        ("a.partial", True),
        ("a.jsonl~", True),
        ("a.jsonl", False),
    ],
)
def test_ignored_names(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored


def test_job_file_names() -> None:
    assert split_job_file("reviews-2026-11.jsonl") == ("reviews-2026-11", ".jsonl")
    assert split_job_file("reviews-2026-11.yaml") == ("reviews-2026-11", ".yaml")
    assert split_job_file("notes.txt") is None
    assert split_job_file(".jsonl") is None


def test_unique_name() -> None:
    taken = {"a", "a.2"}
    assert unique_name("a", taken.__contains__) == "a.3"
    assert unique_name("b", taken.__contains__) == "b"


def cand(name: str, model: str | None, at: float, prio: int = 0) -> Candidate:
    return Candidate(name, prio, at, model)


def test_scheduler_prefers_priority_then_loaded_model_then_age() -> None:
    jobs = [cand("old-b", "b", 0), cand("new-a", "a", 50), cand("urgent-b", "b", 90, prio=3)]
    assert pick(jobs, "a", 100, 600).name == "urgent-b"
    jobs = [cand("old-b", "b", 0), cand("new-a", "a", 50)]
    assert pick(jobs, "a", 100, 600).name == "new-a"  # affinity: no switch
    assert pick(jobs, "a", 700, 600).name == "old-b"  # b waited too long: switch
    assert pick(jobs, None, 100, 600).name == "old-b"  # nothing loaded: oldest
    assert pick([cand("x", "a", 5), cand("broken", None, 9)], "a", 10, 600).name == "broken"
    assert pick([], "a", 0, 1) is None


def test_progress_low_water_with_out_of_order_completion() -> None:
    p = Progress(Checkpoint())
    for line, off in ((1, 0), (2, 10), (3, 20), (4, 30)):
        p.read(line, off + 10)
        p.dispatched(line, off)
    p.finished(2)
    p.finished(4)
    assert p.commit_view() == (1, 0, [2, 4])
    p.finished(1)
    assert p.commit_view() == (3, 20, [4])
    p.finished(3)
    assert p.commit_view() == (5, 40, [])


def test_progress_resume_skips_done_above_and_keeps_them_until_passed() -> None:
    p = Progress(Checkpoint(next_line=3, next_offset=20, done_above=[4, 6]))
    assert p.already_done(4) and p.already_done(6) and not p.already_done(5)
    p.read(3, 30)
    p.dispatched(3, 20)
    assert p.commit_view() == (3, 20, [4, 6])


def test_progress_random_orders_never_lose_or_repeat() -> None:
    """Simulate many runs with random completion order and checkpoint points: the union of
    committed work and what a resume would redo covers every line exactly once."""
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 40)
        p = Progress(Checkpoint())
        inflight: list[int] = []
        done_at_commit: set[int] = set()
        ckpt = (1, 0, [])
        finished: set[int] = set()
        for line in range(1, n + 1):
            p.read(line, line * 10)
            p.dispatched(line, (line - 1) * 10)
            inflight.append(line)
            while inflight and rng.random() < 0.5:
                done = inflight.pop(rng.randrange(len(inflight)))
                p.finished(done)
                finished.add(done)
            if rng.random() < 0.3:
                ckpt = p.commit_view()
                done_at_commit = set(finished)
        next_line, _, above = ckpt
        redo = {x for x in range(next_line, n + 1) if x not in above}
        committed = {x for x in range(1, next_line)} | set(above)
        assert committed <= done_at_commit
        assert committed.isdisjoint(redo) and committed | redo == set(range(1, n + 1))


def test_fatal_reasons() -> None:
    assert fatal_reason(ValidationSummary(), None) and "no requests" in fatal_reason(ValidationSummary(), None)
    assert "no valid request" in fatal_reason(ValidationSummary(lines=2, invalid=2), None)
    assert fatal_reason(ValidationSummary(lines=10, valid=8, invalid=2), 0.1)
    assert fatal_reason(ValidationSummary(lines=10, valid=9, invalid=1), 0.1) is None
    assert fatal_reason(ValidationSummary(lines=10, valid=1, invalid=9), None) is None


def test_sidecar_rules() -> None:
    s = parse_sidecar("model: m\nsampling: {max_tokens: 5}\nmetadata: {year: 2026, ok: true}\n", {"hook"})
    assert s.model == "m" and s.metadata == {"year": "2026", "ok": "true"}
    for text, words in [
        ("modle: x\n", "modle: unknown key"),
        ("sampling: {max_tokns: 5}\n", "max_tokns: unknown sampling parameter"),
        ("sampling: {temperature: hot}\n", "temperature"),
        ("handlers: [nope]\n", "unknown handler"),
        ("- a\n", "must be a YAML mapping"),
        ("a: [\n", "not valid YAML"),
        ("max_error_ratio: 2\n", "max_error_ratio"),
    ]:
        with pytest.raises(SidecarError, match=words.split(":")[0]):
            parse_sidecar(text, {"hook"})
    assert parse_sidecar("") == parse_sidecar("{}")


def test_config_rules() -> None:
    c = parse_config("watch: {settle_seconds: 5m, poll_interval: 500ms}\nlease_seconds: 2\n")
    assert c.watch.settle_seconds == 300 and c.watch.poll_interval == 0.5 and c.lease_seconds == 2
    for text, words in [
        ("wacth: {}\n", "unknown key"),
        ("engine: {backend: tpu}\n", "engine.backend"),
        ("chunk_size: 0\n", "chunk_size"),
        ("watch: {settle_seconds: soon}\n", "not a duration"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_config(text)
