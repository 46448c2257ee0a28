"""The results: derived rates, celeray's ratios, the table, the targets, the JSON file.

Columns: ``s`` is the median wall seconds of the job (celeray: HTTP trigger -> SUCCESS;
peers: first read -> last byte written, in their own process). ``disk MB/s`` is the input
as stored on disk (compressed for .zst) per second; ``CSV MB/s`` the same rows as
uncompressed CSV per second (for JSON lines too, so formats compare); ``Mrows/s`` input
rows per second; ``peak MB`` the largest single process's peak RSS; ``celeray x`` is
celeray's MB/s divided by that engine's in the same set and job (above 1: celeray faster).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.datasets import DataSet
from bench.overhead import KINDS

__all__ = ["add_ratios", "derive", "failed_row", "fmt", "load", "machine", "print_overhead",
           "print_profile", "print_table"]

PACKAGES = ("celeray", "celery", "kombu", "redis", "ray", "pyarrow", "duckdb", "polars",
            "zstandard", "fsspec", "psutil", "flask", "gunicorn", "supervisor", "flower")
ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """What the results depend on: CPUs, memory, load, versions, the commit."""
    import psutil

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", ".",
                            ":!bench"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": git or None,
        "git_dirty_outside_bench": bool(dirty),
    }


def load() -> dict[str, Any]:
    """The load average now, with the CPU count it is to be read against."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2),
            "cpu_count": os.cpu_count()}


def derive(set_: DataSet, job: str, engine: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from an engine's repetitions on one set and job (median seconds)."""
    seconds = statistics.median(r["seconds"] for r in runs)
    peaks = [r["peak"]["mb"] for r in runs if r["peak"]["mb"] is not None]
    top = max(runs, key=lambda r: r["peak"]["mb"] or 0)["peak"]
    return {
        "set": set_.name, "job": job, "engine": engine,
        "seconds": round(seconds, 4),
        "disk_mb_s": round(set_.disk_bytes / 1e6 / seconds, 1),
        "csv_mb_s": round(set_.csv_bytes / 1e6 / seconds, 1),
        "rows_s": round(set_.rows / seconds),
        "peak_mb": max(peaks) if peaks else None,
        "peak_process": top.get("name"),
        "rows_out": runs[0].get("rows_out"),
        "bytes_out": runs[0].get("bytes_out"),
        "kinds": runs[0].get("kinds"),
        "runs": runs,
    }


def failed_row(set_: DataSet, job: str, engine: str, error: str) -> dict[str, Any]:
    """The row of an engine whose every run failed: no numbers, the error."""
    return {"set": set_.name, "job": job, "engine": engine, "seconds": None,
            "disk_mb_s": None, "csv_mb_s": None, "rows_s": None, "peak_mb": None,
            "peak_process": None, "rows_out": None, "bytes_out": None, "runs": [],
            "error": error}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each peer row's ``celeray_ratio``: celeray's MB/s over the peer's, same set+job
    (the peer's seconds over celeray's: the same input, so the same ratio, unrounded)."""
    celeray = {(r["set"], r["job"]): r for r in rows
               if r["engine"] == "celeray" and r["seconds"]}
    for r in rows:
        mine = celeray.get((r["set"], r["job"]))
        r["celeray_ratio"] = (round(r["seconds"] / mine["seconds"], 2)
                              if mine and r["engine"] != "celeray" and r["seconds"] else None)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    """The main table, one row per set, job and engine."""
    table = Table(title="celeray vs peers (celeray x = celeray MB/s / engine MB/s)")
    for col in ("set", "job", "engine", "s", "disk MB/s", "CSV MB/s", "Mrows/s", "peak MB",
                "celeray x"):
        table.add_column(col, justify="left" if col in ("set", "job", "engine") else "right")
    last = None
    for r in rows:
        if last and (r["set"], r["job"]) != last:
            table.add_section()
        last = (r["set"], r["job"])
        ratio = r.get("celeray_ratio")
        shown = "-" if ratio is None else (f"[green]{ratio:.2f}[/]" if ratio >= 1
                                           else f"[red]{ratio:.2f}[/]")
        if r.get("error"):
            table.add_row(r["set"], r["job"], r["engine"], "[red]failed[/]", "-", "-", "-",
                          "-", "-")
            continue
        table.add_row(r["set"], r["job"], r["engine"], fmt(r["seconds"], 2),
                      fmt(r["disk_mb_s"]), fmt(r["csv_mb_s"]), fmt(r["rows_s"] / 1e6, 2),
                      fmt(r["peak_mb"], 0), shown)
    console.print(table)


def print_profile(console: Console, rows: list[dict[str, Any]]) -> None:
    """Where celeray's seconds went in each run (Flower task events; medians not taken:
    the first repetition)."""
    table = Table(title="celeray: where the time went (s; from Flower's task events)")
    cols = ("set", "job", "batches", "outputs", "to 1st Ray", "plan", "stage", "transform",
            "commit", "queued", "total", "peak process (MB at start -> peak)")
    for col in cols:
        table.add_column(col, justify="left" if col in ("set", "job") or "peak" in col
                         else "right")
    for r in rows:
        if r["engine"] != "celeray" or not r["runs"]:
            continue
        run = r["runs"][0]
        b = run["breakdown"]
        peak = run["peak"]
        table.add_row(r["set"], r["job"], fmt(run["ledger"]["entries"]),
                      fmt(run["ledger"]["outputs"]),
                      *(fmt(b.get(k), 2) for k in ("to_first_ray", "plan", "stage",
                                                     "transform", "commit", "queued")),
                      fmt(run["seconds"], 2),
                      f"{peak['name']} ({fmt(peak['start_mb'], 0)} -> {fmt(peak['mb'], 0)})")
    console.print(table)


def print_overhead(console: Console, overhead: dict[str, Any]) -> None:
    """Per-run and per-batch overhead of the 1-row runs, for each kind (a new sink's first
    run, a pipeline's later runs) and sink format, their breakdown, and the Delta sink's
    cost over the Parquet sink per run and per batch."""
    names = {"parquet": "Parquet sink", "delta": "Delta sink"}
    if overhead.get("broker"):
        console.print(f"broker: {overhead['broker']}")
    for kind, said in KINDS.items():
        console.print(f"[bold]{said}[/]:")
        for table_format, name in names.items():
            one = overhead[kind][table_format]
            parts = one["breakdown_median"]
            console.print(
                f"  per-run overhead ({name}, 1-row CSV, trigger -> SUCCESS, median of "
                f"{len(one['runs'])}): [bold]{one['per_run_ms']:.0f} ms[/]  "
                f"(first, cold run: {one['cold_ms']:.0f} ms)"
            )
            console.print(
                "    made of (ms, Flower task events): "
                + ", ".join(f"{k} {v * 1000:.0f}" for k, v in parts.items() if v is not None)
            )
            console.print(
                f"  per-batch overhead ({name}; the run's one batch, first task sent -> "
                f"its commit done, Ray work of one row included): "
                f"[bold]{fmt(one['per_batch_ms'], 0)} ms[/]  of which the Ray task's own work "
                f"(ledger's timings.units_s): {fmt(one.get('per_batch_work_ms'), 1)} ms"
            )
        cost = overhead["delta_cost"][kind]
        console.print(
            f"  Delta sink's cost over a Parquet sink: per run [bold]"
            f"{_signed(cost['per_run_ms'])} ms[/], per batch [bold]"
            f"{_signed(cost['per_batch_ms'])} ms[/]"
        )
    console.print(f"(throughput runs: {names[overhead['throughput_table_format']]}s, the "
                  "default for a new sink)")


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f}"
