"""Append-only result segments with recorded good lengths.

Records are buffered until a checkpoint; `flush` appends and fsyncs them and
returns the new lengths, which the checkpoint then records. Each lease
generation writes segments of its own (segments.py); on open, anything past
the recorded lengths (a crash between append and checkpoint) is cut.
"""

from __future__ import annotations

import logging

from spoold.fsutil import append_durably, fsync_dir, truncate_to
from spoold.job.checkpoint import Checkpoint
from spoold.job.records import BatchRecord, encode_records
from spoold.job.segments import segment_path
from spoold.spool.jobdir import JobDir

log = logging.getLogger(__name__)


class ResultWriter:
    def __init__(self, job: JobDir, checkpoint: Checkpoint) -> None:
        """Write generation `checkpoint.gen` of `job` (a job or a shard), from the lengths the checkpoint names."""
        self.job = job
        self.output_path = segment_path(job.path, job.state, checkpoint.gen, "output")
        self.errors_path = segment_path(job.path, job.state, checkpoint.gen, "errors")
        created = not (self.output_path.exists() and self.errors_path.exists())
        for path, good in ((self.output_path, checkpoint.output_bytes), (self.errors_path, checkpoint.errors_bytes)):
            cut = truncate_to(path, good)
            if cut:
                log.info("cut a torn tail of %d bytes from %s", cut, path.name, extra={"job": job.name})
        if created and checkpoint.gen == 0:
            fsync_dir(self.output_path.parent)  # the checkpoint will name these files: their names must be durable first
        # a generation's segments live beside its checkpoints: the directory fsync of the first
        # checkpoint that names them makes their names durable too
        self.output_bytes = checkpoint.output_bytes
        self.errors_bytes = checkpoint.errors_bytes
        self._output: list[bytes] = []
        self._errors: list[bytes] = []

    def add(self, record: BatchRecord) -> None:
        (self._errors if record.error is not None else self._output).append(record.to_line())

    def add_all(self, records: list[BatchRecord]) -> None:
        """`add` for each record, encoded as one block per file (what the commit of a chunk uses)."""
        output, errors = encode_records(records)
        if output:
            self._output.append(output)
        if errors:
            self._errors.append(errors)

    @property
    def pending(self) -> int:
        return len(self._output) + len(self._errors)

    def flush(self) -> tuple[int, int]:
        if self._output:
            self.output_bytes = append_durably(self.output_path, b"".join(self._output))
            self._output.clear()
        if self._errors:
            self.errors_bytes = append_durably(self.errors_path, b"".join(self._errors))
            self._errors.clear()
        return self.output_bytes, self.errors_bytes
