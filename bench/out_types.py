"""What each engine's output table holds: its columns' kinds, set beside celeray's.

The engines run with their libraries' defaults, and those do not make the same table from
the same CSV: Polars' ``scan_csv`` leaves ISO timestamps as text unless told
``try_parse_dates``, where celeray, pyarrow and DuckDB type them. A ratio between two
engines is only like for like where their tables agree, so the bench prints, per set and
job, each peer's columns whose kind differs from celeray's. Kinds, not exact types:
integer widths, timestamp units and time zones, and string offsets differ by writer
without changing what a reader gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["differences", "kinds_of", "print_differences"]


def _kind(arrow_type: Any) -> str:
    import pyarrow as pa
    import pyarrow.types as t

    checks = (
        (t.is_boolean, "boolean"), (t.is_integer, "integer"), (t.is_floating, "float"),
        (t.is_decimal, "decimal"), (t.is_timestamp, "timestamp"), (t.is_date, "date"),
        (t.is_time, "time"), (t.is_duration, "duration"), (t.is_string, "text"),
        (t.is_large_string, "text"), (lambda x: x == pa.string_view(), "text"),
        (t.is_binary, "binary"), (t.is_large_binary, "binary"),
        (t.is_dictionary, "dictionary"), (t.is_null, "null"),
    )  # fmt: skip
    for check, kind in checks:
        if check(arrow_type):
            return kind
    return str(arrow_type)


def kinds_of(folder: Path) -> dict[str, str] | None:
    """Each column's kind in the first Parquet file under ``folder`` (celeray's ``_celeray``
    and Delta's ``_delta_log`` aside), in the file's order; None when there is none."""
    import pyarrow.parquet as pq

    files = sorted(p for p in folder.rglob("*.parquet")
                   if not {"_celeray", "_delta_log"} & set(p.relative_to(folder).parts))
    if not files:
        return None
    schema = pq.read_schema(files[0])
    return {f.name: _kind(f.type) for f in schema}


def differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per set, job and peer whose output kinds differ from celeray's: the columns, each
    ``(name, peer's kind, celeray's kind)``, ``-`` for a column one of them lacks."""
    celeray = {(r["set"], r["job"]): r.get("kinds") for r in rows if r["engine"] == "celeray"}
    out = []
    for r in rows:
        mine = celeray.get((r["set"], r["job"]))
        theirs = r.get("kinds")
        if r["engine"] == "celeray" or not mine or not theirs or theirs == mine:
            continue
        names = list(dict.fromkeys([*mine, *theirs]))
        cols = [(n, theirs.get(n, "-"), mine.get(n, "-")) for n in names
                if theirs.get(n) != mine.get(n)]
        out.append({"set": r["set"], "job": r["job"], "engine": r["engine"], "columns": cols})
    return out


def print_differences(console: Console, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per peer whose table differs from celeray's, or one saying none does."""
    found = differences(rows)
    if not found:
        console.print("every peer's output has celeray's column kinds")
        return found
    console.print("outputs unlike celeray's (column: the peer's kind, celeray's):")
    for d in found:
        cols = ", ".join(f"{n}: {p}, {c}" for n, p, c in d["columns"])
        console.print(f"  {d['set']:9} {d['job']:7} {d['engine']:14} {cols}")
    return found
