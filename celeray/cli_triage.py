"""``celeray quarantine list|show|replay|dismiss NAME``, ``celeray files NAME [GLOB]`` and
``celeray runs NAME``: a pipeline's quarantined inputs, where each input went, its runs.

Everything here reads the sink's ledger (:mod:`celeray.quarantine`,
:mod:`celeray.file_history`), so it answers after the result backend forgot a run. A
decision is recorded as ``cli:<OS user>``.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from celeray.settings import Settings
from celeray.sizes import format_size

__all__ = ["add_parsers", "cli_user", "cmd_files", "cmd_quarantine", "cmd_runs_history"]

console = Console()


def cli_user() -> str:
    """Who a CLI decision is recorded as: ``cli:<login name>`` (``cli:unknown`` without)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def add_parsers(sub: Any, lazy: Callable[[str, str], Any]) -> None:
    """Add ``quarantine`` and ``files`` to the ``celeray`` command's subcommands."""
    q = sub.add_parser("quarantine", help="a pipeline's quarantined inputs: list, show, "
                       "replay or dismiss them")  # fmt: skip
    q.add_argument("action", choices=["list", "show", "replay", "dismiss"])
    q.add_argument("name")
    q.add_argument("url", nargs="?", help="the input's URL (show, replay, dismiss)")
    q.add_argument("--kind", help="list: only this error kind (parse, schema, poison, ...)")
    q.add_argument("--glob", help="list: only URLs or file names matching this glob")
    q.add_argument("--all", dest="include_all", action="store_true",
                   help="list: also dismissed inputs and replays committed since")  # fmt: skip
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=lazy("celeray.cli_triage", "cmd_quarantine"))
    f = sub.add_parser("files", help="where each input of a pipeline went")
    f.add_argument("name")
    f.add_argument("glob", nargs="?", help="only URLs or file names matching this glob")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(func=lazy("celeray.cli_triage", "cmd_files"))


def _sink(settings: Settings, name: str) -> str:
    from celeray.pipelines import get_pipeline, load_pipelines

    return get_pipeline(load_pipelines(settings.pipelines, **settings.pipeline_rules()), name).sink


def _when(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, tz=UTC).strftime("%F %T")


def cmd_quarantine(args: argparse.Namespace, settings: Settings) -> int:
    """Run one quarantine action; exit 2 (as bad arguments) when the URL is missing or
    the input is not quarantined."""
    from celeray.errors import ConfigError
    from celeray.quarantine import Triage

    triage = Triage(_sink(settings, args.name))
    if args.action == "list":
        items = triage.items(kind=args.kind, glob=args.glob, include_all=args.include_all)
        if args.json:
            print(json.dumps(items, indent=1))
            return 0
        table = Table("url", "kind", "line", "reason", "status", "quarantined (UTC)",
                      title=f"{args.name}: quarantined inputs")  # fmt: skip
        for i in items:
            table.add_row(escape(i["url"]), str(i["kind"]), str(i["line"] or ""),
                          escape(str(i["reason"])[:200]), i["status"],
                          _when(i["quarantined_at"]))  # fmt: skip
        console.print(table)
        return 0
    if not args.url:
        raise ConfigError(f"quarantine {args.action} needs the input's URL")
    if args.action == "show":
        item = triage.show(args.url)
    elif args.action == "replay":
        item = triage.replay(args.url, cli_user())
    else:
        item = triage.dismiss(args.url, cli_user())
    if args.json:
        print(json.dumps(item, indent=1))
        return 0
    for key in ("url", "status", "kind", "reason", "line", "row", "batch_id", "run_id"):
        console.print(f"{key}: {escape(str(item[key]))}", highlight=False)
    console.print(f"quarantined_at: {_when(item['quarantined_at'])}", highlight=False)
    d = item["decision"]
    if d is not None:
        console.print(f"decision: {d['action']} by {escape(d['by'])} at {_when(d['at'])}",
                      highlight=False)  # fmt: skip
    return 0


def cmd_files(args: argparse.Namespace, settings: Settings) -> int:
    """Print where each input of pipeline ``args.name`` went."""
    from celeray.file_history import file_history

    found = file_history(_sink(settings, args.name), args.glob)
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    table = Table("url", "state", "when (UTC)", "run", "batch", "rows in", "where",
                  title=f"{args.name}: inputs")  # fmt: skip
    for f in found:
        if f["state"] == "committed":
            where = (
                f"delta version {f['delta_version']}"
                if "delta_version" in f
                else "\n".join(f["outputs"][:3]) + (" ..." if len(f["outputs"]) > 3 else "")
            )
            rows = "" if f["rows_in"] is None else f"{f['rows_in']:,}"
        else:
            where, rows = f"{f['status']}: {f['kind']}: {str(f['reason'])[:120]}", ""
        if f.get("archived"):
            to = f["archived"]["to"]
            where += f"\ninput moved to {to}" if to else "\ninput deleted"
        table.add_row(escape(f["url"]), f["state"], _when(f["committed_at"]),
                      str(f["run_id"]), f["batch_id"], rows, escape(where))  # fmt: skip
    console.print(table)
    return 0


def cmd_runs_history(
    name: str, limit: int, settings: Settings, states: dict[str, str],
    backlog: dict[str, Any] | None = None,
) -> int:
    """Print pipeline ``name``'s runs from its sink's ledger, newest first; ``states`` are
    the run records' states still in the state store (a run not found there shows
    ``expired``; one found there alone, such as a run still planning, shows too), and
    ``backlog`` what the newest listing left (:func:`celeray.backlog.backlog_of`)."""
    from celeray.file_history import run_history

    history = run_history(_sink(settings, name), limit)
    table = Table(
        "run",
        "state",
        "first commit",
        "last commit",
        "batches",
        "files",
        "quarantined",
        "rows in",
        "rows out",
        title=f"{name}: runs (from the ledger)",
    )
    seen = set()
    for r in history:
        seen.add(r["run_id"])
        table.add_row(
            r["run_id"],
            states.get(r["run_id"], "expired"),
            _when(r["started_at"]),
            _when(r["ended_at"]),
            str(r["batches"]),
            str(r["files_committed"]),
            str(r["files_quarantined"]),
            f"{r['rows_in']:,}",
            f"{r['rows_out']:,}",
        )
    for run_id, state in states.items():
        if run_id not in seen:
            table.add_row(run_id, state, "", "", "0", "0", "0", "0", "0")
    console.print(table)
    if backlog is not None:
        console.print(backlog_line(name, backlog), highlight=False)
    return 0


def backlog_line(name: str, backlog: dict[str, Any]) -> str:
    """One line: what pipeline ``name``'s newest listing left for the next runs."""
    return (f"{name}: backlog {backlog['files']:,} file(s), {format_size(backlog['bytes'])} "
            f"(as listed by run {backlog['run_id']})")  # fmt: skip
