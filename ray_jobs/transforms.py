"""Apply a pipeline's SQL (DuckDB over Arrow) and Python transform to a batch stream.

Failures of the SQL or the callable are pipeline bugs and raise ``TransformError``;
failures of the input stream itself (an ``InputError`` from the reader) come out as
raised, even when DuckDB was the one pulling the stream.

The SQL is confined twice: :func:`celeray.sql_policy.check_sql` refuses it before anything
runs (one SELECT over ``input``; no file-reading, settings or SQL-in-a-string functions),
and it runs on a cursor of the process's database made with :data:`CONFINED`
(:mod:`ray_jobs._duckdb_conn`): DuckDB itself then refuses every file, URL, extension and
Python replacement scan, and the query cannot change that (``SET enable_external_access =
true`` fails on the locked configuration). The settings are given to ``duckdb.connect``, so
they hold before the first statement; the Arrow stream is registered on the cursor
afterwards, which DuckDB allows with external access off, and is gone with the cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain

import duckdb
import pyarrow as pa

from celeray.errors import TransformError
from celeray.sql_policy import TABLE_NAME, sql_problems
from celeray.transform_ref import load
from ray_jobs._duckdb_conn import CONFINED, connect, cursor
from ray_jobs._sql_fast import FastSql, fast_sql
from ray_jobs._take import groups, rebatch
from ray_jobs._tap import ErrorTap

__all__ = ["CONFINED", "SQL_BATCH_ROWS", "TABLE_NAME", "apply", "connect", "load_callable"]

SQL_BATCH_ROWS = 128 * 1024  # rows per batch DuckDB hands back
# The SQL fast path runs over this many rows of consecutive batches at once: each run is a
# fixed set of kernel calls, which over a small file's batch cost more than its rows do
FAST_SQL_ROWS = 128 * 1024
# ...and over at most this much Arrow data: a run is held while it fills, and a streamed
# file's memory stays bounded whatever its rows' width (flights: 128K rows are ~20 MiB)
RUN_BYTES = 32 * 1024**2
# A transform is called per batch: batches under JOIN_BELOW_ROWS rows (small files, or the
# SQL's few rows of a batch) are joined into batches of TRANSFORM_ROWS (or RUN_BYTES)
# first; larger ones are handed on as they are, since joining copies them
TRANSFORM_ROWS = 128 * 1024
JOIN_BELOW_ROWS = 16 * 1024
TableFn = Callable[[pa.Table], pa.Table]


def load_callable(spec: str) -> TableFn:
    """Import ``"package.module:attr"`` (``attr`` may be dotted) and return the callable.

    Loaded by :func:`celeray.transform_ref.load`, as ``celeray validate`` checks it: raises
    its ``TransformLoadError`` (a ``TransformError``) when the spec is malformed, the module
    is missing or raises on import, the attribute is missing, or it is not a callable.
    """
    fn: TableFn = load(spec)
    return fn


def apply(
    batches: Iterator[pa.RecordBatch],
    *,
    sql: str | None,
    transform: str | None,
    threads: int,
    pipeline: str = "",
) -> Iterator[pa.RecordBatch]:
    """The stream after ``sql`` and then ``transform``; either may be ``None``.

    ``sql`` runs once over the whole stream, which it reads as the table ``input``, on a
    new cursor of the process's confined DuckDB database of ``threads`` threads; results
    stream back in batches. An empty stream yields nothing (there is no schema to query).
    ``input`` is a stream and can be scanned once: a query that reads it twice must go through
    ``WITH t AS MATERIALIZED (SELECT * FROM input)``. ``transform`` is called once
    per record batch of the (SQL) result, as a one-batch ``pyarrow.Table``, and must return
    a ``pyarrow.Table``: it must be row-local, since it never sees more than one chunk.
    Runs of small batches (under :data:`JOIN_BELOW_ROWS` rows: small files' rows, or the
    few rows SQL kept of a batch) are joined for it first, so a chunk may hold rows of
    several files.
    The callable is loaded here, so a bad spec raises ``TransformError`` immediately.
    SQL the policy refuses (see the module) raises ``TransformError`` when the stream is
    first pulled, before DuckDB runs anything; ``pipeline`` names it in the message.
    """
    stream: Iterator[pa.RecordBatch] = batches
    fn = load_callable(transform) if transform else None
    if sql and sql.strip():
        stream = _run_sql(stream, sql, max(1, int(threads)), pipeline)
    if fn is not None:
        stream = _run_callable(rebatch(stream, TRANSFORM_ROWS, RUN_BYTES, JOIN_BELOW_ROWS), fn,
                               transform or "")  # fmt: skip
    return stream


def _run_sql(
    batches: Iterator[pa.RecordBatch], sql: str, threads: int, pipeline: str = ""
) -> Iterator[pa.RecordBatch]:
    failed = f"pipeline {pipeline!r}: sql failed" if pipeline else "sql failed"
    try:
        problems = sql_problems(sql)
    except ValueError as exc:
        raise TransformError(f"{failed}: {exc}; nothing was run") from None
    if problems:
        raise TransformError(f"{failed}: refused before running: {'; '.join(problems)}")
    source = iter(batches)
    first = next(source, None)  # outside DuckDB: a reader error here surfaces as itself
    if first is None:
        return
    fast = fast_sql(sql, first.schema, threads)
    if fast is not None:
        yield from _run_fast(fast, chain([first], source), failed)
        return
    tap = ErrorTap(source)
    reader = pa.RecordBatchReader.from_batches(first.schema, chain([first], tap))
    with cursor(threads) as con:
        con.register(TABLE_NAME, reader)
        try:
            relation = con.sql(sql)
        except duckdb.Error as exc:
            raise _sql_error(exc, tap, failed) from exc
        if relation is None:
            raise TransformError(f"{failed}: it must be a query that returns rows (SELECT ...)")
        try:
            results = relation.to_arrow_reader(SQL_BATCH_ROWS)
        except duckdb.Error as exc:
            raise _sql_error(exc, tap, failed) from exc
        while True:
            try:
                batch = results.read_next_batch()
            except StopIteration:
                break
            except Exception as exc:
                raise _sql_error(exc, tap, failed) from exc
            if batch.num_rows:
                yield batch
        if tap.error is not None:  # the query stopped early, but the input was bad
            raise tap.error


def _run_fast(
    fast: FastSql, batches: Iterator[pa.RecordBatch], failed: str
) -> Iterator[pa.RecordBatch]:
    """The fast path's result, over runs of :data:`FAST_SQL_ROWS` rows (or
    :data:`RUN_BYTES`) of batches; the source's errors pass as raised.

    A run's batches are computed as one table of their chunks (not copied); a batch of
    :data:`JOIN_BELOW_ROWS` rows or more is a run of its own. The result of a run of small
    batches is joined into one batch, a copy of the rows the query kept only, so what
    follows gets one batch per run, not a fragment per small file.
    """
    source = _same_schema(batches, failed)
    for run in groups(source, FAST_SQL_ROWS, RUN_BYTES, JOIN_BELOW_ROWS):
        try:
            out = fast.run(pa.Table.from_batches(run))
        except (pa.ArrowException, ValueError) as exc:
            raise TransformError(f"{failed}: {exc}") from exc
        if len(run) > 1:
            out = out.combine_chunks()  # small batches' results: one batch, not fragments
        for batch in out.to_batches():
            if batch.num_rows:
                yield batch


def _same_schema(batches: Iterator[pa.RecordBatch], failed: str) -> Iterator[pa.RecordBatch]:
    schema = None
    for batch in batches:
        if schema is None:
            schema = batch.schema
        elif not batch.schema.equals(schema):
            raise TransformError(f"{failed}: the input's schema changed midway")
        yield batch


def _sql_error(exc: Exception, tap: ErrorTap[pa.RecordBatch], failed: str) -> Exception:
    if tap.error is not None:
        return tap.error
    return TransformError(f"{failed}: {exc}")


def _run_callable(
    batches: Iterator[pa.RecordBatch], fn: TableFn, spec: str
) -> Iterator[pa.RecordBatch]:
    for batch in batches:  # errors of the source are not the callable's: they pass as raised
        try:
            result = fn(pa.Table.from_batches([batch]))
        except Exception as exc:
            raise TransformError(f"transform {spec!r} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, pa.Table):
            raise TransformError(
                f"transform {spec!r} returned {type(result).__name__}, not a pyarrow.Table"
            )
        for out in result.to_batches():
            if out.num_rows:
                yield out
