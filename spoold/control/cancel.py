"""`spoold requeue` and `spoold cancel`: operator actions that go through the same states as the daemon."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from spoold.errors import NoSuchJob, SidecarError, SpooldError
from spoold.fsutil import atomic_write_bytes, fsync_dir
from spoold.handlers.config import AnyHandlerConfig
from spoold.handlers.records import plan_runs
from spoold.job.finish import FinishHooks, JobEnd, finish_job
from spoold.job.sidecar import Sidecar, parse_sidecar
from spoold.spool import recent
from spoold.spool.claim import claim
from spoold.spool.jobdir import JobDir
from spoold.spool.layout import Spool
from spoold.spool.names import INPUT_SUFFIX, SIDECAR_SUFFIX
from spoold.spool.states import JobState


def requeue(spool: Spool, name: str) -> str:
    """Move failed/NAME's input and sidecar back into the inbox (sidecar last); the failed attempt is discarded."""
    found = spool.find(name)
    if found is None:
        raise NoSuchJob(f"no job named {name!r} in {spool.root}")
    state, path = found
    if state is not JobState.FAILED:
        raise SpooldError(f"job {name} is in {state.value}/, only failed jobs can be requeued")
    target, marker = spool.inbox / f"{name}{INPUT_SUFFIX}", spool.inbox / f"{name}{SIDECAR_SUFFIX}"
    if target.exists() or marker.exists():
        raise SpooldError(f"a job named {name} is already waiting in the inbox")
    job = JobDir(path)
    if not job.input.is_file() or job.input.is_symlink():
        raise SpooldError(f"job {name} has no input.jsonl that can run again (its batch.json says why it failed)")
    sidecar = job.meta.read_bytes() if job.meta.is_file() and not job.meta.is_symlink() else b"{}\n"  # bytes, as they are
    if job.input.stat().st_nlink > 1:  # e.g. a copy handler linked it to an outbox: the daemon wants one name
        _copy_durably(job.input, target)
    else:
        os.rename(job.input, target)
    fsync_dir(spool.inbox)
    atomic_write_bytes(marker, sidecar)
    shutil.rmtree(path)
    fsync_dir(path.parent)
    return name


def _copy_durably(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.requeue.part")
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    os.rename(tmp, target)


def cancel(spool: Spool, name: str, node: str, handlers: list[AnyHandlerConfig] | None = None) -> str:
    """Cancel a queued job at once, or ask the daemon running it to stop. Returns what happened."""
    found = spool.find(name)
    if found is None:
        raise NoSuchJob(f"no job named {name!r} in {spool.root}")
    state, path = found
    if state is JobState.PROCESSING:
        JobDir(path).cancel_marker.touch()
        fsync_dir(JobDir(path).state)
        return f"cancel requested: the daemon running {name} stops it at its next step; results so far are kept in done/{name}/"
    if state is not JobState.INBOX:
        raise SpooldError(f"job {name} already finished ({state.value}/)")
    job = claim(spool, name, f"{node}:cli")
    if job is None:
        raise SpooldError(f"job {name} was just claimed by a daemon; run `spoold cancel {name}` again to stop it")
    record = job.load_record()
    sidecar = _sidecar_or_default(job)
    hooks = FinishHooks(
        before_move=[lambda job, batch, selected: plan_runs(job.path, batch, selected, handlers or [], node=node)],
        after_move=[lambda job, batch, selected: recent.note(job.path)],
    )
    final, _ = finish_job(
        spool.root, job, record, JobEnd("cancelled"), node=f"{node}:cli", model=sidecar.model,
        metadata=sidecar.metadata, handlers=sidecar.handlers, checkpoint=None, validation=None, chunk_size=None,
        hooks=hooks,
    )  # fmt: skip
    return f"cancelled {name} before it ran -> {final.path}"


def _sidecar_or_default(job: JobDir) -> Sidecar:
    try:
        return parse_sidecar(job.meta.read_bytes()) if job.meta.exists() else Sidecar()
    except (SidecarError, OSError):
        return Sidecar()
