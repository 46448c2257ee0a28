"""``python -m bench``: make the data, run every job through celeray and its peers, report.

Order: data sets; the stack (started, or ``--home``); the per-run overhead runs over 1-row
CSVs, alternately into a Parquet sink and a Delta one, each first into new sinks and then
as a pipeline's later runs (:mod:`bench.overhead`); then for each set
(its files read once first, so every engine finds them in the page cache) and job, celeray
and then each peer, one after another, never two at a time. Each celeray run is a pipeline
of its own with a fresh sink (a second run of a pipeline would commit nothing); each peer
runs in a process of its own. The throughput runs' sinks are Delta tables (the default for
a new sink).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import out_types, report, targets
from bench.celeray_runs import RunFailedError, run_pipeline
from bench.celeray_stack import REDIS_PORT, BenchStack, temp_root
from bench.datasets import DATA, SETS, DataSet, ensure_sets, ensure_tiny
from bench.isolated import PeerFailedError, run_isolated
from bench.jobs import JOBS, SQL
from bench.overhead import measure as measure_overhead
from bench.overhead import pipelines as overhead_pipelines
from bench.peers import ENGINES, EXTRA_ENGINES

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_RAYDATA = ("32-jsonl", "sql")  # --smoke: Ray Data's one pair (~20 s for its own Ray)
QUICK_SETS = ("one-csv", "32-zst", "small-csv")
OVERHEAD_RUNS = 15  # tiny runs, ~0.5 s each: enough that one load spike hardly moves the median
SMOKE_OVERHEAD_RUNS = 2  # --smoke: the code path, not a median


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="1x flights, 100 small files, sets " + ",".join(QUICK_SETS))
    p.add_argument("--smoke", action="store_true",
                   help="a check that the bench works, not a measure: 3,000 rows, 20 small "
                   "files, every set, job and peer (Ray Data on 32-jsonl sql only), "
                   f"{SMOKE_OVERHEAD_RUNS} overhead runs, one repetition")
    p.add_argument("--data", type=Path, default=DATA,
                   help="folder of the data sets and the runs' outputs (bench/data)")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder of the results JSON (bench/results)")
    p.add_argument("--sets", help=f"comma list of {', '.join(SETS)} (default: all)")
    p.add_argument("--jobs", default=",".join(JOBS), help="comma list of convert, sql")
    p.add_argument("--engines", help=f"comma list of peers to run (default: {', '.join(ENGINES)}"
                   f"; also {', '.join(EXTRA_ENGINES)}); celeray always runs ('celeray' alone: "
                   "no peer)")
    p.add_argument("--repeat", type=int, default=1, help="runs per engine, set and job; "
                   "the median is shown")
    p.add_argument("--home", type=Path, help="use the stack already up for this "
                   "CELERAY_HOME instead of starting one")
    p.add_argument("--redis-port", type=int, default=REDIS_PORT,
                   help="port of the Redis on 127.0.0.1 whose databases 9 and 10 the "
                   "started stack uses (flushed first)")
    p.add_argument("--broker-url", help="the started stack's broker instead of Redis db 9: "
                   "e.g. a RabbitMQ amqp://user:password@host:5672/vhost (a vhost of the "
                   "bench's own); results stay on Redis. Read from CELERAY_BENCH_BROKER_URL "
                   "when unset, so the password need not be on the command line")
    p.add_argument("--overhead-only", action="store_true",
                   help="measure the per-run and per-batch overhead only, no jobs (to "
                   "compare brokers)")
    return p.parse_args(argv)


def _split(value: str | None, known: tuple[str, ...] | list[str], default: tuple[str, ...]
           ) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()] if value else list(default)
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise SystemExit(f"unknown {unknown}; choose from {', '.join(known)}")
    return chosen


def _peers(data: DataSet, job: str, chosen: list[str], smoke: bool = False) -> list[str]:
    """The peers of ``data`` and ``job`` in the order they run: the one-process pyarrow loop
    only on the many-small-files set; with ``smoke``, Ray Data (a local Ray of its own per
    run, 10-25 s on two busy cores) only on ``SMOKE_RAYDATA``: its JSON reader and its SQL
    step (its CSV reader is the same call)."""
    peers = [p for p in (*ENGINES, *EXTRA_ENGINES)
             if (p != "pyarrow-loop" or SETS[data.name].small)
             and (p != "polars-typed" or data.fmt == "csv")]
    if smoke and (data.name, job) != SMOKE_RAYDATA:
        peers.remove("raydata")
    return [p for p in peers if p in chosen]


def _warm_cache(data: DataSet) -> None:
    for f in data.files:
        with open(f, "rb") as fh:
            while fh.read(16 * 1024**2):
                pass


def _pipelines(sets: dict[str, DataSet], jobs: list[str], repeat: int, tiny: DataSet,
               out: Path, overhead_runs: int) -> dict[str, dict[str, Any]]:
    found = overhead_pipelines(tiny, out, overhead_runs)
    for data in sets.values():
        for job in jobs:
            for rep in range(repeat):
                name = f"b-{data.name}-{job}-{rep}"
                found[name] = {"source": data.source_url, "sink": (out / name).as_uri()}
                if job == "sql":
                    found[name]["sql"] = SQL
    return found


def _run(stack: BenchStack, pipelines: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """One measured celeray run of ``name``, the only pipeline in the file at the time.

    celeray reads and validates the whole pipeline file at each trigger and each
    ``start_run`` (a DuckDB parse per ``sql`` key, ~14 ms each), so the bench's own dozens
    of pipelines would be counted in every run; a file of one pipeline keeps them out.
    """
    stack.write_pipelines({name: pipelines[name]})
    return run_pipeline(stack, name, Path(pipelines[name]["sink"].removeprefix("file://")))


def _measure(stack: BenchStack, sets: dict[str, DataSet], jobs: list[str], engines: list[str],
             repeat: int, pipelines: dict[str, dict[str, Any]], out: Path, console: Console,
             smoke: bool = False) -> list[dict[str, Any]]:
    rows = []
    for data in sets.values():
        _warm_cache(data)
        for job in jobs:
            found: dict[str, list[dict[str, Any]]] = {}
            failed: dict[str, str] = {}
            for rep in range(repeat):
                name = f"b-{data.name}-{job}-{rep}"
                for engine in ["celeray", *_peers(data, job, engines, smoke)]:
                    try:
                        run = (_run(stack, pipelines, name) if engine == "celeray"
                               else run_isolated(engine, job, data, out))
                    except (RunFailedError, PeerFailedError, TimeoutError, OSError) as exc:
                        failed[engine] = str(exc)
                        console.print(f"  [red]{data.name} {job} {engine} failed:[/] {exc}")
                        continue
                    found.setdefault(engine, []).append(run)
            for engine in ["celeray", *_peers(data, job, engines, smoke)]:
                if engine not in found:
                    rows.append(report.failed_row(data, job, engine, failed.get(engine, "")))
                    continue
                rows.append(report.derive(data, job, engine, found[engine]))
                r = rows[-1]
                console.print(f"  {data.name:9} {job:7} {engine:14} {r['seconds']:7.2f} s "
                              f"{r['disk_mb_s']:7.1f} disk MB/s  peak {r['peak_mb'] or 0:6.0f} MB")
    report.add_ratios(rows)
    return rows


def _broker_of(stack: BenchStack) -> str:
    """The stack's broker kind, and its URL without a password."""
    from celeray.broker import broker_kind
    from celeray.settings import redact_url

    url = stack.env.get("CELERAY_BROKER_URL", "")
    return f"{broker_kind(url)} ({redact_url(url)})"


def _installed(engines: list[str], console: Console) -> list[str]:
    """``engines`` less the peers whose library is not installed (said once, not failed)."""
    import importlib.util

    needs = {"duckdb": "duckdb", "polars": "polars", "polars-typed": "polars", "raydata": "ray"}
    kept = []
    for engine in engines:
        module = needs.get(engine)
        if module and importlib.util.find_spec(module) is None:
            console.print(f"{engine}: {module} is not installed, skipped "
                          "(pip install -e '.[bench]')")
            continue
        kept.append(engine)
    return kept


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the tables and write ``<results>/<UTC time>.json``."""
    args = _args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or a pipe: keep the table on one line
    if args.smoke and args.quick:
        raise SystemExit("--smoke and --quick: choose one")
    scale = "smoke" if args.smoke else "quick" if args.quick else "full"
    sets_chosen = _split(args.sets, list(SETS), QUICK_SETS if args.quick else tuple(SETS))
    jobs = _split(args.jobs, JOBS, JOBS)
    engines = _installed(_split(args.engines, ("celeray", *ENGINES, *EXTRA_ENGINES), ENGINES),
                         console)  # fmt: skip
    repeat = 1 if args.smoke else max(1, args.repeat)
    overhead_runs = SMOKE_OVERHEAD_RUNS if args.smoke else OVERHEAD_RUNS
    data_root = args.data.resolve()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.time()
    load_start = report.load()
    console.print(f"load at start: {load_start}")
    sets = {} if args.overhead_only else ensure_sets(sets_chosen, scale=scale, data=data_root,
                                                      say=console.print)  # fmt: skip
    tiny = ensure_tiny(data_root)
    out = data_root / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    pipelines = _pipelines(sets, jobs, repeat, tiny, out, overhead_runs)
    root = None
    try:
        if args.home:
            stack = BenchStack.attach(args.home)
        else:
            root = temp_root()
            broker = args.broker_url or os.environ.get("CELERAY_BENCH_BROKER_URL")
            with console.status("celeray up (Redis dbs 9, 10; free ports) ..."):
                stack = BenchStack.start(root, redis_port=args.redis_port, data=data_root,
                                         broker_url=broker, pipelines=pipelines)  # fmt: skip
        try:
            console.print(f"per-run overhead (broker: {_broker_of(stack)}):")
            overhead = measure_overhead(stack, pipelines, tiny, overhead_runs, console.print)
            overhead["broker"] = _broker_of(stack)
            rows: list[dict[str, Any]] = []
            if not args.overhead_only:
                console.print("jobs:")
                rows = _measure(stack, sets, jobs, engines, repeat, pipelines, out, console,
                                smoke=args.smoke)
        finally:
            with console.status("celeray down ..."):
                stack.close()
    finally:
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.suppress(OSError):
            out.parent.rmdir()  # only when no other run's outputs are there
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    load_end = report.load()
    found: list[dict[str, Any]] = []
    unlike: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    checks: Any = None
    if rows:
        report.print_table(console, rows)
        report.print_profile(console, rows)
    report.print_overhead(console, overhead)
    if rows:
        found = targets.print_leads(console, rows)
        unlike = out_types.print_differences(console, rows)
        memory = targets.print_memory(console, rows)
        checks = targets.print_targets(console, found, memory, overhead)
    console.print(f"load at start: {load_start}\nload at end:   {load_end}")
    if args.smoke:
        console.print("smoke run: a check that every part of the bench works; its figures "
                      "(tiny data, one run) measure nothing")
    doc = {
        "stamp": stamp, "scale": scale, "quick": args.quick, "smoke": args.smoke,
        "repeat": repeat, "jobs": jobs, "sql": SQL,
        "seconds_total": round(time.time() - started, 1),
        "stack": "attached" if args.home else "started",
        "machine": report.machine(), "load_start": load_start, "load_end": load_end,
        "sets": [d.meta() for d in sets.values()],
        "overhead": overhead, "rows": rows, "leads": found, "unlike": unlike, "memory": memory,
        "targets": checks,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{stamp}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    console.print(f"results: {path}  ({doc['seconds_total']:.0f} s in all)")
    return 0
