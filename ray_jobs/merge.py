"""Merge the results of a batch's units into the batch's result, one entry per file.

Pure dict work, free of Ray and Celery. A file split into byte ranges stays all or
nothing: its ranges' results are folded into one entry, or replaced by the result of a
range that read the whole file instead (see :mod:`ray_jobs.process`).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from celeray.errors import CelerayError, EmptyInputError

__all__ = ["merge_unit_results"]

def merge_unit_results(
    results: list[dict[str, Any]], prequarantined: list[dict[str, Any]]
) -> dict[str, Any]:
    """The batch result: ``files``, ``quarantined``, ``outputs``, ``rejects``, the four
    totals, ``schema_counts`` (summed) and ``input_schemas``/``table_schemas`` (the
    distinct schemas every unit read and wrote, for the commit to evolve the table by).

    ``results`` are :func:`ray_jobs.process.process_unit` results, in unit order;
    ``prequarantined`` are the quarantine records of files that never reached Ray (they
    come first). A file split into ranges appears once in ``files``, with ``rows_in`` and
    ``bytes_in`` summed over its ranges. If one of its ranges read the whole file
    instead, the first such result stands for the file and the other ranges' outputs are
    dropped. If any range is quarantined, or the ranges have no rows at all, the file is
    quarantined once and the outputs of all its ranges are dropped (dropped outputs stay
    in staging, which the commit removes); so are its rejects. Totals are recomputed from
    what is kept.
    Raises ``CelerayError`` when the ranges of a file do not cover it exactly, which
    means the file changed while it was being read: the batch then fails and its files
    are tried again by a later run.
    """
    parts: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r.get("split") is not None:
            parts.setdefault(r["split"]["url"], []).append(r)
    merged: dict[str, Any] = {
        "files": [],
        "quarantined": list(prequarantined),
        "outputs": [],
        "rejects": [],
        "schema_counts": {"rows_rescued": 0, "rows_skipped": 0, "values_rescued": 0,
                          "dropped": {}},
    }
    for r in results:
        split = r.get("split")
        if split is None:
            _add(merged, r)
        elif split["url"] in parts:
            _add(merged, _fold(split["url"], parts.pop(split["url"])))
    merged["rows_in"] = sum(int(f["rows_in"]) for f in merged["files"])
    merged["bytes_in"] = sum(int(f["bytes_in"]) for f in merged["files"])
    merged["rows_out"] = sum(int(o["rows"] or 0) for o in merged["outputs"])
    merged["bytes_out"] = sum(int(o["bytes"]) for o in merged["outputs"])
    for key in ("input_schemas", "table_schemas"):
        merged[key] = _distinct(s for r in results for s in r.get(key) or [])
    return merged


def _add(merged: dict[str, Any], part: dict[str, Any]) -> None:
    """Add what one unit (or one split file's folded ranges) kept."""
    for key in ("files", "quarantined", "outputs", "rejects"):
        merged[key] += part.get(key) or []
    counts, total = part.get("schema_counts") or {}, merged["schema_counts"]
    for key in ("rows_rescued", "rows_skipped", "values_rescued"):
        total[key] += int(counts.get(key) or 0)
    for column, values in (counts.get("dropped") or {}).items():
        total["dropped"][column] = total["dropped"].get(column, 0) + int(values)


def _fold(url: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """What one split file's ranges kept, as one part (files, quarantined, outputs...)."""
    wholes = [p for p in parts if p["split"]["mode"] == "whole"]
    if wholes:
        return min(wholes, key=lambda p: int(p["unit"]))
    _check_cover(url, parts)
    quarantined = [q for p in parts for q in p["quarantined"]]
    if quarantined:
        return {"quarantined": quarantined[:1]}
    rows = sum(int(f["rows_in"]) for p in parts for f in p["files"])
    if rows == 0:
        return {"quarantined": [EmptyInputError("the file has no data rows", url=url).record()]}
    entry = {
        "url": url,
        "rows_in": rows,
        "bytes_in": sum(int(f["bytes_in"]) for p in parts for f in p["files"]),
    }
    part: dict[str, Any] = {"files": [entry], "outputs": [], "rejects": [],
                            "schema_counts": {"dropped": {}}}  # fmt: skip
    for p in parts:
        part["outputs"] += p["outputs"]
        part["rejects"] += p.get("rejects") or []
        counts = p.get("schema_counts") or {}
        for column, values in (counts.get("dropped") or {}).items():
            dropped = part["schema_counts"]["dropped"]
            dropped[column] = dropped.get(column, 0) + int(values)
        for key in ("rows_rescued", "values_rescued"):
            part["schema_counts"][key] = part["schema_counts"].get(key, 0) + int(
                counts.get(key) or 0
            )
    return part


def _distinct(schemas: Any) -> list[dict[str, Any]]:
    """The schemas (as JSON) without repeats, in the order first seen."""
    seen: list[dict[str, Any]] = []
    for s in schemas:
        if not any(s["arrow_schema"] == t["arrow_schema"] for t in seen):
            seen.append(s)
    return seen


def _check_cover(url: str, parts: list[dict[str, Any]]) -> None:
    """Raise unless the ranges were all read and tile ``[0, size)`` exactly."""
    size = int(parts[0]["split"]["size"])
    spans = sorted((int(p["split"]["range"][0]), int(p["split"]["range"][1])) for p in parts)
    modes = {p["split"]["mode"] for p in parts}
    tiled = all(a[1] == b[0] for a, b in pairwise(spans))
    if modes != {"range"} or not tiled or spans[0][0] != 0 or spans[-1][1] != size:
        raise CelerayError(
            f"{url}: the results of its {len(parts)} byte range(s) do not cover the file "
            f"({', '.join(sorted(modes))}; {spans}): it changed while being read; "
            "the batch stays uncommitted for a later run"
        )
