"""Group input files into units of work, one Ray task each."""

from __future__ import annotations

from typing import Any

__all__ = ["plan_units"]


def plan_units(files: list[dict[str, Any]], *, unit_bytes: int) -> list[list[dict[str, Any]]]:
    """Split ``files`` (dicts with at least ``"url"`` and ``"size"``) into units.

    Consecutive files, in the given order, share a unit while their sizes add up to at
    most ``unit_bytes``; a file of ``unit_bytes`` or more is a unit alone. The same input
    always gives the same units; the file dicts are passed through, not copied.
    """
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes must be at least 1, got {unit_bytes}")
    units: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    current_bytes = 0
    for file in files:
        size = int(file["size"])
        if size < 0:
            raise ValueError(f"{file['url']}: negative size {size}")
        if size >= unit_bytes:
            if current:
                units.append(current)
                current, current_bytes = [], 0
            units.append([file])
            continue
        if current and current_bytes + size > unit_bytes:
            units.append(current)
            current, current_bytes = [], 0
        current.append(file)
        current_bytes += size
    if current:
        units.append(current)
    return units
