"""Turn the type names of a pipeline's ``schema`` table into pyarrow types."""

from __future__ import annotations

import re

import pyarrow as pa

__all__ = ["EXAMPLES", "parse_schema", "parse_type"]

EXAMPLES = (
    "int8..int64, uint8..uint64, float32, float64, bool, string, large_string, binary, "
    "date32, date64, timestamp[s|ms|us|ns], timestamp[us, tz=UTC], time32[s], "
    "decimal128(10,2)"
)
_DECIMAL = re.compile(r"^(decimal|decimal128|decimal256)\(\s*(\d+)\s*,\s*(-?\d+)\s*\)$")
_TIMESTAMP = re.compile(r"^timestamp\[\s*(s|ms|us|ns)\s*(?:,\s*tz\s*=\s*([^\]]+?)\s*)?\]$")
_REFUSED = {"null"}  # a column declared null could hold nothing


def parse_type(name: str) -> pa.DataType:
    """The pyarrow type ``name`` spells, e.g. ``"int32"``, ``"timestamp[ms, tz=UTC]"``.

    Accepts pyarrow's own aliases (``pa.type_for_alias``) plus ``decimal128(p,s)``,
    ``decimal256(p,s)`` and timestamps with a time zone. Raises ``ValueError`` with
    examples for anything else.
    """
    text = str(name).strip()
    m = _DECIMAL.match(text.lower())
    if m:
        precision, scale = int(m.group(2)), int(m.group(3))
        wide = m.group(1) == "decimal256" or (m.group(1) == "decimal" and precision > 38)
        make = pa.decimal256 if wide else pa.decimal128
        try:
            return make(precision, scale)
        except ValueError as exc:
            raise ValueError(f"bad decimal type {name!r}: {exc}") from None
    m = _TIMESTAMP.match(text)
    if m:
        return pa.timestamp(m.group(1), tz=m.group(2))
    if text.lower() not in _REFUSED:
        try:
            return pa.type_for_alias(text.lower())
        except ValueError:
            pass
    raise ValueError(f"unknown column type {name!r}; use a pyarrow type name such as {EXAMPLES}")


def parse_schema(schema: dict[str, str] | None) -> dict[str, pa.DataType]:
    """Each declared column with its parsed type; ``ValueError`` names the bad column."""
    types: dict[str, pa.DataType] = {}
    for column, name in (schema or {}).items():
        try:
            types[column] = parse_type(name)
        except ValueError as exc:
            raise ValueError(f"schema.{column}: {exc}") from None
    return types
