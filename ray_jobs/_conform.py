"""Read a file's record batches *into* the sink's schema, as the pipeline's modes say.

One :class:`Conformer` per file. It lays each batch over the pinned input schema (see
:mod:`celeray.table_schema`): columns the table has come in its order and types (a
missing one as nulls), a column the table lacks and a value that does not fit its type
are handled by ``schema_evolution`` and ``on_bad_rows``:

============  ==========================  ==========================  =====================
mode          a column the table lacks    a type that widens           a value that does
                                          the table's                  not fit (``B50`` in
                                                                       an int64 column)
============  ==========================  ==========================  =====================
add_columns   added (the commit records)  the table widens             ``on_bad_rows``
rescue        its values go to            its values go to             ``_rescued_data``
              ``_rescued_data``           ``_rescued_data``
fail          the file is quarantined     the file is quarantined      the file is
                                                                       quarantined
none          dropped, counted, named     ``on_bad_rows``              ``on_bad_rows``
============  ==========================  ==========================  =====================

``on_bad_rows``: ``quarantine_file`` quarantines the file, naming the column, the value,
both types and the line; ``rescue`` keeps the row with the value null and the raw value
in ``_rescued_data``; ``skip`` drops the row into the rejects (file, line, raw values,
error). Past ``max_bad_rows`` (a fraction of the file's rows) the file is quarantined
anyway. The file's ``metadata_columns`` come last.

With ``exact_lines`` off (one byte range of a split file, whose line numbers are not
known), any bad value raises: the caller then reads the whole file, which knows them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from celeray.errors import SchemaError
from celeray.table_schema import RESCUED_COLUMN, widens

__all__ = ["Conformer", "Options", "bad_positions", "widening_of_text"]

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
_LEAF = 32  # values cast one by one below this slice length


@dataclass(frozen=True)
class Options:
    """The pipeline's schema settings, as the Ray plan carries them."""

    mode: str = "add_columns"
    on_bad_rows: str = "quarantine_file"
    max_bad_rows: float = 0.1
    pinned: pa.Schema | None = None
    declared: dict[str, pa.DataType] = field(default_factory=dict)  # [schema] hints win
    # False for a Delta sink: a value of a wider type is a mismatch, as for "none"
    widen: bool = True

    @property
    def rescues(self) -> bool:
        """Whether rows get a ``_rescued_data`` column."""
        return self.mode == "rescue" or self.on_bad_rows == "rescue"

    def target(self, name: str) -> pa.DataType | None:
        """The type column ``name`` is read into: declared, else pinned; None for neither."""
        if name in self.declared:
            return self.declared[name]
        if self.pinned is not None and name in self.pinned.names:
            return self.pinned.field(name).type
        return None


@dataclass
class Conformer:
    """Conform the record batches of one file; count what it did."""

    options: Options
    url: str
    fmt: str
    metadata: dict[str, pa.Scalar] = field(default_factory=dict)
    exact_lines: bool = True
    rows_seen: int = 0  # data rows read from the file, bad ones included
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # column -> values dropped ("none")
    rescued: int = 0  # values kept in _rescued_data
    rejects: list[dict[str, Any]] = field(default_factory=list)  # rows skipped
    malformed: int = 0  # rows the parser could not split into columns (skipped)
    rescued_rows: int = 0  # rows with a value in _rescued_data
    bad_rows: int = 0  # rows with a value that did not fit, rescued (skipped ones: rejects)
    first_bad: str = ""  # the first bad value, for the max_bad_rows message

    def conform(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The file's batches in the table's shape; raises ``SchemaError`` to quarantine it.

        The ``max_bad_rows`` check runs once the file ends, so a file that fails it raises
        after its last batch (its writer's files are then removed by the caller).
        """
        for batch in batches:
            out = self.batch(batch)
            if out.num_rows:
                yield out
        self.check_bad_share()

    @property
    def skips_rows(self) -> bool:
        """Whether a malformed row is skipped into the rejects instead of failing the file."""
        return self.options.on_bad_rows in ("rescue", "skip") and self.options.mode != "fail"

    def skipped_row(self, line: int | None, text: str, error: str) -> None:
        """Note a row the parser skipped (malformed: the wrong number of columns)."""
        self.malformed += 1
        self.rejects.append(self._reject(line, None, {"_raw": text}, error))

    def check_bad_share(self) -> None:
        """Quarantine the file when its bad rows are over ``max_bad_rows`` of its rows."""
        bad = len(self.rejects) + self.bad_rows
        total = self.rows_seen + self.malformed
        if bad and total and bad / total > self.options.max_bad_rows:
            raise SchemaError(
                f"{bad:,} of {total:,} rows are bad ({bad / total:.1%}), over max_bad_rows "
                f"({self.options.max_bad_rows:.1%}); the first: {self.first_bad}",
                url=self.url,
            )

    def batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """One batch in the table's shape (rows skipped, values rescued, columns added)."""
        rows_before = self.rows_seen
        self.rows_seen += batch.num_rows
        opts = self.options
        pinned = opts.pinned
        if self._as_is(batch):
            self.rows_kept += batch.num_rows
            return batch
        columns: dict[str, pa.Array] = {}
        rescued: dict[int, dict[str, str]] = {}
        skip: set[int] = set()
        bad_rescued: set[int] = set()  # rows whose value did not fit (not a new column's)
        errors: dict[int, str] = {}
        for name, array in zip(batch.schema.names, batch.columns, strict=True):
            if (name == RESCUED_COLUMN and opts.rescues) or name in self.metadata:
                raise SchemaError(
                    f"the file has a column named {name!r}, which celeray fills itself "
                    "(rescued data or a metadata column); rename it in the file",
                    url=self.url,
                )
            target = opts.target(name)
            if target is None:
                if pinned is None or opts.mode == "add_columns":
                    columns[name] = array
                elif opts.mode == "rescue":
                    self._rescue_all(name, array, rescued)
                elif opts.mode == "fail":
                    raise SchemaError(
                        f"column {name!r} ({array.type}) is not in the table schema "
                        '(schema_evolution = "fail")',
                        url=self.url,
                    )
                else:  # "none": dropped, and counted
                    values = len(array) - array.null_count
                    self.dropped[name] = self.dropped.get(name, 0) + values
                continue
            columns[name] = self._fit(name, array, target, rows_before, rescued, skip, errors)
            if opts.mode != "rescue":  # in rescue mode a value that does not fit is drift
                bad_rescued.update(i for i in rescued if name in rescued[i])
        for name, kind in opts.declared.items():  # JSON lines leave out keys of nulls
            if name not in columns:
                columns[name] = pa.nulls(batch.num_rows, kind)
        own: dict[str, pa.Array] = {}  # the columns celeray fills
        if opts.rescues:
            own[RESCUED_COLUMN] = self._rescued_array(batch.num_rows, rescued)
            self.rescued_rows += len(rescued)
            self.bad_rows += len(bad_rescued)
        for name, value in self.metadata.items():
            own[name] = pa.repeat(value, batch.num_rows)
        if pinned is not None:  # the table's columns first, in its order; missing as nulls
            ordered = {}
            for f in pinned:
                found = own.pop(f.name, None)
                if found is None:
                    found = columns.pop(f.name, None)
                ordered[f.name] = pa.nulls(batch.num_rows, f.type) if found is None else found
            columns = {**ordered, **columns}
        out = pa.RecordBatch.from_pydict({**columns, **own})
        if skip:
            for i in sorted(skip):
                raw = {n: _text(a[i]) for n, a in zip(batch.schema.names, batch.columns,
                                                      strict=True)}  # fmt: skip
                self.rejects.append(self._reject(*self._where(rows_before + i), raw, errors[i]))
            keep = pa.array([i not in skip for i in range(batch.num_rows)])
            out = out.filter(keep)
        self.rows_kept += out.num_rows
        return out

    def _as_is(self, batch: pa.RecordBatch) -> bool:
        """Whether ``batch`` is already in the table's shape (the common case: no work)."""
        opts = self.options
        if self.metadata or opts.rescues or opts.declared:
            return False
        if opts.pinned is None:
            return True
        return batch.schema.equals(opts.pinned, check_metadata=False)

    def _fit(
        self,
        name: str,
        array: pa.Array,
        target: pa.DataType,
        rows_before: int,
        rescued: dict[int, dict[str, str]],
        skip: set[int],
        errors: dict[int, str],
    ) -> pa.Array:
        """``array`` as a column of ``target`` type (or wider), its bad values handled."""
        opts = self.options
        if array.type == target:
            return array
        if widens(array.type, target):
            return pc.cast(array, target)
        try:  # values that fit the table's type keep it (JSON's int64 in an int32 column)
            return pc.cast(array, target)
        except _CAST_ERRORS:
            pass
        if opts.mode == "add_columns" and opts.widen and name not in opts.declared:
            # a declared type wins; a Delta table cannot widen
            if widens(target, array.type):
                return array  # the table widens to it at the commit
            wider = widening_of_text(array, target)
            if wider is not None:
                return pc.cast(array, wider)
        converted, bad = bad_positions(array, target)
        if not bad:
            return converted
        policy = "rescue" if opts.mode == "rescue" else (
            "quarantine_file" if opts.mode == "fail" else opts.on_bad_rows
        )
        first = bad[0]
        value = _text(array[first])
        message = (
            f"column {name!r}: value {_clip(value)!r} does not convert to {target} "
            f"(the table's type; the file's is {array.type})"
        )
        if policy == "quarantine_file" or not self.exact_lines:
            line, row = self._where(rows_before + first)
            suffix = ' (schema_evolution = "fail")' if opts.mode == "fail" else ""
            raise SchemaError(message + suffix, url=self.url, line=line, row=row)
        if not self.first_bad:
            line, _ = self._where(rows_before + first)
            self.first_bad = f"line {line}: {message}" if line else message
        for i in bad:
            if policy == "rescue":
                rescued.setdefault(i, {})[name] = _text(array[i])
                self.rescued += 1
            else:
                skip.add(i)
                errors.setdefault(
                    i, f"column {name!r}: value {_clip(_text(array[i]))!r} does not convert "
                       f"to {target}"
                )
        return converted

    def _rescue_all(self, name: str, array: pa.Array, rescued: dict[int, dict[str, str]]) -> None:
        """Keep the values of a column the table lacks in ``_rescued_data``."""
        valid = pc.is_valid(array).to_pylist()
        for i, ok in enumerate(valid):
            if ok:
                rescued.setdefault(i, {})[name] = _text(array[i])
                self.rescued += 1

    def _rescued_array(self, rows: int, rescued: dict[int, dict[str, str]]) -> pa.Array:
        if not rescued:
            return pa.nulls(rows, pa.string())
        texts: list[str | None] = [None] * rows
        for i, values in rescued.items():
            texts[i] = json.dumps({**values, "_file_path": self.url}, ensure_ascii=False)
        return pa.array(texts, pa.string())

    def _where(self, index: int) -> tuple[int | None, int | None]:
        """(line, row) of the file's 0-based data row ``index``; line None when unknown."""
        row = index + 1
        if not self.exact_lines or self.fmt == "parquet":
            return None, row
        return (row + 1 if self.fmt == "csv" else row), row

    def _reject(
        self, line: int | None, row: int | None, raw: dict[str, Any], error: str
    ) -> dict[str, Any]:
        raw_text = json.dumps(raw, ensure_ascii=False, default=str)
        return {"file": self.url, "line": line, "row": row, "raw": raw_text, "error": error}


def bad_positions(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """``array`` cast to ``target`` with the values that do not convert as nulls, and their
    0-based positions (found by bisection: a clean slice costs one cast)."""
    try:
        return pc.cast(array, target), []
    except _CAST_ERRORS:
        pass
    bad: list[int] = []
    _bisect(array, target, 0, bad)
    if not bad:  # a cast that fails whole and never in part: every value is suspect
        bad = [i for i in range(len(array)) if array[i].is_valid]
    mask = pa.array([False] * len(array))
    if bad:
        flags = [False] * len(array)
        for i in bad:
            flags[i] = True
        mask = pa.array(flags)
    cleaned = pc.if_else(mask, pa.nulls(len(array), array.type), array)
    return pc.cast(cleaned, target), bad


def _bisect(array: pa.Array, target: pa.DataType, offset: int, bad: list[int]) -> None:
    if len(array) == 0 or _casts(array, target):
        return
    if len(array) <= _LEAF:
        bad.extend(offset + i for i in range(len(array)) if not _casts(array.slice(i, 1), target))
        return
    half = len(array) // 2
    _bisect(array.slice(0, half), target, offset, bad)
    _bisect(array.slice(half), target, offset + half, bad)


def _casts(array: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(array, target)
    except _CAST_ERRORS:
        return False
    return True


def widening_of_text(array: pa.Array, target: pa.DataType) -> pa.DataType | None:
    """A type ``target`` widens to that every value of a text ``array`` converts to.

    A CSV column the table holds as int64 that holds ``1.5`` in this file is read as text
    (the pinned type failed) and found to be float64, which int64 widens to; None when
    ``array`` is not text or no such type takes every value.
    """
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return None
    candidates = [pa.float64()] if pa.types.is_integer(target) else []
    if pa.types.is_timestamp(target):
        candidates = [pa.timestamp(u, target.tz) for u in ("ms", "us", "ns")]
    for candidate in candidates:
        if widens(target, candidate) and _casts(array, candidate):
            return candidate
    return None


def _text(scalar: pa.Scalar) -> str:
    value = scalar.as_py()
    if value is None or isinstance(value, str):
        return value  # type: ignore[return-value]
    return json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)


def _clip(text: str | None, limit: int = 200) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "..."
