"""Turn one unit of input files into partitioned Parquet: the body of a Ray task.

Plain Python, free of Ray (the Ray wrapper is in :mod:`ray_jobs.dispatcher`), so it can be
run and tested in-process.

Each input file is all or nothing. A file whose record batches stay under
``SMALL_FILE_BYTES`` is read whole first (which validates it) and joins the unit's group
of small files; groups (up to ``GROUP_BYTES``, one schema each, types promoted) go through
the SQL/transform and one writer. A larger file streams through the SQL/transform into its
own writer; if it turns out bad midway, the files written for it are deleted. The SQL
therefore runs once per written stream: an aggregation covers one large file or one group
of small files, never the whole batch.

A unit can also be one byte range of a large file (its one file dict has ``"range"``, and
``"text_bytes"`` when the range is of a compressed file's decompressed text, see
:mod:`ray_jobs.units`). It reads just that range; when the range cannot be read on its own,
or fails in any way, it reads the whole file instead (or, for a reason that every range of
the file sees alike, leaves that to the first range). Its result says which it did in
``split``, so that :func:`ray_jobs.merge.merge_unit_results` can keep each file all or
nothing across its ranges.

Output names derive from the batch id, the unit number and a hash of the unit's files
(``part-<batch>-u<unit>-<hash>-s<group>-<i>`` for groups,
``part-<batch>-u<unit>-<hash>-f<file index>-<i>`` for large files), and all earlier
outputs of the unit are deleted first, so running a unit again replaces its files.

A unit of a Delta sink (plan ``table_format = "delta"``) writes into the table itself and
its names also carry the transform's attempt, the plan's ``attempt``
(``part-<batch>-a<attempt>-u<unit>-...``):
a new attempt never rewrites a file that a committed Delta version may reference, so
nothing is deleted first (listing the whole table would cost as much), and what a dead
attempt left is no table's file until vacuum removes it (:mod:`celeray.delta_table`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from celeray.arrow_types import arrow_types
from celeray.errors import InputError, SchemaError, StorageError, TransformError
from celeray.roots import check_read, outside
from ray_jobs._conform import Conformer
from ray_jobs._csv_guess import TypeGuess
from ray_jobs._line_range import ByteRange, SplitRefused
from ray_jobs._open_local import LocalCheck
from ray_jobs._rejects import write_rejects
from ray_jobs._table_plan import TablePlan
from ray_jobs._take import drain, held_bytes, take
from ray_jobs._tap import ErrorTap
from ray_jobs._unit_tally import UnitTally, span_of
from ray_jobs.readers import FORMATS, detect_format, read_batches
from ray_jobs.transforms import apply, load_callable
from ray_jobs.writer import remove_outputs, write_parquet

__all__ = ["GROUP_BYTES", "SMALL_FILE_BYTES", "process_unit", "unit_prefix"]

log = logging.getLogger(__name__)

SMALL_FILE_BYTES = 64 * 1024**2  # Arrow bytes of one file held in memory to validate it whole
GROUP_BYTES = 256 * 1024**2  # Arrow bytes of small files written together at most
OUT_ROWS = 128 * 1024  # rows per batch fed from a held table
# pyarrow's dataset writer pulls a streamed file's batches on an I/O thread, and the CSV
# and JSON readers refill their read-ahead on another: with one I/O thread a compressed
# file past ~32 blocks (32 x max_row_bytes) of text deadlocked. I/O threads mostly wait
# and cost no CPU, so the task keeps a few whatever its CPU count.
MIN_IO_THREADS = 4


def unit_prefix(
    batch_id: str, unit: int, files: Sequence[dict[str, Any]], attempt: str | None = None
) -> str:
    """The common start of every output file name of ``unit`` of ``batch_id``.

    Characters other than letters, digits and ``_`` are replaced, and a short hash of the
    original id is added when that changed it, so distinct ids never share a prefix. A
    hash of the unit's ``files`` (URLs and byte ranges) ends it: a unit is numbered by a
    plan that depends on the cluster's CPUs at the time, so two transforms of one batch
    planned differently (a redelivery after the cluster grew) may give one number to
    different files; their outputs then never share a name, and the commit moves only
    the outputs its ledger entry lists. ``attempt`` (a Delta sink's transform attempt)
    follows the batch id, its characters other than letters and digits dropped.
    """
    safe = re.sub(r"[^A-Za-z0-9_]", "_", batch_id)
    if safe != batch_id or not safe:
        safe = f"{safe}_{hashlib.sha1(batch_id.encode()).hexdigest()[:8]}"
    if attempt is not None:
        safe = f"{safe}-a{re.sub(r'[^A-Za-z0-9]', '', attempt)[:16] or '0'}"
    made_of = json.dumps([[f["url"], f.get("range")] for f in files], separators=(",", ":"))
    return f"part-{safe}-u{int(unit):05d}-{hashlib.sha1(made_of.encode()).hexdigest()[:8]}"


def process_unit(plan: dict[str, Any], unit: dict[str, Any]) -> dict[str, Any]:
    """Read, transform and write the files of ``unit``; return what happened.

    ``plan`` holds ``pipeline``, ``format`` (``None``: from each file's name), ``schema``,
    ``sql``, ``transform``, ``partition_by``, ``compression``, ``compression_level``,
    ``limits``, ``storage_options`` (used for inputs and output alike, laid over those
    :mod:`celeray.fsoptions` builds from this node's environment; None in celeray's plans,
    which carry no secrets), ``threads``, optionally ``local_roots`` (resolved folders: a
    local input outside them is quarantined unread, a local output folder outside them
    fails the unit; ``limits["allow_hard_links"]`` 1 reads hard-linked inputs, see
    :mod:`ray_jobs._open_local`), and the table-schema keys :class:`TablePlan` reads
    (every file is read into the pinned schema, see :mod:`ray_jobs._conform`);
    ``unit`` holds ``batch_id``, ``unit``, ``out_url`` and ``files``, each with ``url``,
    ``read_url`` (where to read it, e.g. a staged copy), ``size`` and ``mtime`` (as listed:
    a local file read in place that no longer has them is quarantined unread). The format is told
    from ``url``. pyarrow and DuckDB get ``threads`` CPU threads for the duration of the call.

    Returns ``batch_id``, ``unit``, ``files`` (the good files: ``url``, ``rows_in``,
    ``bytes_in``), ``quarantined`` (``InputError.record()`` dicts, ``url`` being the file's
    ``url``), ``outputs`` (``path`` relative to ``out_url``, ``rows``, ``bytes``), the
    totals ``rows_in``, ``rows_out``, ``bytes_in`` (compressed bytes of the good files),
    ``bytes_out``, ``files_done`` (files this unit finished, for progress), ``seconds``,
    ``input_schemas`` and ``table_schemas`` (the distinct schemas of the good files as read
    and of the rows as written, as JSON: the commit evolves the table by them),
    ``rejects`` (outputs of skipped rows, under ``_celeray/rejects/``) and ``schema_counts``
    (``rows_rescued``, ``rows_skipped``, ``values_rescued`` and ``dropped``: column ->
    values of columns the table does not take).
    A unit whose file has a ``range`` [start, end] (and the file's listed ``size``) also
    returns ``split``: ``url``, ``range``, ``size`` (what the range is a part of: the
    file's size, or ``text_bytes``), ``mode`` (``"range"``: just the range
    was read, ``bytes_in`` being its nominal length, or for a compressed file that length's
    share of the file's size; ``"whole"``: the whole file was read
    instead; ``"skipped"``: nothing, the first range reads the whole file) and ``reason``.
    ``TransformError`` (a pipeline bug: SQL, transform, an unknown format or column type,
    a missing partition column) fails the unit before or during the work; so do storage
    errors.
    """
    started = time.perf_counter()
    threads = max(1, int(plan.get("threads") or 1))
    with _arrow_threads(threads):
        run = _UnitRun(plan, unit, threads)
        run.run()
    return run.tally.result(unit, time.perf_counter() - started, run.reject_outputs)


class _UnitRun:
    """The state of one :func:`process_unit` call."""

    def __init__(self, plan: dict[str, Any], unit: dict[str, Any], threads: int) -> None:
        self.plan = plan
        self.unit = unit
        self.threads = threads
        # A Delta sink's unit writes into the table, named after its attempt too.
        self.delta = plan.get("table_format") == "delta"
        attempt = plan.get("attempt")
        self.prefix = unit_prefix(str(unit["batch_id"]), int(unit["unit"]), unit["files"],
                                  str(attempt) if self.delta and attempt else None)
        self.out_url = str(unit["out_url"])
        self.storage_options = plan.get("storage_options")
        self.tally = UnitTally()
        self.group: list[tuple[int, dict[str, Any], pa.Table, Conformer]] = []
        self.group_schema: pa.Schema | None = None
        self.group_bytes = 0
        self.groups_written = 0
        self.table: TablePlan  # once the plan is checked (run)
        self.reject_outputs: list[dict[str, Any]] = []
        self.csv_guess = TypeGuess()  # a CSV's types, proved or refused for the next file

    def run(self) -> None:
        _check_plan(self.plan)
        self.table = TablePlan.of(self.plan)
        roots = self.plan.get("local_roots")
        if roots is not None and (resolved := outside(self.out_url, roots)) is not None:
            raise StorageError(
                f"output folder {self.out_url} resolves to {resolved}, outside the allowed "
                f"local roots ({', '.join(roots)}); nothing written"
            )
        if not self.delta:  # a Delta attempt's names are new: nothing of them to delete
            remove_outputs(
                self.out_url,
                re.escape(self.prefix) + r"-[sf]\d+-\d+\.parquet",
                storage_options=self.storage_options,
            )
        for index, file in enumerate(self.unit["files"]):
            if file.get("range") is None:
                self._whole_file(index, file)
            else:
                self._range(index, file)
        self._flush_group()
        self.reject_outputs = write_rejects(
            self.tally.rejects,
            out_url=self.out_url,
            basename=self.prefix,
            batch_id=str(self.unit["batch_id"]),
            storage_options=self.storage_options,
        )

    def _whole_file(self, index: int, file: dict[str, Any]) -> None:
        text: set[str] = set()
        while True:
            error = self._one_file(index, file, None, text)
            column = _text_fallback(error, self.table, text)
            if column is None:
                break
            text.add(column)  # read again with it as text; the conformer finds what fits
        if error is not None:
            self.tally.quarantine(file, error)

    def _range(self, index: int, file: dict[str, Any]) -> None:
        """Read one byte range of a file, or the whole file when the range cannot be."""
        span = span_of(file)
        split = {"url": file["url"], "range": [span.start, span.end], "size": span.size}
        self.tally.split = split
        error = self._one_file(index, file, span, set())
        if error is None:
            split.update(mode="range", reason=None)
            return
        reason = error.reason if isinstance(error, SplitRefused) else str(error)
        if isinstance(error, SplitRefused) and error.head and not span.first:
            split.update(mode="skipped", reason=reason)
            return
        log.warning("%s: reading the whole file instead of %s: %s", file["url"], span, reason)
        split.update(mode="whole", reason=reason)
        self._whole_file(index, {k: v for k, v in file.items() if k != "range"})

    def _one_file(
        self, index: int, file: dict[str, Any], span: ByteRange | None, text: set[str]
    ) -> InputError | SplitRefused | None:
        """Read, transform and write a file or a range of it; return what stopped it.

        ``text`` names CSV columns to parse as text instead of their pinned type (a value
        did not convert): the conformer then sorts what fits from what does not.
        """
        try:
            check_read(file.get("read_url") or file["url"], self.plan.get("local_roots"))
            fmt = self.plan.get("format") or detect_format(file["url"])
            conformer = self.table.conformer(
                file, fmt=fmt, batch_id=str(self.unit["batch_id"]), exact_lines=span is None
            )
            batches = read_batches(
                file.get("read_url") or file["url"],
                fmt=fmt,
                schema=self.plan.get("schema"),
                types=self.table.read_types(fmt, text),
                limits=self.plan["limits"],
                storage_options=self.storage_options,
                threads=self.threads,
                byte_range=span,
                check=LocalCheck.of(self.plan, file),
                # a range's lines are not known: a malformed row there reads the whole file
                skip_row=conformer.skipped_row if conformer.skips_rows and span is None
                else None,
                guess=self.csv_guess,
            )
            head, rest, head_bytes = take(conformer.conform(batches), SMALL_FILE_BYTES,
                                          size=held_bytes)  # fmt: skip
        except (InputError, SplitRefused) as exc:
            return exc
        if not head:  # a byte range without rows
            self.tally.mark_good(index, file, 0, conformer)
        elif rest is None:
            self._add_small(index, file, pa.Table.from_batches(head), head_bytes, conformer)
        else:
            return self._stream_large(index, file, drain(head, rest), conformer)
        return None

    def _add_small(
        self, index: int, file: dict[str, Any], table: pa.Table, nbytes: int, conformer: Conformer
    ) -> None:
        """Add a small file's ``table`` (``nbytes``: its size, measured by the caller: pyarrow
        walks every buffer for ``Table.nbytes``) to the group written as one Parquet file."""
        if self.group and self.group_schema is not None and table.schema.equals(
            self.group_schema, check_metadata=True
        ):  # the usual case, without unify_schemas' ~0.4 ms a file
            unified = self.group_schema
            if self.group_bytes + nbytes > GROUP_BYTES:
                self._flush_group()
                unified = table.schema
        elif self.group:
            try:
                unified = pa.unify_schemas(
                    [self.group_schema, table.schema], promote_options="permissive"
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                unified = None
            if unified is None or self.group_bytes + nbytes > GROUP_BYTES:
                self._flush_group()
                unified = table.schema
        else:
            unified = table.schema
        self.group.append((index, file, table, conformer))
        self.group_schema = unified
        self.group_bytes += nbytes

    def _flush_group(self) -> None:
        if not self.group:
            return
        members, self.group = self.group, []
        self.group_schema, self.group_bytes = None, 0
        basename = f"{self.prefix}-s{self.groups_written}"
        self.groups_written += 1
        table = pa.concat_tables([t for _, _, t, _ in members], promote_options="permissive")
        batches = iter(table.to_batches(max_chunksize=OUT_ROWS))
        self.tally.outputs += self._write(batches, basename)
        for index, file, t, conformer in members:
            self.tally.mark_good(index, file, t.num_rows, conformer)

    def _stream_large(
        self, index: int, file: dict[str, Any], batches: Iterator[pa.RecordBatch],
        conformer: Conformer,
    ) -> InputError | SplitRefused | None:
        basename = f"{self.prefix}-f{index:04d}"
        counted = _Counted(batches)
        tap = ErrorTap(iter(counted))
        try:
            outputs = self._write(tap, basename)
        except Exception as exc:
            error = exc if isinstance(exc, InputError | SplitRefused) else tap.error
            if not isinstance(error, InputError | SplitRefused):
                raise
            if self.delta:  # in the table, never referenced: left for vacuum, no listing
                return error
            remove_outputs(
                self.out_url,
                re.escape(basename) + r"-\d+\.parquet",
                storage_options=self.storage_options,
            )
            return error
        self.tally.outputs += outputs
        self.tally.mark_good(index, file, counted.rows, conformer)
        return None

    def _write(self, batches: Iterator[pa.RecordBatch], basename: str) -> list[dict[str, Any]]:
        plan = self.plan
        batches = self.tally.noting_input(batches)
        transformed = apply(
            batches,
            sql=plan.get("sql"),
            transform=plan.get("transform"),
            threads=self.threads,
            pipeline=str(plan.get("pipeline") or ""),
        )
        return write_parquet(
            self.tally.to_table(transformed, self.table.table),
            out_url=self.out_url,
            basename=basename,
            partition_by=list(plan.get("partition_by") or []),
            compression=plan.get("compression") or "zstd",
            compression_level=plan.get("compression_level"),
            storage_options=self.storage_options,
            threads=self.threads,
            remove_stale=False,
        )


def _text_fallback(
    error: InputError | SplitRefused | None, table: TablePlan, text: set[str]
) -> str | None:
    """The CSV column to parse as text on the next read, when ``error`` is a pinned
    column's value that did not convert; None when reading again would not help."""
    if not isinstance(error, SchemaError) or error.column is None or not error.converting:
        return None
    pinned = table.options.pinned
    if pinned is None or error.column not in pinned.names or error.column in text:
        return None
    return error.column


def _check_plan(plan: dict[str, Any]) -> None:
    """Fail before any work on a plan no file could be processed with: a pipeline bug."""
    fmt = plan.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise TransformError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        arrow_types(plan.get("schema"))
    except ValueError as exc:
        raise TransformError(f"pipeline schema: {exc}") from None
    if plan.get("transform"):
        load_callable(plan["transform"])


class _Counted:
    """Pass batches through, counting their rows."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self.rows = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self._batches:
            self.rows += batch.num_rows
            yield batch


@contextmanager
def _arrow_threads(threads: int) -> Iterator[None]:
    """Give pyarrow ``threads`` CPU threads and ``max(threads, MIN_IO_THREADS)`` I/O threads
    for the block, then restore them."""
    cpu, io = pa.cpu_count(), pa.io_thread_count()
    pa.set_cpu_count(threads)
    pa.set_io_thread_count(max(threads, MIN_IO_THREADS))
    try:
        yield
    finally:
        pa.set_cpu_count(cpu)
        pa.set_io_thread_count(io)
