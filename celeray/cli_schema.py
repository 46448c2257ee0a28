"""``celeray schema NAME``: a sink's table schema and how it came to be."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from celeray.schema_log import SchemaLog, TableSchema
from celeray.settings import Settings

__all__ = ["cmd_schema"]

console = Console()


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    """Print a pipeline's table schema (the columns readers see) and its history."""
    from celeray.pipelines import get_pipeline, load_pipelines

    pipeline = get_pipeline(
        load_pipelines(settings.pipelines, **settings.pipeline_rules()), args.name
    )
    doc = SchemaLog(pipeline.sink).describe()
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    if doc["version"] is None:
        console.print(f"{args.name}: no batch has committed yet, so no schema is pinned "
                      f"({pipeline.sink})", highlight=False)  # fmt: skip
        return 0
    history = SchemaLog(pipeline.sink).history()
    _print_columns(args.name, history[-1], pipeline.sink)
    table = Table("version", "when (UTC)", "batch", "run", "changes", title="history")
    for v in history:
        when = datetime.fromtimestamp(v.at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        changes = [str(c) for c in v.changes.get("table", [])]
        if len(changes) > 6:
            changes = [*changes[:5], f"... {len(changes) - 5} more"]
        table.add_row(str(v.version), when, v.batch_id or "", v.run_id or "",
                      "\n".join(changes) or "(input columns only)")  # fmt: skip
    console.print(table)
    return 0


def _print_columns(name: str, current: TableSchema, sink: str) -> None:
    table = Table("column", "type", title=f"{name}: table schema v{current.version} ({sink})")
    for f in current.table:
        table.add_row(f.name, str(f.type))
    console.print(table)
    if not current.input.equals(current.table):
        extra = [f"{f.name} {f.type}" for f in current.input if f.name not in current.table.names]
        if extra:
            console.print("read but not written (the pipeline's sql or transform leaves them "
                          f"out): {', '.join(extra)}", highlight=False)  # fmt: skip
