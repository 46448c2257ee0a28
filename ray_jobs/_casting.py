"""Cast declared columns of record batches, naming the column and row that fail."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from celeray.errors import SchemaError

__all__ = ["cast_declared", "missing_declared"]

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def missing_declared(names: list[str], types: dict[str, pa.DataType], *, url: str) -> None:
    """Raise ``SchemaError`` if a declared column is not among ``names``."""
    missing = [c for c in types if c not in names]
    if missing:
        raise SchemaError(
            f"declared column(s) {', '.join(map(repr, missing))} not in the file; "
            f"its columns are {', '.join(map(repr, names))}",
            url=url,
        )


def cast_declared(
    batch: pa.RecordBatch,
    types: dict[str, pa.DataType],
    *,
    url: str,
    rows_before: int,
    fill_missing: bool,
) -> pa.RecordBatch:
    """``batch`` with each declared column cast (safely) to its declared type.

    ``rows_before`` is the number of data rows of the file before this batch, so the
    ``SchemaError`` for a value that does not cast carries the file's 1-based row. With
    ``fill_missing`` a declared column the batch lacks is added as nulls (JSON lines leave
    out null keys); without, the caller must have checked the columns already.
    """
    if not types:
        return batch
    arrays = list(batch.columns)
    fields = list(batch.schema)
    names = batch.schema.names
    for column, target in types.items():
        if column not in names:
            if fill_missing:
                arrays.append(pa.nulls(batch.num_rows, target))
                fields.append(pa.field(column, target))
            continue
        i = names.index(column)
        if arrays[i].type == target:
            continue
        try:
            arrays[i] = pc.cast(arrays[i], target)
        except _CAST_ERRORS as exc:
            row, value = _first_bad(arrays[i], target)
            raise SchemaError(
                f"column {column!r}: value {value!r} does not cast to {target}: {exc}"
                if value is not None
                else f"column {column!r} does not cast to {target}: {exc}",
                url=url,
                row=None if row is None else rows_before + row + 1,
            ) from None
        fields[i] = pa.field(column, target, nullable=fields[i].nullable)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _first_bad(array: pa.Array, target: pa.DataType) -> tuple[int | None, object]:
    """0-based index and value of the first element that does not cast, by bisection."""
    lo, hi = 0, len(array)
    if _casts(array, target):
        return None, None
    while hi - lo > 1:  # invariant: array[lo:hi] holds a failure
        mid = (lo + hi) // 2
        if _casts(array.slice(lo, mid - lo), target):
            lo = mid
        else:
            hi = mid
    return lo, array[lo].as_py()


def _casts(array: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(array, target)
    except _CAST_ERRORS:
        return False
    return True
