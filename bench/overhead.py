"""The per-run and per-batch overhead: 1-row runs, for each sink format, in two kinds.

- **A new sink's first run** (``new``): each run is a new pipeline with a new sink, as each
  of the bench's throughput runs is; it pays the sink's first folders and schema version.
- **A pipeline's later runs** (``later``): one pipeline per format, one new 1-row file
  landing before each run, as a scheduled pipeline runs every few minutes; the sink exists.

The runs of the two formats alternate (parquet 0, delta 0, parquet 1, ...), so a load spike
falls on both alike; each format has a cold run first, not counted. The throughput runs
name no format, so their new sinks are Delta tables, the default (celeray.table_format).
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.celeray_runs import run_pipeline
from bench.celeray_stack import BenchStack
from bench.datasets import DataSet

__all__ = ["FORMATS", "KINDS", "THROUGHPUT_FORMAT", "measure", "pipelines"]

FORMATS = ("parquet", "delta")  # issue 16: the targets hold with a Delta sink as with Parquet
THROUGHPUT_FORMAT = "delta"
KINDS = {"new": "a new sink's first run", "later": "a pipeline's later runs"}

Say = Callable[[str], None]


def _name(kind: str, table_format: str, i: str) -> str:
    return f"b-tiny-{kind}-{table_format}-{i}"


def pipelines(tiny: DataSet, out: Path, runs: int) -> dict[str, dict[str, Any]]:
    """The overhead runs' pipelines: one per new-sink run and per format, and one per format
    whose source is a landing folder of its own under ``out`` (files arrive per run)."""
    found: dict[str, dict[str, Any]] = {}
    for table_format in FORMATS:
        for i in ["warm", *map(str, range(runs))]:
            name = _name("new", table_format, i)
            found[name] = {"source": tiny.source_url, "sink": (out / name).as_uri(),
                           "table_format": table_format}  # fmt: skip
        name = _name("later", table_format, "all")
        landing = out / f"{name}-landing"
        found[name] = {"source": f"{landing.as_uri()}/*.csv", "sink": (out / name).as_uri(),
                       "table_format": table_format}  # fmt: skip
    return found


def measure(stack: BenchStack, found: dict[str, dict[str, Any]], tiny: DataSet, runs: int,
            say: Say) -> dict[str, Any]:
    """Both kinds' figures: ``{kind: {format: figures}, "delta_cost": {kind: ms}}``."""
    out: dict[str, Any] = {"new": _new_sinks(stack, found, runs, say),
                           "later": _later_runs(stack, found, tiny, runs, say)}
    out["delta_cost"] = {
        kind: {k: None if out[kind]["delta"][k] is None or out[kind]["parquet"][k] is None
               else out[kind]["delta"][k] - out[kind]["parquet"][k]
               for k in ("per_run_ms", "per_batch_ms")}
        for kind in KINDS
    }
    out["throughput_table_format"] = THROUGHPUT_FORMAT
    return out


def _sink(found: dict[str, dict[str, Any]], name: str) -> Path:
    return Path(found[name]["sink"].removeprefix("file://"))


def _new_sinks(stack: BenchStack, found: dict[str, dict[str, Any]], runs: int,
               say: Say) -> dict[str, Any]:
    """Each run the only pipeline in the file: celeray validates the whole file at each
    trigger and ``start_run``, and the bench's own dozens of pipelines are not the user's."""
    def one(name: str) -> dict[str, Any]:
        stack.write_pipelines({name: found[name]})
        return run_pipeline(stack, name, _sink(found, name))

    cold = {f: one(_name("new", f, "warm")) for f in FORMATS}
    done: dict[str, list[dict[str, Any]]] = {f: [] for f in FORMATS}
    for i in range(runs):
        for f in FORMATS:
            done[f].append(one(_name("new", f, str(i))))
            say(f"  new sink, run {i} ({f}): {done[f][-1]['seconds'] * 1000:.0f} ms")
    return {f: _figures(done[f], cold[f]) for f in FORMATS}


def _later_runs(stack: BenchStack, found: dict[str, dict[str, Any]], tiny: DataSet, runs: int,
                say: Say) -> dict[str, Any]:
    """One pipeline per format in one unchanged file; before each run one more 1-row file
    lands in its folder, so each run has exactly one new input and one batch."""
    names = {f: _name("later", f, "all") for f in FORMATS}
    stack.write_pipelines({names[f]: found[names[f]] for f in FORMATS})
    row = tiny.files[0].read_bytes()

    def one(f: str, i: str) -> dict[str, Any]:
        landing = Path(found[names[f]]["source"].removeprefix("file://")).parent
        landing.mkdir(parents=True, exist_ok=True)
        (landing / f"tiny-{i}.csv").write_bytes(row)
        return run_pipeline(stack, names[f], _sink(found, names[f]), keep_sink=True)

    try:
        cold = {f: one(f, "warm") for f in FORMATS}
        done: dict[str, list[dict[str, Any]]] = {f: [] for f in FORMATS}
        for i in range(runs):
            for f in FORMATS:
                done[f].append(one(f, str(i)))
                say(f"  later run {i} ({f}): {done[f][-1]['seconds'] * 1000:.0f} ms")
    finally:
        for name in names.values():
            shutil.rmtree(_sink(found, name), ignore_errors=True)
            shutil.rmtree(Path(found[name]["source"].removeprefix("file://")).parent,
                          ignore_errors=True)
    return {f: _figures(done[f], cold[f]) for f in FORMATS}


def _figures(runs: list[dict[str, Any]], cold: dict[str, Any]) -> dict[str, Any]:
    """One format's figures: medians of its runs, their breakdown, the cold run."""
    keys = [k for k in runs[0]["breakdown"] if k not in ("tasks_seen", "batch_chain")]
    parts = {k: _median_or_none([r["breakdown"][k] for r in runs]) for k in keys}
    per_batch = _median_or_none([r["breakdown"]["batch_chain"] for r in runs])
    work = _median_or_none([r["ledger"].get("units_s") for r in runs])
    return {
        "cold_ms": cold["seconds"] * 1000,
        "per_run_ms": statistics.median(r["seconds"] for r in runs) * 1000,
        "per_batch_ms": None if per_batch is None else per_batch * 1000,
        "per_batch_work_ms": None if work is None else work * 1000,
        "breakdown_median": parts,
        "runs": runs,
        "cold": cold,
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 4) if known else None
