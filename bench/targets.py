"""Issue 16's targets, measured in one run: printed, never asserted.

``leads``: for each set and job, the fastest peer's seconds over celeray's (celeray's
``celeray x`` against the fastest peer; 1 or more: celeray leads), and the line
"celeray leads the fastest peer on K of N" (N: the set x job pairs of the run, 12 in a full
one; a pair celeray failed counts as not led). ``Ray Data``: the same ratio against Ray Data.
``memory``: per set, the peak RSS of each of celeray's processes (by name: Ray's workers
show their task, Celery's workers their queue), the largest over the set's jobs. Then the
targets table: each figure against its goal.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import fmt

__all__ = ["leads", "print_leads", "print_memory", "print_targets"]

MEMORY_MB = 600  # issue 16: peak RSS of any celeray process, every set
RAYDATA_X = 5.0  # issue 16: celeray >= 5x Ray Data on every pair
PER_RUN_MS = 50  # issue 16: per-run overhead
PER_BATCH_MS = 20  # issue 16: per-batch overhead
SINKS = (("parquet", "Parquet"), ("delta", "Delta"))  # issue 16: the overheads hold for both
# a new sink's first run and a pipeline's later runs: issue 16 names neither, so both count
OVERHEAD_KINDS = ("new", "later")
TOP_PROCESSES = 4  # processes named per set in the memory table


def leads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per set and job (in the rows' order): celeray's ratio to the fastest peer that
    finished, that peer, and celeray's ratio to Ray Data (None where one is missing)."""
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        pair = pairs.setdefault((r["set"], r["job"]), {
            "set": r["set"], "job": r["job"], "fastest": None, "ratio": None,
            "raydata": None, "celeray_ok": False})
        if r["engine"] == "celeray":
            pair["celeray_ok"] = not r.get("error") and bool(r.get("seconds"))
        elif r.get("seconds"):
            if pair["fastest"] is None or r["seconds"] < pair["fastest_s"]:
                pair["fastest"], pair["fastest_s"] = r["engine"], r["seconds"]
                pair["ratio"] = r.get("celeray_ratio")
            if r["engine"] == "raydata":
                pair["raydata"] = r.get("celeray_ratio")
    for pair in pairs.values():
        pair.pop("fastest_s", None)
        if not pair["celeray_ok"]:
            pair["ratio"] = pair["raydata"] = None
    return list(pairs.values())


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"[green]{value:.2f}[/]" if value >= 1 else f"[red]{value:.2f}[/]"


def print_leads(console: Console, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fastest peer's seconds / celeray's per set and job, and the K of N line."""
    found = leads(rows)
    jobs = list(dict.fromkeys(p["job"] for p in found))
    sets = list(dict.fromkeys(p["set"] for p in found))
    by = {(p["set"], p["job"]): p for p in found}
    table = Table(title="fastest peer's s / celeray's (>= 1: celeray leads)")
    table.add_column("set")
    for job in jobs:
        table.add_column(job, justify="right")
    table.add_column("fastest peer")
    for s in sets:
        pairs = [by.get((s, j)) for j in jobs]
        peers = sorted({p["fastest"] for p in pairs if p and p["fastest"]})
        table.add_row(s, *(_ratio(p["ratio"] if p else None) for p in pairs),
                      " / ".join(peers) or "-")
    console.print(table)
    led = sum(1 for p in found if p["ratio"] is not None and p["ratio"] >= 1)
    console.print(f"celeray leads the fastest peer on [bold]{led} of {len(found)}[/]")
    ray = [p for p in found if p["raydata"] is not None]
    if ray:
        low = min(ray, key=lambda p: p["raydata"])
        over = sum(1 for p in ray if p["raydata"] >= RAYDATA_X)
        console.print(f"celeray / Ray Data: >= {RAYDATA_X:g}x on {over} of {len(ray)} "
                      f"(lowest {low['raydata']:.2f}x: {low['set']} {low['job']})")
    return found


def _memory(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per set: each celeray process name's peak RSS (MB) over the set's jobs and runs."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["engine"] != "celeray":
            continue
        seen = out.setdefault(r["set"], {})
        for run in r["runs"]:
            for name, mb in (run.get("peak_by_process") or {}).items():
                seen[name] = max(seen.get(name, 0.0), mb)
    return {s: dict(sorted(v.items(), key=lambda kv: -kv[1])) for s, v in out.items()}


def print_memory(console: Console, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Peak RSS of celeray's processes per set, and on how many sets all stay under 600 MB."""
    found = _memory(rows)
    table = Table(title=f"celeray: peak RSS per process (MB, largest over the set's jobs; "
                  f"goal < {MEMORY_MB})")
    table.add_column("set")
    table.add_column("largest", justify="right")
    table.add_column("by process (largest first)")
    under = 0
    for s, procs in found.items():
        top = next(iter(procs.values()), None)
        under += top is not None and top < MEMORY_MB
        table.add_row(s, "-" if top is None else (f"[green]{top:.0f}[/]" if top < MEMORY_MB
                                                  else f"[red]{top:.0f}[/]"),
                      ", ".join(f"{n} {mb:.0f}" for n, mb in
                                list(procs.items())[:TOP_PROCESSES]))
    console.print(table)
    console.print(f"every celeray process under {MEMORY_MB} MB on {under} of {len(found)} sets")
    return found


def print_targets(console: Console, found: list[dict[str, Any]],
                  memory: dict[str, dict[str, float]], overhead: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    """Issue 16's targets, each measured figure against its goal."""
    ratios = [p["ratio"] for p in found]
    ray = [p["raydata"] for p in found if p["raydata"] is not None]
    tops = [next(iter(p.values()), None) for p in memory.values()]
    checks: list[tuple[str, float | None, str, float]] = [
        ("pairs where celeray leads the fastest peer",
         float(sum(1 for v in ratios if v is not None and v >= 1)), ">=", float(len(found))),
        ("celeray / fastest peer, lowest pair",
         None if None in ratios or not ratios else min(ratios), ">=", 1.0),
        ("celeray / Ray Data, lowest pair", min(ray) if ray else None, ">=", RAYDATA_X),
        ("celeray peak MB, largest process over sets",
         None if None in tops or not tops else max(t for t in tops if t is not None),
         "<", MEMORY_MB),
        *((f"per-run overhead ms ({name} sink, {kind})", overhead[kind][f].get("per_run_ms"),
           "<", PER_RUN_MS) for kind in OVERHEAD_KINDS for f, name in SINKS),
        *((f"per-batch overhead ms ({name} sink, {kind})",
           overhead[kind][f].get("per_batch_ms"), "<", PER_BATCH_MS)
          for kind in OVERHEAD_KINDS for f, name in SINKS),
    ]
    table = Table(title="targets of issue 16 (printed, not asserted)")
    for col in ("target", "measured", "goal", "met"):
        table.add_column(col, justify="left" if col == "target" else "right")
    out = []
    for name, value, op, goal in checks:
        met = None if value is None else (value >= goal if op == ">=" else value < goal)
        table.add_row(name, fmt(value, 2), f"{op} {goal:g}",
                      "-" if met is None else ("[green]yes[/]" if met else "[red]no[/]"))
        out.append({"target": name, "measured": value, "goal": f"{op} {goal:g}", "met": met})
    console.print(table)
    console.print("(overheads measured with each sink format; throughput runs: "
                  f"{overhead.get('throughput_table_format', 'delta')} sinks)")
    return out
