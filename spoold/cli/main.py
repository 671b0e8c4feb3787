"""The `spoold` command (SPEC section 6). User mistakes: one line on stderr, exit 2; never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spoold import __version__
from spoold.cli.api import cmd_api
from spoold.config import Config, load_config
from spoold.errors import SpooldError
from spoold.spool.layout import Spool
from spoold.spool.mounts import split_spool_problem

USER_ERROR = 2


def _spool(args: argparse.Namespace, config: Config) -> Spool:
    return Spool(Path(args.spool) if getattr(args, "spool", None) else config.spool_dir)


def cmd_run(args: argparse.Namespace) -> int:
    from spoold.daemon.loop import Daemon, hold_node
    from spoold.service.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format)
    # vLLM otherwise installs its own stdout logging, bypassing journald priorities.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    node_lock = hold_node(config)  # a second daemon with our node id stops here, in one line
    daemon = Daemon(config, args.config, node_lock=node_lock)
    daemon.install_signals()
    return daemon.run()


def cmd_init(args: argparse.Namespace) -> int:
    from spoold.spool import permissions as spoolperms

    spool = _spool(args, load_config(args.config) if not args.spool else Config())
    done, left, fixable = spoolperms.init(spool.root, args.fix)
    for line in done:
        print(line)
    for line in left:
        print(f"problem: {line}")
    problem = split_spool_problem(spool.root) if spool.root.is_dir() else None
    if problem:
        print(f"spoold init: warning: {problem}", file=sys.stderr)
    if left:
        hint = f"; `spoold init --fix --spool {spool.root}` fixes them" if fixable else ""
        print(f"spoold init: {len(left)} problem(s) left in {spool.root}{hint}", file=sys.stderr)
        return 1
    group = spoolperms.group_name(spool.root)
    print(f"spool ready at {spool.root}: members of group {group} can submit jobs and read results; others have no access")
    return 0


def _shared_umask() -> None:
    """What a command creates in the spool is for the group and nobody else, whatever the caller's umask."""
    from spoold.spool.permissions import SPOOL_UMASK

    os.umask(SPOOL_UMASK)


def cmd_submit(args: argparse.Namespace) -> int:
    _shared_umask()
    from spoold.control.submit import submit

    config = load_config(args.config)
    spool = _spool(args, config)
    job = submit(
        spool, Path(args.file), name=args.name, sidecar_file=Path(args.sidecar) if args.sidecar else None,
        model=args.model, settings=args.set, handler_names={h.name for h in config.handlers},
    )  # fmt: skip
    print(f"submitted {job.name} -> {spool.inbox / job.name}.jsonl", flush=True)
    if not args.wait:
        return 0
    from spoold.control.wait import wait_for_job

    try:
        return wait_for_job(spool, job.name, job.identity)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; {job.name} goes on (spoold status {job.name})", file=sys.stderr)
        return 130


WATCH_SECONDS = 2.0
CLEAR_SCREEN = "\033[H\033[J"


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from spoold.control import status

    config = load_config(args.config)
    spool = _spool(args, config)
    cache = status.WatchCache()

    def frame() -> str:
        rows = status.collect(spool, config.engine.default_model, args.name, show_all=args.all, cache=cache)
        if args.name and not rows:
            raise SpooldError(f"no job named {args.name!r} in {spool.root}")
        if args.json:
            return status.to_json(rows) if not args.watch else json.dumps(rows)  # --watch: one line per refresh
        return status.render(rows, spool, None if args.name else status.count_jobs(spool), shown_all=args.all)

    if not args.watch:
        print(frame())
        return 0
    in_place = sys.stdout.isatty() and not args.json
    try:
        while True:
            text = frame()
            stamp = time.strftime("%H:%M:%S")
            print(f"{CLEAR_SCREEN}{text}\n(refreshed {stamp}; Ctrl-C to quit)" if in_place else text, flush=True)
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from spoold.cli.validate import validate_command

    config = load_config(args.config)
    return validate_command(config, Path(args.file), Path(args.sidecar) if args.sidecar else None)


def cmd_models(args: argparse.Namespace) -> int:
    from spoold.engine.profiles import load_profiles, models_report
    from spoold.tinymodel import ensure_builtin, ensure_builtin_adapter, is_builtin

    config = load_config(args.config)
    profiles = load_profiles(config.engine.model_dirs)
    if args.action == "build":
        built = 0
        for profile in profiles.values():
            if is_builtin(profile.model) and (not args.names or profile.name in args.names):
                print(f"{profile.name}: {ensure_builtin(profile.model, config.engine.state_dir)}")
                built += 1
            for spec in profile.adapters:  # built-in adapters: with their base, or by their own name
                if is_builtin(spec.path) and (not args.names or {profile.name, spec.name} & set(args.names)):
                    print(f"{spec.name}: {ensure_builtin_adapter(spec.path, config.engine.state_dir)}")
                    built += 1
        if not built:
            raise SpooldError("no built-in model profile matched (try `spoold models`)")
        return 0
    print(models_report(profiles, config.engine.state_dir))
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    _shared_umask()
    from spoold.control.cancel import requeue

    spool = _spool(args, load_config(args.config))
    print(f"requeued {requeue(spool, args.name)} -> {spool.inbox}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    _shared_umask()
    from spoold.control.cancel import cancel

    config = load_config(args.config)
    print(cancel(_spool(args, config), args.name, config.node, list(config.handlers)))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from spoold.retention.prune import Removed, prune

    config = load_config(args.config)
    spool = _spool(args, config)
    problem = spool.check()
    if problem:
        raise SpooldError(problem)
    retention = config.retention
    if not retention.enabled:
        print("retention.done and retention.failed are both null (keep forever): nothing to prune")
        return 0
    verb = "would remove" if args.dry_run else "removed"

    def show(removed: Removed) -> None:  # as it happens: a long pass shows progress, and a kill loses no output
        where = f" -> {removed.archived_to}" if removed.archived_to else ""
        print(f"{verb} {removed.due.state}/{removed.due.name}{where}", flush=True)

    report = prune(spool.root, retention, f"{config.node}:cli", dry_run=args.dry_run, on_removed=show)
    if args.dry_run:
        for removed in report.removed:
            show(removed)
    for due in report.kept_pending:
        print(f"kept {due.state}/{due.name}: its handler runs are still pending")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    recovered = f", finished {report.recovered} interrupted" if report.recovered else ""
    print(f"{verb} {len(report.removed)} job(s){recovered}; {len(report.kept_pending)} kept for pending handler runs")
    return 1 if report.errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spoold", description="A directory that is a batch LLM inference queue.")
    parser.add_argument("--version", action="version", version=f"spoold {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: $SPOOLD_CONFIG, then /etc/spoold/spoold.yaml)")
    with_spool = argparse.ArgumentParser(add_help=False, parents=[common])
    with_spool.add_argument("--spool", help="spool directory (default: spool_dir from the config)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str, spool: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[with_spool if spool else common])
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "run the daemon in the foreground (what systemd starts)", spool=False)
    p = add("submit", cmd_submit, "drop a job into the inbox safely (temp name, rename; sidecar last)")
    p.add_argument("file", help="the FILE.jsonl of requests")
    p.add_argument("--model", help="model profile name or local model directory")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="sidecar setting, e.g. sampling.max_tokens=64 (repeatable)"
    )
    p.add_argument("--name", help="job name (default: the file's stem)")
    p.add_argument("--sidecar", help="sidecar YAML to start from (default: FILE.yaml beside the input, if any)")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends; exit 0 only if it completed")
    p = add("status", cmd_status, "queue and progress, per job: active and recent jobs")
    p.add_argument("name", nargs="?", help="show only this job")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="every finished job, not only the recent ones")
    p.add_argument("--watch", action="store_true", help=f"refresh in place every {WATCH_SECONDS:g} s until Ctrl-C")
    p = add("validate", cmd_validate, "check a job offline; exits non-zero on fatal problems", spool=False)
    p.add_argument("file", help="the FILE.jsonl to check")
    p.add_argument("sidecar", nargs="?", help="its sidecar (default: FILE.yaml beside it, if any)")
    p = add("models", cmd_models, "list the model profiles (`models build` builds the built-in tiny models)", spool=False)
    p.add_argument("action", nargs="?", choices=["list", "build"], default="list")
    p.add_argument("names", nargs="*", help="with build: only these profiles")
    p = add("requeue", cmd_requeue, "move a failed job back to the inbox")
    p.add_argument("name")
    p = add("cancel", cmd_cancel, "stop a queued or running job (results so far are kept)")
    p.add_argument("name")
    p = add("init", cmd_init, "create the spool layout, shared with the spool's group; report wrong modes")
    p.add_argument("--fix", action="store_true", help="also fix the modes and groups of existing folders")
    p = add("prune", cmd_prune, "apply the retention policy now (retention: in the config)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; change nothing")
    add("api", cmd_api, "serve the OpenAI Files and Batches API on the spool (api: in the config)", spool=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpooldError as exc:
        print(f"spoold {args.command}: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f" {exc.filename}" if exc.filename else ""
        print(f"spoold {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return USER_ERROR
