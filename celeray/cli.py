"""The ``celeray`` command: validate the pipeline file, trigger runs, follow them."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
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
from celeray.cli_triage import add_parsers as add_triage_parsers
from celeray.errors import CelerayError, PipelineFileError, RunActiveError
from celeray.runstate import RunStore
from celeray.settings import Settings, get_settings, redact_url
from celeray.sizes import format_size

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
        _print_summary(summary)
        return 0
    err.print(f"[red]run {run_id} {state}[/red]: {result.result}", highlight=False)
    if record:
        from celeray.runs import summary_of

        _print_summary(summary_of(record))
    return EXIT_FAILED


def _kept(s: dict[str, Any]) -> str:
    """Why fewer rows went out than came in, when nothing was quarantined: the pipeline."""
    dropped = int(s.get("rows_in", 0)) - int(s.get("rows_out", 0))
    if dropped > 0 and not s.get("files_quarantined"):
        return f" ({dropped:,} left out by the pipeline's sql or transform)"
    return ""


def _print_summary(s: dict[str, Any]) -> None:
    table = Table(title=f"run {s.get('run_id')} of {s.get('pipeline')}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("files", f"{s.get('files_listed', 0)} listed, {s.get('files_skipped', 0)} already "
                  f"done, {s.get('files_committed', 0)} committed, "
                  f"{s.get('files_quarantined', 0)} quarantined"),
        ("rows", f"{s.get('rows_in', 0):,} in, {s.get('rows_out', 0):,} out" + _kept(s)),
        ("bytes", f"{format_size(s.get('bytes_in', 0))} in, "
                  f"{format_size(s.get('bytes_out', 0))} out"),
        ("time", f"{s.get('seconds', 0):.1f} s, {s.get('mb_per_s', 0)} MB/s"),
        *([("backlog", f"{s['backlog_files']:,} file(s), "
                       f"{format_size(s.get('backlog_bytes', 0))} left for the next run")]
          if s.get("backlog_files") else []),
        ("sink", str(s.get("sink"))),
    ]
    versions = s.get("delta_versions") or {}
    if versions:  # a Delta sink: each batch one commit
        known = sorted(v for v in versions.values() if v is not None)
        span = f"{known[0]}..{known[-1]}" if len(known) > 1 else (known[0] if known else "-")
        rows.append(("delta", f"{len(versions)} batch commit(s), versions {span}"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for q in s.get("quarantined", []):
        where = f" line {q['line']}" if q.get("line") else ""
        console.print(f"[yellow]quarantined[/yellow] {q['url']}{where}: {q['error']}",
                      highlight=False)
    for e in s.get("errors", []):
        err.print(f"[red]batch {e['batch_id']} failed[/red]: {e['error']}", highlight=False)
    _print_schema(s)
    for url in s.get("changed_after_commit", []):
        console.print(f"[yellow]changed after commit, skipped[/yellow] {url}", highlight=False)


def _print_schema(s: dict[str, Any]) -> None:
    """What the run did to the table schema and to rows that did not fit it."""
    schema = s.get("schema") or {}
    changes = (schema.get("changes") or {}).get("table") or []
    pinned = [c for c in changes if c.endswith("(pinned)")]
    if pinned:
        console.print(f"schema pinned: {len(pinned)} column(s)", highlight=False)
    for c in changes:
        if not c.endswith("(pinned)"):
            console.print(f"[cyan]schema[/cyan] {c}", highlight=False)
    for column, values in sorted((schema.get("dropped_columns") or {}).items()):
        console.print(f"[yellow]column not taken[/yellow] {column}: {values:,} value(s) dropped "
                      '(schema_evolution = "none")', highlight=False)  # fmt: skip
    if s.get("rows_rescued"):
        console.print(f"{s['rows_rescued']:,} row(s) kept a value in _rescued_data "
                      f"({s.get('values_rescued', 0):,} value(s))", highlight=False)  # fmt: skip
    if s.get("rows_skipped"):
        console.print(f"[yellow]{s['rows_skipped']:,} bad row(s) skipped[/yellow] into "
                      f"{s.get('sink')}/_celeray/rejects/", highlight=False)  # fmt: skip


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    """List recent runs, newest first, from the run records; with a pipeline's name, its
    runs' history from its sink's ledger (which outlives the run records)."""
    from celeray.pipelines import load_pipelines
    from celeray.runs import summary_of

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


def _print_stack(settings: Settings, info: Any) -> None:
    from celeray import credentials

    table = Table(title=f"celeray stack in {info.home}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("API", f"{info.api_url}/api/v1  (Authorization: Bearer <token>)")
    table.add_row("API token", credentials.api_token(settings))
    table.add_row("Flower", f"{info.flower_url}  user {settings.flower_user}, password "
                  f"{credentials.flower_password(settings)}")
    table.add_row("Ray", info.ray_address)
    table.add_row("Redis", f"started under supervisor ({info.redis_server})"
                  if info.redis_supervised else "the one already running")
    table.add_row("logs", str(info.logs))
    console.print(table)


def _print_backlogs(settings: Settings) -> None:
    """Each pipeline's backlog as its newest listing left it (nothing if unknown)."""
    from celeray.backlog import backlog_of
    from celeray.cli_triage import backlog_line
    from celeray.pipelines import load_pipelines

    try:
        store = _store(settings)
        for name in load_pipelines(settings.pipelines, **settings.pipeline_rules()):
            found = backlog_of(store, name)
            if found is not None:
                console.print(backlog_line(name, found), highlight=False)
    except Exception as exc:  # status must show what it can: the stack may be half up
        err.print(f"backlog unknown: {type(exc).__name__}: {exc}", highlight=False)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start the whole stack under supervisord and wait until it is healthy."""
    from celeray import stack

    with console.status("starting the stack (Ray head, workers, beat, Flower, API)..."):
        info = stack.up(settings)
    _print_stack(settings, info)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show each supervised program, the API's health answer and each pipeline's backlog."""
    from celeray import stack

    states, code, body = stack.status(settings)
    if not states:
        console.print(f"no stack is running for {settings.home.resolve()}")
        return EXIT_FAILED
    table = Table("program", "state")
    for name, state in sorted(states.items()):
        table.add_row(name, state)
    console.print(table)
    console.print(f"health: {code or 'no answer'}")
    console.print_json(json.dumps(body))
    _print_backlogs(settings)
    return 0 if code == 200 else EXIT_FAILED


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    """Stop the stack gracefully; workers finish or hand back their tasks."""
    from celeray import stack

    with console.status("stopping the stack..."):
        stopped = stack.down(settings)
    console.print("stopped" if stopped else f"no stack was running for {settings.home.resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Demo workspace, stack up, a run through the HTTP API, and where everything is."""
    from celeray import credentials
    from celeray.demo import run_demo

    workdir = Path(args.dir).resolve()
    doc = run_demo(settings, workdir, console)
    if doc.get("state") != "SUCCESS":
        err.print(f"[red]the demo run failed[/red]: {doc.get('error')}", highlight=False)
        return EXIT_FAILED
    _print_summary(doc["result"])
    lake = workdir / "lake" / "flights"
    # soft_wrap: paths, passwords, tokens and SQL are never cut by a narrow terminal or a pipe
    say = functools.partial(console.print, soft_wrap=True, highlight=False, markup=False)
    say(f"A Delta table (zstd Parquet) is in {lake}; read it with")
    for line in reading_hints(str(lake), (doc.get("result") or {}).get("delta_version")):
        say(f"  {line}")
    say(f"Flower:    http://127.0.0.1:{settings.flower_port}  user {settings.flower_user}, "
        f"password {credentials.flower_password(settings)}")
    say(f"API:       http://127.0.0.1:{settings.api_port}/api/v1  token "
        f"{credentials.api_token(settings)}")
    exe = _command()
    say("The stack stays up. From this folder:")
    say(f"  export CELERAY_PIPELINES={workdir / 'pipelines.toml'}")
    say(f"  {exe} status;  {exe} runs flights;  {exe} down")
    return 0


def reading_hints(table: str, version: int | None) -> list[str]:
    """How to read the Delta table at ``table`` (a local path) with each reader, and how
    to read it as it was before the run's last batch (time travel)."""
    hints = [
        f'deltalake: DeltaTable("{table}").to_pandas()',
        f'Polars:    polars.read_delta("{table}")',
        f"DuckDB:    INSTALL delta; LOAD delta; SELECT count(*) FROM delta_scan('{table}');",
    ]
    if version:
        hints.append(f'before the last batch: polars.read_delta("{table}", version={version - 1})')
    return hints


def _command() -> str:
    """How the user calls this command: ``celeray`` when that is it on PATH, else its path."""
    this = Path(sys.argv[0]).resolve()
    found = shutil.which("celeray")
    return "celeray" if found and Path(found).resolve() == this else str(this)


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Make the key pair that signs task messages, where the settings say, if missing."""
    from celeray import credentials, signing

    key, cert = credentials.signing_keys(settings)
    signing.check(signing.key_material(settings))
    console.print(f"signing key:  {key} (private: senders and workers only, never Flower)")
    console.print(f"certificate:  {cert} (public: every worker trusts it)")
    return 0


def cmd_ray_head(args: argparse.Namespace, settings: Settings) -> int:
    """``ray start --head --block`` with the given options, ending when its raylet dies.

    See :mod:`celeray.ray_head`; supervisor's ``ray-head`` program runs this.
    """
    from celeray.ray_head import run_head

    return run_head(list(args.ray_args))


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
    d = sub.add_parser("demo", help="lay out a demo, start the stack, run it over HTTP")
    d.add_argument("--dir", default="celeray-demo", help="demo workspace (default ./celeray-demo)")
    d.set_defaults(func=cmd_demo)
    for name, func, text in (
        ("up", cmd_up, "start the whole stack under supervisor"),
        ("status", cmd_status, "show the stack's programs and health"),
        ("down", cmd_down, "stop the stack"),
        ("keys", cmd_keys, "make the key pair that signs task messages, if missing"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)
    h = sub.add_parser(
        "ray-head", help="ray start --head --block OPTIONS; exits when its raylet dies",
        description="Every option is passed on to `ray start --head --block`.",
    )
    h.set_defaults(func=cmd_ray_head, ray_args=[])
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
