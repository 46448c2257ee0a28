"""A batch against its sink's schema: what its Ray tasks read into, and what it brings.

A batch is read against the schema version current when its transform starts
(:func:`plan_with_schema`). Its units report the distinct schemas they read and wrote;
:func:`settle` folds them into what the batch brings to the table, and says when the
files of the batch disagree among themselves in a way the table cannot hold (a column
that is int64 in one file and text in another, in a first batch or as a new column):
the batch is then read again with the settled schema pinned, so that every file of it
is read into the same types. The commit records what the batch brings
(:meth:`celeray.schema_log.SchemaLog.record`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from celeray.schema_log import SchemaLog
from celeray.table_schema import (
    evolve,
    schema_from_json,
    schema_to_json,
    unify_first,
    widens,
)

__all__ = ["Settled", "plan_with_schema", "settle"]


def plan_with_schema(plan: dict[str, Any], sink: str) -> dict[str, Any]:
    """``plan`` with the sink's current schema version (None before the first commit) and
    the time the transform began (the ``_processed_at`` metadata column)."""
    current = SchemaLog(sink).current()
    return {
        **plan,
        "table_schema": current.for_plan() if current is not None else None,
        "processed_at": time.time(),
    }


@dataclass(frozen=True)
class Settled:
    """What a transformed batch brings to the table, or the schema to read it again with."""

    input: pa.Schema | None  # None: the batch read no file
    table: pa.Schema | None  # None: the batch wrote no row
    reread_with: dict[str, Any] | None  # a plan's table_schema for a second read, or None

    def to_json(self) -> dict[str, Any]:
        """What the batch's result carries to its commit (``input`` and ``table``)."""
        return {
            "input": schema_to_json(self.input) if self.input is not None else None,
            "table": schema_to_json(self.table) if self.table is not None else None,
        }


def settle(plan: dict[str, Any], result: dict[str, Any]) -> Settled:
    """Fold the schemas a batch's units read and wrote; say whether to read it again.

    A column's types across the batch's files are settled as in a first batch (text wins,
    see :func:`celeray.table_schema.unify_first`). When a file was read or written with a
    type that does not widen to the settled one, the batch must be read again with the
    settled schema pinned (``reread_with``), so that the table never holds two types
    that no reader can reconcile.
    """
    pinned = plan.get("table_schema") or None
    pinned_input = schema_from_json(pinned["input"]) if pinned else None
    pinned_table = schema_from_json(pinned["table"]) if pinned else None
    inputs = [schema_from_json(s) for s in result.get("input_schemas") or []]
    tables = [schema_from_json(s) for s in result.get("table_schemas") or []]
    seen_input, seen_table = _settled(inputs), _settled(tables)
    if not (_disagree(inputs, seen_input) or _disagree(tables, seen_table)):
        return Settled(seen_input, seen_table, None)
    read_input = _over(pinned_input, seen_input)
    read_table = _over(pinned_table, seen_table)
    reread = {
        "version": pinned["version"] if pinned else None,
        "input": schema_to_json(read_input) if read_input is not None else None,
        "table": schema_to_json(read_table) if read_table is not None else None,
    }
    return Settled(seen_input, seen_table, reread)


def _settled(schemas: list[pa.Schema]) -> pa.Schema | None:
    """The batch's schemas as one: each column's common type, text winning."""
    return unify_first(schemas) if schemas else None


def _over(pinned: pa.Schema | None, seen: pa.Schema | None) -> pa.Schema | None:
    """``seen`` laid over ``pinned`` (added and widened columns), when both are known."""
    if seen is None:
        return pinned
    if pinned is None:
        return seen
    return evolve(pinned, seen)[0]


def _disagree(schemas: list[pa.Schema], settled: pa.Schema | None) -> bool:
    """Whether a schema has a column whose type does not widen to the settled one."""
    if settled is None:
        return False
    types = {f.name: f.type for f in settled}
    return any(
        f.name in types and not widens(f.type, types[f.name]) for s in schemas for f in s
    )
