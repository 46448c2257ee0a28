"""Hold Parquet files to one reference schema: widen what casts, refuse what does not.

Parquet files carry their own schema, so a batch can mix files that lost a column, gained
one, or changed a type. The reference is chosen by :func:`celeray.runs.begin_run` and
reaches every unit in the plan (see docs/reliability.md, "Hostile input"). A file is
compared to it before any of its data is read:

- the same columns in another order: read, columns put in the reference's order;
- a column whose type widens to the reference's (pyarrow's permissive promotion gives the
  reference's type: int32 -> int64, float -> double, int -> double, null -> anything,
  timestamp[ms] -> timestamp[us], string -> large_string): cast while reading;
- a column missing, an extra column, or a type that does not widen: ``SchemaError``
  naming each such column and both types, and the file is quarantined.

Declared pipeline types are applied first, to the file and to the reference alike.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from celeray.errors import SchemaError
from ray_jobs._casting import cast_declared

__all__ = ["Reference", "check_schema", "conform_batch", "with_declared"]


@dataclass(frozen=True)
class Reference:
    """The schema every Parquet file of a run must fit, and where it comes from."""

    schema: pa.Schema
    source: str

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form kept in plans and ledger entries (Arrow IPC, base64)."""
        return {
            "arrow_schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            "columns": [[f.name, str(f.type)] for f in self.schema],  # for people
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        """The reference :meth:`to_json` wrote."""
        raw = base64.b64decode(data["arrow_schema"])
        return cls(pa.ipc.read_schema(pa.py_buffer(raw)), str(data.get("source") or "?"))


def with_declared(schema: pa.Schema, types: dict[str, pa.DataType]) -> pa.Schema:
    """``schema`` with each declared column's type replaced by its declared type."""
    fields = [pa.field(f.name, types.get(f.name, f.type)) for f in schema]
    return pa.schema(fields)


def check_schema(
    schema: pa.Schema, reference: Reference, *, url: str
) -> dict[str, pa.DataType]:
    """The columns of a file with ``schema`` to cast to fit ``reference``; or SchemaError.

    ``schema`` is the file's, declared types already applied. The error names every
    column that does not fit and both types.
    """
    ref = reference.schema
    have = {f.name: f.type for f in schema}
    want = {f.name: f.type for f in ref}
    problems = [
        f"column {name!r} is missing ({kind} in the reference)"
        for name, kind in want.items()
        if name not in have
    ]
    problems += [
        f"extra column {name!r} ({kind}) is not in the reference"
        for name, kind in have.items()
        if name not in want
    ]
    casts: dict[str, pa.DataType] = {}
    for name, kind in have.items():
        target = want.get(name)
        if target is None or kind == target:
            continue
        if _widens(kind, target):
            casts[name] = target
        else:
            problems.append(
                f"column {name!r} is {kind} here but {target} in the reference, and "
                f"{kind} does not widen to {target}"
            )
    if problems:
        raise SchemaError(
            f"the schema differs from the reference schema ({reference.source}): "
            + "; ".join(problems),
            url=url,
        )
    return casts


def conform_batch(
    batch: pa.RecordBatch,
    reference: Reference,
    casts: dict[str, pa.DataType],
    *,
    url: str,
    rows_before: int,
) -> pa.RecordBatch:
    """``batch`` with ``casts`` applied and its columns in the reference's order.

    A value that does not survive a widening cast (an int64 over 2**53 cast to double)
    raises ``SchemaError`` with its row, as declared types do.
    """
    if casts:
        batch = cast_declared(batch, casts, url=url, rows_before=rows_before, fill_missing=False)
    names = reference.schema.names
    return batch if batch.schema.names == names else batch.select(names)


def _widens(kind: pa.DataType, target: pa.DataType) -> bool:
    """Whether pyarrow's permissive promotion of ``kind`` and ``target`` gives ``target``."""
    try:
        unified = pa.unify_schemas(
            [pa.schema([("x", kind)]), pa.schema([("x", target)])], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return bool(unified.field("x").type == target)
