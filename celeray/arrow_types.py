"""The column type names of a pipeline's ``schema`` table, as pyarrow types.

Only pyarrow is imported here, so Ray nodes without the rest of celeray's dependencies can
read a plan's schema with the same rules the pipeline file was validated with.
"""

from __future__ import annotations

import re

import pyarrow as pa

__all__ = ["arrow_type", "arrow_types"]

_DECIMAL = re.compile(r"^decimal(32|64|128|256)?\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)$", re.I)
_TIMESTAMP = re.compile(r"^timestamp\[\s*(s|ms|us|ns)\s*(?:,\s*tz\s*=\s*([^\]]+?)\s*)?\]$", re.I)
_FIXED_BINARY = re.compile(r"^fixed_size_binary\[\s*(\d+)\s*\]$", re.I)
_TYPE_HELP = ("use a pyarrow type name such as int64, double, string, bool, date32, "
              "timestamp[us], timestamp[s, tz=UTC] or decimal128(10, 2)")  # fmt: skip


def arrow_type(name: str) -> pa.DataType:
    """The pyarrow type a schema entry names, e.g. ``int32`` or ``timestamp[s, tz=UTC]``.

    Accepts ``pyarrow.type_for_alias`` names plus ``decimal128(p, s)`` (and 32/64/256),
    ``timestamp[unit, tz=Zone]`` and ``fixed_size_binary[n]``; ``str()`` of the result
    reads back the same type. Raises ``ValueError`` saying what is accepted.
    """
    text = name.strip()
    try:
        if m := _DECIMAL.match(text):
            factory = getattr(pa, f"decimal{m.group(1) or '128'}")
            return factory(int(m.group(2)), int(m.group(3) or 0))
        if m := _TIMESTAMP.match(text):
            tz = m.group(2)
            if tz and not re.fullmatch(r"[+-]\d\d:\d\d", tz):
                from zoneinfo import ZoneInfo

                ZoneInfo(tz)
            return pa.timestamp(m.group(1).lower(), tz=tz)
        if m := _FIXED_BINARY.match(text):
            return pa.binary(int(m.group(1)))
        return pa.type_for_alias(text)
    except (ValueError, TypeError, LookupError, OSError) as exc:
        detail = str(exc) if "alias" not in str(exc) else _TYPE_HELP
        raise ValueError(f"unknown column type {name!r}: {detail}") from None


def arrow_types(schema: dict[str, str] | None) -> dict[str, pa.DataType]:
    """Each declared column with its type; ``ValueError`` names the bad column."""
    types: dict[str, pa.DataType] = {}
    for column, name in (schema or {}).items():
        try:
            types[column] = arrow_type(name)
        except ValueError as exc:
            raise ValueError(f"schema.{column}: {exc}") from None
    return types
