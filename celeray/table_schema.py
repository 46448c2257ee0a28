"""A sink's table schema: the one written table of widenings, and how a schema evolves.

Pure logic on pyarrow types, shared by the Ray side (which reads every file *into* the
pinned schema) and the commit (which records what a batch added or widened). Where the
schema is kept is :mod:`celeray.schema_log`.

The widenings (``widens(source, target)``), and nothing else, change a column's type:

=========================  ================================================================
from                       to
=========================  ================================================================
null                       any type
int8 / int16 / int32       a wider signed integer; float64
uint8 / uint16 / uint32    a wider unsigned integer; a signed integer of twice the width
                           or more; float64
int64 / uint64             float64
float16 / float32          float32 / float64
decimal(p, s)              decimal(p', s') with s' >= s and p' - s' >= p - s
date32                     timestamp (any unit, no time zone)
timestamp(unit, tz)        timestamp of a finer unit, same time zone
string / binary            large_string / large_binary
list<a>                    list<b> where a widens to b
=========================  ================================================================

A column of any other pair of types is a *mismatch*, which the pipeline's
``schema_evolution`` mode handles (see :data:`MODES`).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from celeray.errors import SchemaConflictError

__all__ = [
    "BAD_ROW_POLICIES",
    "METADATA_COLUMNS",
    "MODES",
    "RESCUED_COLUMN",
    "Change",
    "common_type",
    "evolve",
    "metadata_type",
    "schema_from_json",
    "schema_to_json",
    "unify_first",
    "widens",
]

# schema_evolution: what a column the table does not have, or a value that does not fit its
# column's type, does to the file that brings it.
MODES = ("add_columns", "rescue", "fail", "none")
# on_bad_rows: what a row that cannot be parsed, or a value that cannot be converted, does.
BAD_ROW_POLICIES = ("quarantine_file", "rescue", "skip")
RESCUED_COLUMN = "_rescued_data"  # JSON text: column -> raw value, and "_file_path"
# metadata_columns a pipeline may ask for, and their types. Rows are written before their
# batch commits, so the commit's own time is in the ledger entry of _batch_id, not a column.
METADATA_COLUMNS: dict[str, pa.DataType] = {
    "_source_file": pa.string(),  # the input file's URL, as listed
    "_source_size": pa.int64(),  # its size in bytes, as listed
    "_source_modified": pa.timestamp("us", tz="UTC"),  # its modification time, as listed
    "_batch_id": pa.string(),  # the batch that committed the row (celeray files, the ledger)
    "_processed_at": pa.timestamp("us", tz="UTC"),  # when the batch's transform began
}

_SIGNED = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
_UNSIGNED = (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_FLOATS = (pa.float16(), pa.float32(), pa.float64())
_UNITS = ("s", "ms", "us", "ns")


@dataclass(frozen=True)
class Change:
    """One change a batch made to the table schema: a column pinned, added or widened."""

    column: str
    kind: str  # "pinned" (the first batch) | "added" | "widened"
    before: str | None  # the column's type before, for "widened"
    after: str

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form kept in the schema log and shown in run summaries."""
        return asdict(self)

    def __str__(self) -> str:
        if self.kind == "widened":
            return f"{self.column}: {self.before} -> {self.after}"
        return f"{self.column} {self.after} ({self.kind})"


def widens(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of ``source`` converts to ``target`` without loss (the table above)."""
    if source == target or pa.types.is_null(source):
        return True
    if source in _SIGNED:
        return (target in _SIGNED and _SIGNED.index(target) > _SIGNED.index(source)) or (
            target == pa.float64()
        )
    if source in _UNSIGNED:
        bits = source.bit_width
        return (
            (target in _UNSIGNED and target.bit_width > bits)
            or (target in _SIGNED and target.bit_width > bits)
            or target == pa.float64()
        )
    if source in _FLOATS:
        return target in _FLOATS and _FLOATS.index(target) > _FLOATS.index(source)
    if pa.types.is_decimal(source) and pa.types.is_decimal(target):
        return bool(
            target.scale >= source.scale
            and target.precision - target.scale >= source.precision - source.scale
        )
    if pa.types.is_date32(source):
        return pa.types.is_timestamp(target) and target.tz is None
    if pa.types.is_timestamp(source):
        return (
            pa.types.is_timestamp(target)
            and target.tz == source.tz
            and _UNITS.index(target.unit) > _UNITS.index(source.unit)
        )
    if pa.types.is_string(source):
        return pa.types.is_large_string(target)
    if pa.types.is_binary(source):
        return pa.types.is_large_binary(target)
    if pa.types.is_list(source) and (pa.types.is_list(target) or pa.types.is_large_list(target)):
        return widens(source.value_type, target.value_type)
    return False


def common_type(a: pa.DataType, b: pa.DataType, *, text_wins: bool = False) -> pa.DataType | None:
    """The narrowest type both ``a`` and ``b`` widen to, or None when there is none.

    ``text_wins`` (two files of one batch, nothing pinned yet) makes text the common type
    of text and anything else: a CSV or JSON lines column that holds ``B50`` in one file and
    numbers in another keeps every value as it was written, whichever file came first.
    """
    if widens(a, b):
        return b
    if widens(b, a):
        return a
    numbers = (*_SIGNED, *_UNSIGNED, *_FLOATS)
    if a in numbers and b in numbers:
        return pa.float64()
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and a.tz == b.tz:
        return a if _UNITS.index(a.unit) > _UNITS.index(b.unit) else b
    if text_wins:
        texts = [t for t in (a, b) if pa.types.is_string(t) or pa.types.is_large_string(t)]
        if texts:
            return pa.large_string() if any(map(pa.types.is_large_string, texts)) else pa.string()
    return None


def evolve(current: pa.Schema | None, seen: pa.Schema) -> tuple[pa.Schema, list[Change]]:
    """The table schema once ``seen`` (what a batch wrote) joins ``current``, and the changes.

    With nothing pinned, ``seen`` is pinned. Otherwise a column of ``seen`` that the table
    lacks is added (nullable, at the end), one whose type widens to the table's is taken
    as it is, and one whose table type widens to its type widens the table. Anything else
    raises ``SchemaConflictError`` naming the column and both types: the batch was read
    against a schema that has changed since (another batch committed first), and must be
    read again against the current one.
    """
    if current is None:
        pinned = pa.schema([f.with_nullable(True) for f in seen])
        return pinned, [Change(f.name, "pinned", None, str(f.type)) for f in pinned]
    fields = {f.name: f for f in current}
    order = list(current.names)
    changes: list[Change] = []
    for f in seen:
        have = fields.get(f.name)
        if have is None:
            fields[f.name] = f.with_nullable(True)
            order.append(f.name)
            changes.append(Change(f.name, "added", None, str(f.type)))
        elif have.type == f.type or widens(f.type, have.type):
            continue
        elif widens(have.type, f.type):
            fields[f.name] = have.with_type(f.type)
            changes.append(Change(f.name, "widened", str(have.type), str(f.type)))
        else:
            raise SchemaConflictError(
                f"column {f.name!r} is {f.type} in this batch but {have.type} in the table, "
                f"and neither widens to the other",
                column=f.name,
            )
    return pa.schema([fields[n] for n in order]), changes


def unify_first(schemas: list[pa.Schema]) -> pa.Schema:
    """The schema a first batch pins from its files' schemas, whatever their order.

    Columns in the order they first appear; each column's type is the common type of its
    types in every file, text winning over a type it does not widen from. Raises
    ``SchemaConflictError`` for a column whose types have no common type (a timestamp and
    a number), naming both.
    """
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for f in schema:
            have = types.get(f.name)
            if have is None:
                types[f.name] = f.type
                continue
            common = common_type(have, f.type, text_wins=True)
            if common is None:
                raise SchemaConflictError(
                    f"column {f.name!r} is {have} in one file and {f.type} in another, and "
                    "they have no common type; declare its type in [schema]",
                    column=f.name,
                )
            types[f.name] = common
    return pa.schema([pa.field(n, t) for n, t in types.items()])


def metadata_type(name: str) -> pa.DataType:
    """The type of metadata column ``name``; ``KeyError`` for a name not in the list."""
    return METADATA_COLUMNS[name]


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """The JSON-able form of a schema: Arrow IPC (base64) for machines, columns for people."""
    return {
        "arrow_schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
        "columns": [[f.name, str(f.type)] for f in schema],
    }


def schema_from_json(data: dict[str, Any]) -> pa.Schema:
    """The schema :func:`schema_to_json` wrote."""
    raw = base64.b64decode(data["arrow_schema"])
    return pa.ipc.read_schema(pa.py_buffer(raw))
