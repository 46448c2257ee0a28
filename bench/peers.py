"""The peers: the same job done by plain pyarrow, DuckDB, Polars and Ray Data.

Each runs in a process of its own (``python -m bench.peers SPEC.json``, started by
:mod:`bench.isolated`), so its peak memory is its own. The seconds reported are those of
the work alone, from the first read to the last Parquet byte written; imports, and for Ray
Data ``ray.init``, come before the clock starts (celeray, too, is measured warm).

Every peer uses its library's defaults (threads: all cores) except where noted, writes
zstd Parquet into the output folder, and reads every input file of the set:

``pyarrow``         ``pyarrow.csv.read_csv`` / ``pyarrow.json.read_json`` per file, the
                    tables concatenated, one ``pq.write_table``: the whole set in memory.
``pyarrow-stream``  ``open_csv`` / ``open_json`` (16 MiB blocks, so row groups are not
                    tiny), one ``ParquetWriter`` fed batch by batch.
``pyarrow-loop``    one process, file after file: read, write one Parquet file each.
``duckdb``          ``COPY (WITH input AS (SELECT * FROM read_csv([...])) <job>) TO ...
                    (FORMAT parquet, COMPRESSION zstd)``.
``polars``          ``scan_csv`` / ``scan_ndjson``, ``SQLContext`` for SQL, ``sink_parquet``.
``polars-typed``    not run unless named (``--engines``), CSV sets only: ``polars`` with
                    ``scan_csv(try_parse_dates=True)``, so that its ISO timestamps are
                    timestamps as in celeray's, pyarrow's and DuckDB's tables, not text.
``raydata``         ``ray.data.read_csv`` / ``read_json`` -> ``write_parquet``, on a local
                    Ray of its own (``ray.init(address="local", num_cpus=2)``).

The SQL job runs as SQL text in DuckDB and Polars; pyarrow and Ray Data run
:func:`bench.jobs.sql_with_pyarrow` (``pyarrow.compute``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ENGINES", "EXTRA_ENGINES", "run_peer"]

ENGINES = ("pyarrow", "pyarrow-stream", "pyarrow-loop", "duckdb", "polars", "raydata")
EXTRA_ENGINES = ("polars-typed",)  # run only when named
STREAM_BLOCK = 16 * 1024**2


def _read_table(path: str, fmt: str) -> Any:
    if fmt == "jsonl":
        import pyarrow.json as pj

        return pj.read_json(path)
    import pyarrow.csv as pc

    return pc.read_csv(path)


def _job(job: str, data: Any) -> Any:
    from bench.jobs import sql_with_pyarrow

    return sql_with_pyarrow(data) if job == "sql" else data


def _pyarrow(files: list[str], fmt: str, job: str, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([_read_table(f, fmt) for f in files], promote_options="permissive")
    table = _job(job, table)
    pq.write_table(table, out / "part-0.parquet", compression="zstd")


def _pyarrow_loop(files: list[str], fmt: str, job: str, out: Path) -> None:
    import pyarrow.parquet as pq

    for i, f in enumerate(files):
        table = _job(job, _read_table(f, fmt))
        pq.write_table(table, out / f"part-{i:05d}.parquet", compression="zstd")


def _open_stream(path: str, fmt: str) -> Any:
    if fmt == "jsonl":
        import pyarrow.json as pj

        return pj.open_json(path, read_options=pj.ReadOptions(block_size=STREAM_BLOCK))
    import pyarrow.csv as pc

    return pc.open_csv(path, read_options=pc.ReadOptions(block_size=STREAM_BLOCK))


def _pyarrow_stream(files: list[str], fmt: str, job: str, out: Path) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for f in files:
            for batch in _open_stream(f, fmt):
                batch = _job(job, batch)
                if writer is None:
                    writer = pq.ParquetWriter(out / "part-0.parquet", batch.schema,
                                              compression="zstd")
                elif batch.schema != writer.schema:
                    batch = batch.cast(writer.schema)
                writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()


def _duckdb(files: list[str], fmt: str, job: str, out: Path) -> None:
    import duckdb

    from bench.jobs import SQL

    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    reader = (f"read_json([{listed}], format='newline_delimited')" if fmt == "jsonl"
              else f"read_csv([{listed}])")
    query = SQL if job == "sql" else "SELECT * FROM input"
    target = str(out / "part-0.parquet").replace("'", "''")
    con = duckdb.connect()
    con.execute(f"COPY (WITH input AS (SELECT * FROM {reader}) {query}) "
                f"TO '{target}' (FORMAT parquet, COMPRESSION zstd)")


def _polars(files: list[str], fmt: str, job: str, out: Path, typed: bool = False) -> None:
    import polars as pl

    from bench.jobs import SQL

    frame = (pl.scan_ndjson(files) if fmt == "jsonl"
             else pl.scan_csv(files, try_parse_dates=typed))
    if job == "sql":
        frame = pl.SQLContext(input=frame, eager=False).execute(SQL)
    target = out / "part-0.parquet"
    frame.sink_parquet(target, compression="zstd")


_RAY_TEMP: list[str] = []


def _ray_init() -> None:
    import tempfile

    import ray

    # Short (unix socket paths); Ray makes its folder 0777, so it lives in a 0700 parent.
    temp = tempfile.mkdtemp(prefix="crb", dir="/tmp")
    _RAY_TEMP.append(temp)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=f"{temp}/ray",
             log_to_driver=False)


def _raydata(files: list[str], fmt: str, job: str, out: Path) -> None:
    import ray.data

    ds = ray.data.read_json(files) if fmt == "jsonl" else ray.data.read_csv(files)
    if job == "sql":
        ds = ds.map_batches(_job_sql, batch_format="pyarrow")
    ds.write_parquet(str(out), compression="zstd")


def _job_sql(batch: Any) -> Any:
    return _job("sql", batch)


_RUNNERS = {"pyarrow": _pyarrow, "pyarrow-stream": _pyarrow_stream,
            "pyarrow-loop": _pyarrow_loop, "duckdb": _duckdb, "polars": _polars,
            "polars-typed": lambda *a: _polars(*a, typed=True), "raydata": _raydata}


def run_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one peer job as ``spec`` says; return its seconds and rows out."""
    engine, job, fmt = spec["engine"], spec["job"], spec["fmt"]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    # Import (and start Ray) before the clock, as celeray's workers are warm too.
    started = time.perf_counter()
    if engine == "raydata":
        _ray_init()
    elif engine == "duckdb":
        import duckdb  # noqa: F401
    elif engine.startswith("polars"):
        import polars  # noqa: F401
    else:
        import pyarrow.csv
        import pyarrow.json
        import pyarrow.parquet  # noqa: F401
    ready = time.perf_counter()
    _RUNNERS[engine](spec["files"], fmt, job, out)
    done = time.perf_counter()
    return {"seconds": done - ready, "setup_seconds": ready - started,
            "rows_out": parquet_rows(out)}


def parquet_rows(folder: Path) -> int:
    """Rows in every Parquet file under ``folder``, from the footers alone."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet")
               if not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts))


def main(argv: list[str]) -> int:
    """``python -m bench.peers SPEC.json``: run it, write the result to ``spec["result"]``."""
    spec = json.loads(Path(argv[0]).read_text())
    result = run_peer(spec)
    Path(spec["result"]).write_text(json.dumps(result))
    if spec["engine"] == "raydata":
        import shutil

        import ray

        ray.shutdown()
        for temp in _RAY_TEMP:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
