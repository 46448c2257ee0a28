"""``celeray compact NAME`` and ``celeray vacuum NAME``: table maintenance on demand.

Each sends its task by name to the ``ray`` queue (the worker connected to Ray runs it as Ray
tasks, :mod:`tasks.maintain`) and waits for the report. Exit codes as ``celeray run``: 0
done, 1 failed, 2 bad arguments, 3 another maintenance of the table is running.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console

from celeray.errors import ConfigError
from celeray.settings import Settings

__all__ = ["add_parsers", "cmd_compact", "cmd_vacuum"]

console = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_BUSY = 1, 3  # as celeray.cli's
WAIT_MARGIN = 60.0  # s beyond the task time limit: the queue's wait for a free ray worker


def add_parsers(sub: Any, lazy: Callable[[str, str], Any]) -> None:
    """Add ``compact`` and ``vacuum`` to the ``celeray`` command's subcommands."""
    c = sub.add_parser("compact", help="compact a pipeline's table (small files into big ones)")
    c.add_argument("name")
    c.add_argument("--target-size", dest="target_size", default=None,
                   help="target file size (e.g. 128MiB); default: the pipeline's")  # fmt: skip
    v = sub.add_parser("vacuum", help="delete files no version within the retention needs")
    v.add_argument("name")
    v.add_argument("--retention", default=None,
                   help="e.g. 7d, 36h; never below CELERAY_TASK_TIME_LIMIT; default: the "
                   "pipeline's")  # fmt: skip
    for p, func in ((c, "cmd_compact"), (v, "cmd_vacuum")):
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
        p.set_defaults(func=lazy("celeray.cli_maintain", func))


def cmd_compact(args: argparse.Namespace, settings: Settings) -> int:
    """Compact the table of pipeline ``args.name`` and print what changed."""
    from celeray.sizes import parse_size

    kwargs: dict[str, Any] = {}
    if args.target_size is not None:
        try:
            kwargs["target_size"] = parse_size(args.target_size)
        except ValueError as exc:
            raise ConfigError(f"--target-size: {exc}") from None
    return _send("compact", args, settings, kwargs)


def cmd_vacuum(args: argparse.Namespace, settings: Settings) -> int:
    """Vacuum the table of pipeline ``args.name``; a retention below the task time limit
    given here is refused (one in the pipeline file is raised to it, with a note)."""
    from celeray.maintenance_spec import effective_retention, parse_duration

    kwargs: dict[str, Any] = {}
    if args.retention is not None:
        try:
            seconds = parse_duration(args.retention)
        except ValueError as exc:
            raise ConfigError(f"--retention: {exc}") from None
        _, why = effective_retention(seconds, settings.task_time_limit)
        if why:
            raise ConfigError(f"--retention {args.retention}: refused: {why.split(': using')[0]}")
        kwargs["retention"] = args.retention
    return _send("vacuum", args, settings, kwargs)


def _send(task: str, args: argparse.Namespace, settings: Settings,
          kwargs: dict[str, Any]) -> int:  # fmt: skip
    from celeray.celeryconfig import RAY_QUEUE, TASK_NAMES, make_client
    from celeray.pipelines import get_pipeline, load_pipelines

    get_pipeline(load_pipelines(settings.pipelines, **settings.pipeline_rules()), args.name)
    client = make_client(settings)
    result = client.send_task(TASK_NAMES[task], args=[args.name], kwargs=kwargs, queue=RAY_QUEUE)
    if not args.json:
        console.print(f"{task} of {args.name} sent ({result.id}); waiting for the ray worker")
    timeout = args.timeout or settings.task_time_limit + WAIT_MARGIN
    try:
        report = result.get(timeout=timeout, propagate=True)
    except Exception as exc:
        busy = type(exc).__name__ == "MaintenanceBusyError"
        err.print(f"[red]{task} of {args.name} {'refused' if busy else 'failed'}:[/red] "
                  f"{type(exc).__name__}: {exc}", highlight=False)  # fmt: skip
        return EXIT_BUSY if busy else EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    for note in report.get("notes") or []:
        console.print(f"note: {note}", highlight=False)
    shown = {k: v for k, v in report.items() if k not in ("notes", "deleted", "recovered")}
    console.print(", ".join(f"{k}={v}" for k, v in sorted(shown.items())), highlight=False)
    return 0
