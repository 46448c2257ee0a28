"""A Parquet file's column statistics as a Delta add action's ``stats`` (min, max, nulls).

The writer has each file's footer in hand when it closes the file (:mod:`ray_jobs.writer`),
so the statistics cost no read: this turns them into Delta's form, for the Delta commit
(:func:`celeray.delta_actions.add_actions`) to put beside ``numRecords``, so that engines
(delta-rs, Polars, Spark, DuckDB's delta extension) skip files by value.

Only statistics a reader can trust go in. A column's min and max (all its row groups'):
integers, dates and time-zoned timestamps (as Delta writes them: UTC, milliseconds, the
minimum floored and the maximum rounded *up* to the millisecond, so the bounds hold for
micro- and nanosecond values). Left out: strings and binary (a Parquet writer may
truncate their bounds), floats (Parquet leaves NaN out of min and max, engines order NaN
above every number, so a file with NaN could be skipped wrongly), booleans and decimals
(no engine here skips by them), timestamps without a zone (engines disagree on their
text form), nested columns (their leaves are not the columns). ``nullCount``: every
top-level column whose row groups all count their nulls. A column missing from a file is
absent from its statistics, which readers take as "unknown", never as "no rows".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["delta_stats"]

_EPOCH = dt.datetime(1970, 1, 1)


def _bounded(t: pa.DataType) -> bool:
    """Whether min and max of a column of type ``t`` go into the statistics."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_date32(t)
        or (pa.types.is_timestamp(t) and t.tz is not None)
    )


_PER_MS = {"s": None, "ms": 1, "us": 1000, "ns": 1_000_000}


def _text(value: Any, t: pa.DataType, *, up: bool) -> Any:
    """A statistic in Delta's JSON form; a timestamp's is its raw count of ``t.unit``s
    since the epoch (UTC), turned into milliseconds floored, or ceiled when ``up``."""
    if pa.types.is_timestamp(t):
        per_ms = _PER_MS[t.unit]
        ms = int(value) * 1000 if per_ms is None else -(-int(value) // per_ms) if up else (
            int(value) // per_ms)
        when = _EPOCH + dt.timedelta(milliseconds=ms)
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return int(value)


def delta_stats(metadata: pq.FileMetaData) -> dict[str, Any]:
    """``{"minValues", "maxValues", "nullCount"}`` of the file ``metadata`` describes
    (see the module docstring for which columns); empty maps when it has no row group."""
    schema = metadata.schema.to_arrow_schema()
    flat = {f.name: f.type for f in schema if not pa.types.is_nested(f.type)}
    lows: dict[str, Any] = {}
    highs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    no_bounds: set[str] = {n for n, t in flat.items() if not _bounded(t)}
    no_nulls: set[str] = set()
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema
            if name not in flat:
                continue
            stats = column.statistics
            if stats is None or not stats.has_null_count:
                no_nulls.add(name)
                no_bounds.add(name)
                continue
            nulls[name] = nulls.get(name, 0) + int(stats.null_count)
            if name in no_bounds:
                continue
            if not stats.has_min_max:
                if stats.null_count != group.num_rows:  # not all null: bounds unknown
                    no_bounds.add(name)
                continue
            raw = pa.types.is_timestamp(flat[name])  # exact, whatever the unit
            low, high = (stats.min_raw, stats.max_raw) if raw else (stats.min, stats.max)
            if name not in lows or low < lows[name]:
                lows[name] = low
            if name not in highs or high > highs[name]:
                highs[name] = high
    keep = [n for n in flat if n in lows and n not in no_bounds]
    return {
        "minValues": {n: _text(lows[n], flat[n], up=False) for n in keep},
        "maxValues": {n: _text(highs[n], flat[n], up=True) for n in keep},
        "nullCount": {n: nulls[n] for n in flat if n in nulls and n not in no_nulls},
    }
