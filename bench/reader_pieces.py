"""``python -m bench.reader_pieces``: celeray's text readers against the faster readers
issue 16 suggested, per file, in CPU time, and whether each gives celeray's table.

Every reader runs in this process with one thread (pyarrow ``use_threads=False`` and one
CPU thread, ``POLARS_MAX_THREADS=1``), file after file, the readers interleaved (A B C A B
C ...), so a machine shared with other work slows them alike; the time is the process's
CPU time (``time.process_time``), which other processes' load moves far less than wall
time. Printed: per reader, the best and the median milliseconds per file, and whether its
table equals the one celeray's ``read_batches`` gives (values, column types and order).

``--probe`` prints instead the JSON lines on which Polars' ``read_ndjson`` with a given
schema (what a fast path would run) and pyarrow's reader with the same schema (what
celeray's streaming reader runs past its first block) disagree: one accepts what the
other refuses, or both accept and give different values. A fast path may only take a
reader that agrees with celeray's on every input it accepts.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.datasets import DATA, SCALES, ensure_sets

__all__ = ["PROBE_LINES", "main"]

# One JSON object per line, each against the schema of PROBE_SCHEMA.
PROBE_LINES = (
    '{"i":1.5}',
    '{"i":"5"}',
    '{"i":true}',
    '{"i":99999999999999999999}',
    '{"f":1}',
    '{"f":-0.0}',
    '{"f":-0}',
    '{"f":NaN}',
    '{"f":1e400}',
    '{"s":5}',
    '{"s":true}',
    '{"s":{"x":1}}',
    '{"s":[1]}',
    '{"i":1,"extra":2}',
    '{"i":1,"i":2}',
    '{"n":1}',
    '{"b":1}',
    '{"s":"x\\u0000y"}',
    "[1,2]",
)
_MIB = 1024**2


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.reader_pieces", description=__doc__)
    p.add_argument("--set", default="32-jsonl", choices=["32-csv", "32-jsonl"])
    p.add_argument("--scale", default="full", choices=sorted(SCALES))
    p.add_argument("--files", type=int, default=4, help="files read (from the second on)")
    p.add_argument("--repeat", type=int, default=3, help="rounds over the files")
    p.add_argument("--data", type=Path, default=DATA, help="folder of the data sets")
    p.add_argument("--probe", action="store_true", help="print the JSON disagreements")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Time the readers of one set (or print the JSON probe)."""
    os.environ["POLARS_MAX_THREADS"] = "1"  # before Polars is imported
    import pyarrow as pa

    pa.set_cpu_count(1)
    args = _args(argv)
    if args.probe:
        _probe()
        return 0
    data = ensure_sets([args.set], scale=args.scale, data=args.data.resolve())[args.set]
    first, files = data.files[0], data.files[1 : 1 + args.files]
    readers = _readers(data.fmt, first)
    seconds: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.repeat):
        for path in files:
            for name, read in readers.items():
                t0 = time.process_time()
                read(path)
                seconds[name].append(time.process_time() - t0)
    reference = readers["celeray"](files[0])
    print(
        f"{data.name}: {len(files)} files x {args.repeat}, CPU ms per file, one thread; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    for name, read in readers.items():
        table = read(files[0])
        same = table.equals(reference) and table.schema.equals(reference.schema)
        print(
            f"  {name:32s} best {min(seconds[name]) * 1e3:7.1f}  median "
            f"{statistics.median(seconds[name]) * 1e3:7.1f}  same table: {same}"
        )
    return 0


def _readers(fmt: str, first: Path) -> dict[str, Callable[[Path], Any]]:
    """The readers to compare, by name; the types some are told come from ``first``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    from celeray.settings import DEFAULT_MAX_ROW_BYTES
    from celeray.sizes import DEFAULT_MAX_COLUMNS
    from ray_jobs.readers import read_batches

    limits = {"max_row_bytes": DEFAULT_MAX_ROW_BYTES, "max_columns": DEFAULT_MAX_COLUMNS,
              "max_file_bytes": 2**40, "max_decompressed_bytes": 2**40}  # fmt: skip

    def celeray(path: Path, types: dict[str, pa.DataType] | None = None) -> pa.Table:
        return pa.Table.from_batches(list(read_batches(
            path.as_uri(), fmt=fmt, schema=None, limits=limits, types=types)))  # fmt: skip

    schema = celeray(first).schema
    if fmt == "csv":
        types = {f.name: f.type for f in schema}
        return {
            "celeray": celeray,
            "celeray, first file's types": lambda p: celeray(p, types),
            "pyarrow read_csv, inferred": lambda p: pacsv.read_csv(
                p, read_options=pacsv.ReadOptions(use_threads=False, block_size=4 * _MIB)
            ),
            "polars read_csv, schema": lambda p: _polars_csv(p, schema),
        }

    def pyarrow_json(path: Path, block: int, explicit: bool) -> pa.Table:
        options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        return pajson.read_json(
            path, read_options=pajson.ReadOptions(block_size=block, use_threads=False),
            parse_options=options if explicit else None)  # fmt: skip

    return {
        "celeray": celeray,
        "pyarrow 4 MiB blocks, inferred": lambda p: pyarrow_json(p, 4 * _MIB, False),
        "pyarrow 16 MiB blocks, schema": lambda p: pyarrow_json(p, 16 * _MIB, True),
        "polars read_ndjson, schema": lambda p: _polars_ndjson(p, schema),
    }


def _polars_csv(path: Path, schema: Any) -> Any:
    import polars as pl

    frame = pl.read_csv(path, schema={f.name: _polars_type(f.type) for f in schema})
    return _as_arrow(frame, schema)


def _polars_ndjson(path: Path, schema: Any) -> Any:
    """Polars' reader told the schema; timestamps read as text and parsed by Arrow."""
    import polars as pl
    import pyarrow as pa

    polars_schema = {
        f.name: pl.String if pa.types.is_timestamp(f.type) else _polars_type(f.type) for f in schema
    }
    return _as_arrow(pl.read_ndjson(path, schema=polars_schema), schema)


def _polars_type(kind: Any) -> Any:
    import polars as pl
    import pyarrow as pa

    return pl.from_arrow(pa.array([], kind)).dtype  # type: ignore[union-attr]


def _as_arrow(frame: Any, schema: Any) -> Any:
    """``frame`` as an Arrow table of ``schema``'s types (a zone-suffixed text timestamp
    via UTC, as pyarrow's JSON reader takes it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = frame.to_arrow()
    columns = []
    for column, field in zip(table.columns, schema, strict=True):
        kind = field.type
        if (
            pa.types.is_timestamp(kind)
            and kind.tz is None
            and pa.types.is_large_string(column.type)
        ):
            column = pc.cast(column, pa.timestamp(kind.unit, "UTC"))
        columns.append(pc.cast(column, kind))
    return pa.Table.from_arrays(columns, schema=schema)


def _probe() -> None:
    import polars as pl
    import pyarrow as pa
    import pyarrow.json as pajson

    arrow = pa.schema([("i", pa.int64()), ("f", pa.float64()), ("s", pa.string()),
                       ("n", pa.null()), ("b", pa.bool_())])  # fmt: skip
    polars = {"i": pl.Int64, "f": pl.Float64, "s": pl.String, "n": pl.Null, "b": pl.Boolean}
    print("JSON line, then what Polars (schema given) and pyarrow (explicit schema) give")
    for line in PROBE_LINES:
        data = (line + "\n").encode()
        try:
            got_polars: Any = pl.read_ndjson(io.BytesIO(data), schema=polars).rows()
        except Exception as exc:
            got_polars = f"refused ({type(exc).__name__})"
        try:
            got_arrow: Any = [
                tuple(r.values())
                for r in pajson.read_json(
                    io.BytesIO(data),
                    parse_options=pajson.ParseOptions(
                        explicit_schema=arrow, unexpected_field_behavior="error"
                    ),
                ).to_pylist()
            ]
        except pa.ArrowInvalid:
            got_arrow = "refused"
        agree = str(got_polars).startswith("refused") == (got_arrow == "refused") and (
            got_arrow == "refused" or repr(got_polars) == repr(got_arrow)
        )
        print(
            f"  {line:28s} {'agree' if agree else 'DIFFER':6s}  polars {got_polars}  "
            f"pyarrow {got_arrow}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
