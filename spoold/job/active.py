"""One job in the engine: yields its next requests, takes its results, cuts its checkpoints.

An `ActiveJob` is the main thread's view of a claimed, validated job whose
model is loaded. The engine loop (engine/loop.py) asks it for requests and
hands it results; when a chunk's worth of records is finished, `cut()` takes
them together with the matching low-water mark, and the job I/O thread makes
them durable (jobcommit.py). Several active jobs share one engine; each keeps
its own reader, records, checkpoint, lease and flags.

Flags set from other threads (`lost`, `cancel`, `trouble`) are plain
attribute writes, read by the main thread at its next step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

from spoold.config import Config
from spoold.engine.base import EngineRequest, EngineResult
from spoold.engine.profiles import ModelProfile
from spoold.job.batch import chunk_count
from spoold.job.checkpoint import Checkpoint, Progress
from spoold.job.finish import FinishHooks
from spoold.job.lines import LineError, known_good_request
from spoold.job.reader import RawLine, read_lines
from spoold.job.records import BatchRecord, error_record, success_record
from spoold.job.sidecar import Sidecar
from spoold.job.validate import ValidationSummary, judge
from spoold.job.writer import ResultWriter
from spoold.spool import lease as leases
from spoold.spool.jobdir import JobDir, JobRecord

MAX_PENDING_CUTS = 4
"""Cuts of one job that may wait for their commit before the job is fed no more."""


class JobHooks(Protocol):
    def should_stop(self) -> bool: ...
    def beat(self, status: str) -> None: ...
    def chunk_committed(
        self, seconds: float, succeeded: int, failed: int, prompt_tokens: int, completion_tokens: int, model: str = ""
    ) -> None: ...  # fmt: skip


@dataclass
class JobContext:
    """What every job needs from the daemon; the same object for all jobs."""

    config: Config
    node: str
    spool_root: Path
    profiles: dict[str, ModelProfile]
    hooks: JobHooks
    finish_hooks: FinishHooks = field(default_factory=FinishHooks)
    handler_names: set[str] | None = None
    prevalidated: Callable[[Path, str, Callable[[], bool]], ValidationSummary | None] | None = None
    """A validating pass done ahead of time for this very input file, if any (see prevalidate.py)."""
    validate_aside: Callable[[Path, str, Callable[[], bool], frozenset[str] | None], ValidationSummary | None] | None = None
    """A small input's pass run now in the ahead-of-time pass's worker process (None: validate inline)."""
    run_id: str = ""
    """This daemon process's run (its node lock, nodelock.py); recorded with each attempt it opens."""


@dataclass
class Tally:
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Cut:
    """Finished records and the checkpoint position that names them: committed together or not at all."""

    records: list[BatchRecord]
    next_line: int
    next_offset: int
    done_above: list[int]
    tally: Tally
    seconds: float


class ActiveJob:
    def __init__(
        self, ctx: JobContext, job: JobDir, lease: leases.Lease, record: JobRecord, sidecar: Sidecar,
        profile: ModelProfile, validation: ValidationSummary, checkpoint: Checkpoint, writer: ResultWriter,
    ) -> None:  # fmt: skip
        self.ctx, self.job, self.lease, self.record = ctx, job, lease, record
        self.sidecar, self.profile, self.validation = sidecar, profile, validation
        self.checkpoint, self.writer = checkpoint, writer
        self.progress = Progress(checkpoint)
        self.lease_lock = threading.Lock()
        self.last_renew = time.monotonic()
        self.last_live = 0.0
        """When the job I/O thread last wrote the live batch.json (monotonic; commit.py)."""
        self.started = time.monotonic()
        self.rate: float | None = None
        self.span = getattr(job, "span", None)
        """For a shard (shards.ShardDir): its range of the input; None for a whole job."""
        self._lines: Generator[RawLine, None, None] | None = None
        self._records: list[BatchRecord] = []
        self._cuts: list[Cut] = []
        self.commits: list[Future] = []
        """Cuts handed to the job's I/O lane and not committed yet (main thread only)."""
        self._tally = Tally()
        self._chunk_started = time.monotonic()
        self.exhausted = False
        self.in_engine = 0
        self.fed = False
        """True once a request went into the engine in this run (the attempt is then opened on disk)."""
        self._attempt_opened = False
        # set by other threads (keeper, job I/O), read by the main thread:
        self.lost = False
        self.cancel = False
        self.trouble: BaseException | None = None

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def model(self) -> str:
        """The job's model as results name it: its adapter, if it asks for one (`engine_model` is then the base)."""
        return self.profile.served_name

    @property
    def engine_model(self) -> str:
        """The loaded model this job runs on: an adapter job runs on its base's engine (no model switch)."""
        return self.profile.name

    @cached_property
    def _adapter(self) -> tuple[str, str] | None:
        spec = self.profile.adapter
        return (spec.name, spec.path) if spec else None

    @property
    def priority(self) -> int:
        return self.sidecar.priority

    @property
    def chunk_size(self) -> int:
        return self.sidecar.chunk_size or self.ctx.config.chunk_size

    # ---- feeding (main thread) -------------------------------------------------------------

    def next_request(self) -> EngineRequest | None:
        """Read one input line. A request to add, or None (blank, already done, or a line error recorded).

        The line is marked open before it is returned: if adding it fails, the
        checkpoint still names it as not done.
        """
        if self._lines is None:
            self._lines = read_lines(self.job.input, self.checkpoint.next_offset, self.checkpoint.next_line, self.ctx.config.max_line_bytes)
        raw = next(self._lines, None)
        if raw is not None and self.span is not None and raw.offset >= self.span.end:
            raw = None  # the next shard's first line
        if raw is None:
            self.exhausted = True
            self._lines.close()
            return None
        self.progress.read(raw.number, raw.end)
        if self.progress.already_done(raw.number):
            return None
        parsed = self.parse(raw)
        if parsed is None:
            return None
        if isinstance(parsed, LineError):
            self._add(error_record(parsed.custom_id, parsed.line, parsed.code, parsed.message), parsed.line, failed=True)
            return None
        self.progress.dispatched(raw.number, raw.offset)
        self.in_engine += 1
        self.fed = True
        sampling = self.sidecar.sampling
        if sampling:
            parsed.body = {**sampling, **parsed.body}
        parsed.adapter = self._adapter
        return parsed

    def parse(self, raw: RawLine) -> EngineRequest | LineError | None:
        """One input line as the validating pass judged it (later duplicates of a custom_id are errors)."""
        if self._all_valid:  # the pass found every line valid: decode and take apart, no second judgement
            try:
                return known_good_request(raw, self.profile.serves)
            except Exception:  # noqa: BLE001 - not as its pass saw it: judged in full below
                pass
        return judge(raw, self.model, self._duplicates, self.profile.serves)

    @cached_property
    def _all_valid(self) -> bool:
        return self.validation.invalid == 0 and not self.validation.duplicates

    @cached_property
    def _duplicates(self) -> frozenset[int]:
        return frozenset(self.validation.duplicates)

    def take(self, line: int, result: EngineResult) -> None:
        """A finished request of this job (success, or that line's error)."""
        self.in_engine -= 1
        if result.error is not None or result.body is None:
            code, message = (result.error.code, result.error.message) if result.error else ("engine_error", "no response")
            self._add(error_record(result.custom_id, line, code, message), line, failed=True)
            return
        tally = self._tally
        tally.prompt_tokens += result.prompt_tokens
        tally.completion_tokens += result.completion_tokens
        self._add(success_record(result.custom_id, result.body), line, failed=False)

    def _add(self, record: BatchRecord, line: int, failed: bool) -> None:
        self._records.append(record)
        if failed:
            self._tally.failed += 1
        else:
            self._tally.succeeded += 1
        self.progress.finished(line)
        if len(self._records) >= self.chunk_size:
            self._cuts.append(self.cut())

    def attempt_to_open(self) -> bool:
        """True once, right after the job's first request went into the engine: from then on a crash
        may be this job's doing, so its attempt is opened on disk (jobcommit.open_attempt)."""
        if self.fed and not self._attempt_opened:
            self._attempt_opened = True
            return True
        return False

    def dropped(self, count: int) -> None:
        """`count` of this job's requests were aborted in the engine: they stay open, re-run on resume."""
        self.in_engine -= count

    # ---- checkpoints (main thread cuts, the job I/O thread commits) ------------------------

    @property
    def drained(self) -> bool:
        """Every line read and answered: the last cut ends the job."""
        return self.exhausted and self.in_engine == 0

    def backlogged(self) -> bool:
        """Too many cuts wait for their commit: feed this job no more until its lane catches up.

        Keeps memory bounded (at most MAX_PENDING_CUTS x chunk_size records per job) when the
        disk is slower than the engine, instead of queueing records without end."""
        self.commits = [f for f in self.commits if not f.done()]
        return len(self.commits) >= MAX_PENDING_CUTS

    def full_cuts(self) -> list[Cut]:
        """Cuts of exactly `chunk_size` records taken as results came in, oldest first."""
        cuts, self._cuts = self._cuts, []
        return cuts

    def remaining(self) -> int:
        """Lines not read yet (about: blank lines count too)."""
        if self.exhausted:
            return 0
        last = self.span.first_line + self.span.lines - 1 if self.span else self.validation.lines
        return max(0, last - self.progress.read_line + 1)

    def cut(self) -> Cut:
        """Take the finished records and the low-water mark that names exactly them."""
        line, offset, done_above = self.progress.commit_view()
        now = time.monotonic()
        cut = Cut(self._records, line, offset, done_above, self._tally, max(now - self._chunk_started, 1e-9))
        self._records, self._tally, self._chunk_started = [], Tally(), now
        return cut

    def status_line(self) -> str:
        ckpt, total = self.checkpoint, self.validation.lines
        if self.span is not None:  # a shard: its own lines (blank ones too) and checkpoints
            total = self.span.lines
        chunks = chunk_count(total, self.chunk_size)
        rate = f", {self.rate:.1f} req/s" if self.rate else ""
        return f"{self.name}: chunk {min(ckpt.chunks + 1, max(chunks, 1))}/{chunks}, {ckpt.records}/{total} lines{rate}"

    def close_reader(self) -> None:
        if self._lines is not None:
            self._lines.close()
