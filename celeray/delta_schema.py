"""Arrow schemas as Delta schemas: the types a Delta table holds, and which changes it takes.

Delta types are coarser than Arrow's (one ``string``, one microsecond ``timestamp``) and
delta-rs has no type widening, so a batch may add nullable columns to a Delta table and
nothing else. :func:`check_schema` applies these rules to a batch before its ledger entry;
the commit that adds columns is :mod:`celeray.delta_log`'s.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from celeray import delta_log
from celeray.errors import TableFormatError

__all__ = [
    "arrow_schema",
    "check_protocol",
    "check_schema",
    "delta_schema",
    "new_fields",
    "type_changes",
    "unsupported_types",
]


def delta_schema(schema: pa.Schema) -> Any:
    """``schema`` as a Delta schema: every column nullable; timestamps of any unit as
    microseconds (the files keep their own unit, which readers cast), a time zone as UTC
    (Delta's ``timestamp`` is an instant in UTC, as Arrow's values with any zone are)."""
    from deltalake import Schema as DeltaSchema

    def fit(t: pa.DataType) -> pa.DataType:
        if pa.types.is_timestamp(t):
            return pa.timestamp("us", tz="UTC" if t.tz else None)
        if pa.types.is_date64(t):
            return pa.date32()
        return t

    return DeltaSchema.from_arrow(pa.schema([pa.field(f.name, fit(f.type)) for f in schema]))


def arrow_schema(delta: Any) -> pa.Schema:
    """A Delta schema as a pyarrow schema (deltalake 1.x returns an arro3 schema)."""
    return pa.schema(delta.to_arrow())


def unsupported_types(schema: pa.Schema) -> list[str]:
    """Columns whose Arrow type a Delta table cannot hold as it is."""
    bad = []
    for f in schema:
        t = f.type
        if pa.types.is_unsigned_integer(t) or pa.types.is_float16(t):
            bad.append(f"{f.name} ({t})")
    return bad


def type_changes(current: pa.Schema, seen: pa.Schema) -> list[str]:
    """Columns of ``seen`` whose Delta type differs from ``current``'s (both as Delta
    types: ``string`` and ``large_string`` are one type, as are timestamp units)."""
    have = {f.name: f.type for f in delta_schema(current).fields}
    changed = []
    for f in delta_schema(seen).fields:
        before = have.get(f.name)
        if before is not None and str(before) != str(f.type):
            changed.append(f"{f.name}: {_type_name(before)} -> {_type_name(f.type)}")
    return changed


def _type_name(t: Any) -> str:
    return str(getattr(t, "type", t))


def new_fields(current: pa.Schema, schema: pa.Schema) -> list[dict[str, Any]]:
    """The columns of ``schema`` that ``current`` lacks, as nullable Delta fields (the JSON
    of a Delta schema's ``fields``), in ``schema``'s order."""
    missing = [f.with_nullable(True) for f in schema if f.name not in set(current.names)]
    if not missing:
        return []
    return list(json.loads(delta_schema(pa.schema(missing)).to_json())["fields"])


def check_schema(sink: str, table_seen: pa.Schema | None, table: Any) -> None:
    """Refuse, before its ledger entry, a batch whose rows a Delta table cannot take.

    A column type Delta lacks (unsigned integers, float16), or a column whose type would
    change: Delta's type widening is a table feature delta-rs does not support, so for a
    Delta sink a widening is a mismatch (see docs/schema.md). A new column, in a table whose
    protocol asks for something celeray's column-adding commit does not write
    (:func:`celeray.delta_log.unsupported`). ``TableFormatError`` names the columns; the
    batch fails and its files stay uncommitted. ``table`` is the sink's ``DeltaTable`` as
    loaded for this batch's commit (:func:`celeray.delta_location.open_table`), None when
    the sink has no table yet.
    """
    if table_seen is None:
        return
    bad = unsupported_types(table_seen)
    if not bad:
        try:
            delta_schema(table_seen)
        except Exception as exc:  # deltalake's own refusal of a type, named
            bad = [str(exc)]
    if bad:
        raise TableFormatError(
            f"Delta tables have no type for {', '.join(bad)}: cast the column in the "
            "pipeline's SQL (e.g. CAST(x AS BIGINT)) or declare its type in [schema]"
        )
    if table is None:
        return
    current = arrow_schema(table.schema())
    changed = type_changes(current, table_seen)
    if changed:
        raise TableFormatError(
            f"the batch would change column types of the Delta table {sink}: "
            f"{'; '.join(changed)}. Delta type widening is not supported (delta-rs): cast "
            "the column to the table's type in the pipeline's SQL or [schema], or choose "
            'schema_evolution = "rescue" to keep such values in _rescued_data'
        )
    if new_fields(current, table_seen):
        check_protocol(sink, delta_log.TableState.of(table))


def check_protocol(sink: str, state: delta_log.TableState) -> None:
    """``TableFormatError`` when the table's protocol asks for something celeray's
    column-adding commit does not write."""
    bad = delta_log.unsupported(state)
    if bad:
        raise TableFormatError(
            f"the batch adds columns to the Delta table {sink}, whose protocol has "
            f"{', '.join(bad)}: celeray adds columns in the batch's own commit and does not "
            "write that. Add the columns with another Delta writer first (e.g. deltalake's "
            "DeltaTable.alter.add_columns), or drop them in the pipeline's SQL"
        )
