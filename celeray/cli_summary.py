"""How the ``celeray`` command prints a run's summary: counts, quarantine, schema changes."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from celeray.sizes import format_size

__all__ = ["print_summary"]

console = Console()
err = Console(stderr=True)


def _kept(s: dict[str, Any]) -> str:
    """Why fewer rows went out than came in, when nothing was quarantined: the pipeline."""
    dropped = int(s.get("rows_in", 0)) - int(s.get("rows_out", 0))
    if dropped > 0 and not s.get("files_quarantined"):
        return f" ({dropped:,} left out by the pipeline's sql or transform)"
    return ""


def print_summary(s: dict[str, Any]) -> None:
    """A run summary (``celeray.run_record.summary_of``) as a table, then what it quarantined,
    what failed and what it did to the table schema."""
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
