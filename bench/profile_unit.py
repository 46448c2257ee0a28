"""``python -m bench.profile_unit``: where a Ray task's time goes, one set and job at a time.

The units are those the stack plans for a fresh sink (the pipeline file loaded and checked,
``ray_plan`` and ``plan_with_schema`` as ``transform_batch`` calls them, the default unit
size balanced for ``--cpus`` CPUs); each is run in this process with
:func:`ray_jobs.process.process_unit`, one thread, as a Ray task runs it (its malloc
settings too), one after another: their sum is the batch's work on one core. One unit is
run first unmeasured (codecs loaded, Arrow's pool grown: the ray worker's warm-up does the
same). Then every unit runs twice: timed alone, then under ``cProfile``; printed are the
seconds per unit, the profile's functions by own time, and those seconds summed into phases
(read: the text readers and decompression; conform; SQL: DuckDB; write: Parquet).
``--polars`` also times the bench's Polars peer on the same files with one thread
(``POLARS_MAX_THREADS=1``), in a process of its own. Polars' one-thread path costs it more
CPU than its default one (figures in ``bench/RESULTS.md``), so the ratio flatters celeray.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datasets import DATA, SCALES, SETS, DataSet, ensure_sets
from bench.jobs import JOBS, SQL

__all__ = ["PHASES", "main"]

# Phase of a profiled function: the first pattern found in "file:function" wins.
PHASES = (
    ("sql", ("duckdb", "transforms.py", "_sql_fast", "_sql_shape", "_duckdb_conn", "_compute")),
    ("write", ("parquet", "writer.py", "write_table", "write_batch", "_dataset")),
    ("decompress", ("zstd", "decompress", "_zstd_frames", "_streams")),
    ("read", ("pyarrow._csv", "pyarrow._json", "_read_csv", "_read_jsonl", "readers.py",
              "read_next_batch", "_text_guard", "_line_range", "_open_local")),
    ("conform", ("_conform", "_casting", "cast", "concat_tables", "from_batches")),
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile_unit", description=__doc__)
    p.add_argument("--set", default="32-csv", choices=sorted(SETS))
    p.add_argument("--job", default="convert", choices=JOBS)
    p.add_argument("--scale", default="full", choices=sorted(SCALES))
    p.add_argument("--cpus", type=int, default=2, help="CPUs the units are balanced for")
    p.add_argument("--top", type=int, default=25, help="functions printed")
    p.add_argument("--polars", action="store_true", help="time Polars, one thread, too")
    p.add_argument("--data", type=Path, default=DATA, help="folder of the data sets")
    return p.parse_args(argv)


def _plan_and_units(data: DataSet, job: str, work: Path, cpus: int
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plan and units ``transform_batch`` would give Ray for ``data`` into a new sink."""
    from celeray.batch import ray_plan
    from celeray.batch_schema import plan_with_schema
    from celeray.pipelines import load_pipelines
    from celeray.settings import Settings
    from ray_jobs.units import balanced_unit_bytes, plan_units

    sink = work / "sink"
    body = f'source = "{data.source_url}"\nsink = "{sink.as_uri()}"\n'
    if job == "sql":
        body += f'sql = "{SQL}"\n'
    pipelines = work / "pipelines.toml"
    pipelines.write_text(f"[pipelines.p]\n{body}")
    settings = Settings(home=work / "home", pipelines=pipelines,
                        local_roots=[str(work), str(data.folder.parent)])
    pipeline = load_pipelines(pipelines, **settings.pipeline_rules(pipelines))["p"]
    plan = plan_with_schema(ray_plan(pipeline, settings), sink.as_uri())
    files = []
    for f in data.files:
        st = f.stat()
        files.append({"url": f.as_uri(), "read_url": f.as_uri(), "size": st.st_size,
                      "mtime": st.st_mtime, "etag": None})
    unit_bytes = balanced_unit_bytes(files, unit_bytes=settings.unit_bytes, cpus=cpus)
    units = [{"batch_id": f"profile-{job}", "unit": i, "files": chunk,
              "out_url": (work / "out").as_uri()}
             for i, chunk in enumerate(plan_units(files, unit_bytes=unit_bytes, plan=plan,
                                                  cpus=cpus))]
    return plan, units


def _phase(where: str) -> str:
    for phase, patterns in PHASES:
        if any(p in where for p in patterns):
            return phase
    return "other"


def _phases(stats: pstats.Stats) -> dict[str, float]:
    """Own seconds of every profiled function, summed per phase."""
    out: dict[str, float] = {}
    for (path, _line, func), row in stats.stats.items():  # type: ignore[attr-defined]
        phase = _phase(f"{path}:{func}")
        out[phase] = out.get(phase, 0.0) + row[2]  # tottime
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _polars(data: DataSet, job: str, work: Path) -> float:
    from bench.isolated import run_isolated

    os.environ["POLARS_MAX_THREADS"] = "1"
    try:
        return float(run_isolated("polars", job, data, work)["seconds"])
    finally:
        del os.environ["POLARS_MAX_THREADS"]


def main(argv: list[str] | None = None) -> int:
    """Profile one set and job; print seconds per unit, top functions and phases."""
    from ray_jobs._malloc import tune_malloc
    from ray_jobs.process import process_unit

    args = _args(argv)
    data = ensure_sets([args.set], scale=args.scale, data=args.data.resolve())[args.set]
    work = Path(tempfile.mkdtemp(prefix="crprof-"))
    try:
        plan, units = _plan_and_units(data, args.job, work, args.cpus)
        tune_malloc()
        process_unit(plan, units[-1])  # warm: codecs, Arrow's pool
        seconds = []
        for unit in units:
            t0 = time.perf_counter()
            result = process_unit(plan, unit)
            seconds.append(time.perf_counter() - t0)
            if result["quarantined"]:
                raise SystemExit(f"unit {unit['unit']} quarantined: {result['quarantined']}")
        profile = cProfile.Profile()
        profile.enable()
        for unit in units:
            process_unit(plan, unit)
        profile.disable()
        print(f"{data.name} {args.job}: {len(units)} units, {data.csv_bytes / 1e6:.0f} MB of "
              f"CSV, {data.rows:,} rows, one thread")
        print(f"  units (s): {', '.join(f'{s:.3f}' for s in seconds)}")
        total = sum(seconds)
        print(f"  sum {total:.2f} s (median unit {statistics.median(seconds):.3f} s); "
              f"{data.csv_bytes / 1e6 / total:.1f} CSV MB/s per core")
        stats = pstats.Stats(profile)
        profiled = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
        print(f"  phases (own seconds under cProfile, {profiled:.2f} s in all): " + ", ".join(
            f"{k} {v:.2f} ({v / profiled:.0%})" for k, v in _phases(stats).items()))
        if args.polars:
            polars_s = _polars(data, args.job, work)
            print(f"  polars, one thread: {polars_s:.2f} s "
                  f"({polars_s / total:.2f}x celeray's units' sum)")
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
