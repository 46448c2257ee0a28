"""The ``celeray`` command: validate the pipeline file, trigger runs, follow them."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis.exceptions
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from celeray.cli_maintain import add_parsers as add_maintenance_parsers
from celeray.cli_stack import add_parsers as add_stack_parsers
from celeray.cli_summary import print_summary
from celeray.cli_triage import add_parsers as add_triage_parsers
from celeray.errors import CelerayError, PipelineFileError, RunActiveError
from celeray.runstate import RunStore
from celeray.settings import Settings, get_settings, redact_url

__all__ = ["main"]

console = Console()
err = Console(stderr=True)

EXIT_FAILED = 1  # the run failed, or the pipeline file has problems
EXIT_USAGE = 2  # bad arguments, unknown pipeline, unusable settings
EXIT_BUSY = 3  # the pipeline is already running (and --wait was not given)
_NO_WORKER_HINT_AFTER = 15.0  # seconds a run may sit QUEUED before we suggest a cause


def _store(settings: Settings) -> RunStore:
    return RunStore.from_settings(settings)


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Check the pipeline file and print every problem with its pipeline and key.

    Each ``transform`` is imported as a Ray worker would, in a child process with a time
    limit (:mod:`celeray.transform_probe`): its module's code runs there, and a missing
    module, an import that raises, a missing attribute or a non-callable is named.
    ``--no-import`` only finds the module, running nothing
    (:func:`celeray.transform_ref.find`). A module missing here (the transform's or one it
    imports) is only a warning for a pipeline whose ``ray_env.pip`` may install it on the
    Ray nodes.
    """
    from celeray.errors import PipelineIssue
    from celeray.pipelines import format_issues, load_pipelines
    from celeray.transform_probe import Probe, key, probe_all
    from celeray.transform_ref import TransformLoadError, find

    path = Path(args.file) if args.file else settings.pipelines
    try:
        pipelines = load_pipelines(path, **settings.pipeline_rules(path))
    except PipelineFileError as exc:
        err.print(f"[red]{path}: {len(exc.issues)} problem(s)[/red]", highlight=False)
        err.print(format_issues(exc.issues), highlight=False, markup=False)
        return EXIT_FAILED
    with_transform = {n: p for n, p in pipelines.items() if p.transform is not None}
    probes: dict[Any, Probe] = {}
    if with_transform and not args.no_import:
        with console.status(f"importing {len(with_transform)} transform(s)..."):
            probes = probe_all((p.transform or "", p.ray_env.env_vars)
                               for p in with_transform.values())  # fmt: skip
    issues: list[PipelineIssue] = []
    warnings: list[PipelineIssue] = []
    for name, pipeline in with_transform.items():
        spec = pipeline.transform or ""
        if args.no_import:
            try:
                find(spec)
                continue
            except TransformLoadError as exc:
                found = Probe(spec, exc.kind, str(exc), exc.missing)
        else:
            found = probes[key(spec, pipeline.ray_env.env_vars)]
        if found.ok:
            continue
        message = found.message + _not_searched(spec, found, path)
        if found.missing and pipeline.ray_env.pip:  # a warning: the Ray nodes may install it
            warnings.append(PipelineIssue(name, "transform", f"{message}; ray_env.pip may "
                                          "install it on the Ray nodes"))  # fmt: skip
        else:
            issues.append(PipelineIssue(name, "transform", message))
    if warnings:
        err.print(f"[yellow]{path}: {len(warnings)} warning(s)[/yellow]", highlight=False)
        err.print(format_issues(warnings), highlight=False, markup=False)
    if issues:
        err.print(f"[red]{path}: {len(issues)} problem(s)[/red]", highlight=False)
        err.print(format_issues(issues), highlight=False, markup=False)
        return EXIT_FAILED
    console.print(f"{path}: ok, {len(pipelines)} pipeline(s): {', '.join(sorted(pipelines))}")
    return 0


def _not_searched(spec: str, found: Any, pipeline_file: Path) -> str:
    """A hint when a missing transform module sits in a folder the workers do not search."""
    if found.kind != "not_found":
        return ""
    top = spec.partition(":")[0].split(".")[0]
    for folder in dict.fromkeys((Path.cwd(), pipeline_file.absolute().parent)):
        there = [p for p in (folder / top, folder / f"{top}.py") if p.exists()]
        if there:
            return (f"; {there[0]} is there, but the stack's workers do not search that folder: "
                    "add it to PYTHONPATH before `celeray up`, or install the package")
    return ""


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Trigger a run exactly as beat does; with --wait, follow it to its end."""
    from celeray.celeryconfig import make_client
    from celeray.pipelines import get_pipeline, load_pipelines
    from celeray.runs import trigger_run

    get_pipeline(load_pipelines(settings.pipelines, **settings.pipeline_rules()), args.name)
    store = _store(settings)
    client = make_client(settings)
    try:
        run_id = trigger_run(args.name, store, client, trigger="cli")
    except RunActiveError as exc:
        console.print(f"{args.name} is already running as run {exc.run_id}")
        if not args.wait:
            return EXIT_BUSY
        return _follow(client, store, exc.run_id, args.timeout)
    console.print(f"run {run_id} of {args.name} queued")
    if not args.wait:
        return 0
    return _follow(client, store, run_id, args.timeout)


def _follow(client: Any, store: Any, run_id: str, timeout: float | None) -> int:
    """Show a progress bar fed by the run's PROGRESS state until it ends."""
    result = client.AsyncResult(run_id)
    started = time.monotonic()
    hinted = False
    columns = (
        TextColumn("[bold]{task.fields[pipeline]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files  {task.fields[rows]} rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("run", total=None, pipeline="queued", rows="0")
        while True:
            state = result.state
            info = result.info if isinstance(result.info, dict) else {}
            if state == "PROGRESS":
                bar.update(
                    task,
                    total=info.get("files_total") or None,
                    completed=info.get("files_done", 0),
                    pipeline=info.get("pipeline", ""),
                    rows=f"{info.get('rows_out', 0):,}",
                )
            if state in ("SUCCESS", "FAILURE", "REVOKED"):
                break
            waited = time.monotonic() - started
            if state == "PENDING" and waited > _NO_WORKER_HINT_AFTER and not hinted:
                bar.console.print(
                    "[yellow]still queued: is an io worker running "
                    "(celery -A tasks worker -Q io)?[/yellow]"
                )
                hinted = True
            if timeout is not None and waited > timeout:
                err.print(f"gave up waiting after {timeout:.0f}s; run {run_id} goes on")
                return EXIT_FAILED
            time.sleep(0.3)
        if state == "SUCCESS" and isinstance(result.result, dict):
            total = result.result.get("files_total") or 0
            rows = f"{result.result.get('rows_out', 0):,}"
            bar.update(task, total=total or 1, completed=total or 1, rows=rows)
    record = store.get(run_id) or {}
    if state == "SUCCESS":
        summary = result.result if isinstance(result.result, dict) else {}
        if summary.get("status") == "skipped":
            console.print(f"skipped: run {summary.get('running')} was already running")
            return 0
        print_summary(summary)
        return 0
    err.print(f"[red]run {run_id} {state}[/red]: {result.result}", highlight=False)
    if record:
        from celeray.run_record import summary_of

        print_summary(summary_of(record))
    return EXIT_FAILED


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    """List recent runs, newest first, from the run records; with a pipeline's name, its
    runs' history from its sink's ledger (which outlives the run records)."""
    from celeray.pipelines import load_pipelines
    from celeray.run_record import summary_of

    pipelines = load_pipelines(settings.pipelines, **settings.pipeline_rules())
    names = [args.name] if args.name else sorted(pipelines)
    store = _store(settings)
    if args.name:
        from celeray.backlog import backlog_of
        from celeray.cli_triage import cmd_runs_history

        states = {run_id: str((store.get(run_id) or {}).get("state", "expired"))
                  for run_id in store.recent(args.name, args.limit)}  # fmt: skip
        return cmd_runs_history(args.name, args.limit, settings, states,
                                backlog_of(store, args.name))  # fmt: skip
    table = Table("run", "pipeline", "state", "started", "files", "quarantined", "rows out",
                  "seconds", "backlog")
    for name in names:
        for run_id in store.recent(name, args.limit):
            rec = store.get(run_id)
            if not rec:
                continue
            s = summary_of(rec)
            created = datetime.fromtimestamp(float(rec.get("created_at", 0)), UTC)
            table.add_row(run_id, name, str(rec.get("state")), created.strftime("%F %T"),
                          str(s["files_committed"]), str(s["files_quarantined"]),
                          f"{s['rows_out']:,}", f"{s['seconds']:.1f}",
                          str(rec["backlog_files"]) if "backlog_files" in rec else "")
    console.print(table)
    return 0


def _lazy(module: str, name: str) -> Any:
    """A command whose module is imported only when it runs."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args, settings))

    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="celeray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a pipeline file")
    v.add_argument("file", nargs="?", help="default: $CELERAY_PIPELINES (./pipelines.toml)")
    v.add_argument(
        "--no-import", dest="no_import", action="store_true",
        help="only find each transform's module instead of importing it (runs none of its code)",
    )  # fmt: skip
    v.set_defaults(func=cmd_validate)
    r = sub.add_parser("run", help="trigger a run of one pipeline")
    r.add_argument("name")
    r.add_argument("--wait", action="store_true", help="follow the run; exit 1 if it fails")
    r.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    r.set_defaults(func=cmd_run)
    ls = sub.add_parser("runs", help="list recent runs; with NAME, its history from the ledger")
    ls.add_argument("name", nargs="?")
    ls.add_argument("--limit", type=int, default=10)
    ls.set_defaults(func=cmd_runs)
    sc = sub.add_parser("schema", help="a pipeline's table schema and its history")
    sc.add_argument("name")
    sc.add_argument("--json", action="store_true", help="print it as JSON")
    sc.set_defaults(func=_lazy("celeray.cli_schema", "cmd_schema"))
    add_maintenance_parsers(sub, _lazy)  # compact, vacuum
    add_triage_parsers(sub, _lazy)  # quarantine, files
    add_stack_parsers(sub)  # demo, up, status, down, keys, ray-head
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``celeray`` console script."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "ray-head":
        args.ray_args = rest  # every option is ray start's
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings = get_settings()
    except ValueError as exc:
        err.print(f"[red]bad settings:[/red] {exc}", highlight=False)
        return EXIT_USAGE
    try:
        return int(args.func(args, settings))
    except PipelineFileError as exc:
        err.print(str(exc), highlight=False, markup=False)
        return EXIT_FAILED
    except CelerayError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return EXIT_USAGE
    except (redis.exceptions.RedisError, kombu.exceptions.OperationalError) as exc:
        where = ", ".join(f"{what} {redact_url(url)}" for what, url in (
            ("broker", settings.broker_url), ("state store", settings.effective_state_url)))
        text = escape(f"Redis failed: {type(exc).__name__}: {exc} ({where})")
        err.print(f"[red]error:[/red] {text}", highlight=False)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
