"""Byte sizes as people write them: ``"256MiB"``, ``"1.5 GB"``, ``4096``."""

from __future__ import annotations

import re

# pyarrow holds ~9 KiB of builders per column while reading (measured: a CSV header of
# 100,000 columns took 844 MiB); 10,000 keeps that under ~100 MiB and is wider than tables
# people land as files. Here, not in settings, because Ray nodes read it without
# pydantic-settings.
DEFAULT_MAX_COLUMNS = 10_000

__all__ = ["DEFAULT_MAX_COLUMNS", "format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Return the number of bytes ``value`` names; ints pass through.

    Decimal units (kB, MB, GB) are powers of 1000, binary ones (KiB, MiB, GiB) of 1024.
    Raises ``ValueError`` naming the accepted units for anything else, or for a size below 1.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        number: float = value
    else:
        m = _SIZE.match(str(value))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ValueError(
                f"not a size: {value!r}; write a number with an optional unit "
                "(B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '256MiB'"
            )
        number = float(m.group(1)) * _UNITS[unit]
    if number < 1:
        raise ValueError(f"size must be at least 1 byte, got {value!r}")
    return int(number)


def format_size(n: float) -> str:
    """Render a byte count with a binary unit, e.g. ``256.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
