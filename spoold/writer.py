"""Append-only results files with recorded good lengths.

Records are buffered until a checkpoint; `flush` appends and fsyncs them and
returns the new lengths, which the checkpoint then records. On open, anything
past the recorded lengths (a crash between append and checkpoint) is cut.
"""

from __future__ import annotations

import logging

from spoold.fsutil import append_durably, fsync_dir, truncate_to
from spoold.jobdir import JobDir
from spoold.records import BatchRecord

log = logging.getLogger(__name__)


class ResultWriter:
    def __init__(self, job: JobDir, output_bytes: int, errors_bytes: int) -> None:
        self.job = job
        created = not (job.output.exists() and job.errors.exists())
        for path, good in ((job.output, output_bytes), (job.errors, errors_bytes)):
            cut = truncate_to(path, good)
            if cut:
                log.info("cut a torn tail of %d bytes from %s", cut, path.name, extra={"job": job.name})
        if created:
            fsync_dir(job.path)  # the checkpoint will name these files: their names must be durable first
        self.output_bytes = output_bytes
        self.errors_bytes = errors_bytes
        self._output: list[bytes] = []
        self._errors: list[bytes] = []

    def add(self, record: BatchRecord) -> None:
        (self._errors if record.error is not None else self._output).append(record.to_line())

    @property
    def pending(self) -> int:
        return len(self._output) + len(self._errors)

    def flush(self) -> tuple[int, int]:
        if self._output:
            self.output_bytes = append_durably(self.job.output, b"".join(self._output))
            self._output.clear()
        if self._errors:
            self.errors_bytes = append_durably(self.job.errors, b"".join(self._errors))
            self._errors.clear()
        return self.output_bytes, self.errors_bytes
