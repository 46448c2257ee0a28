"""What a Ray task needs to read files into the sink's schema, taken from its plan once."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from celeray.arrow_types import arrow_types
from celeray.table_schema import metadata_type, schema_from_json
from ray_jobs._conform import Conformer, Options

__all__ = ["TablePlan"]


@dataclass(frozen=True)
class TablePlan:
    """The pinned schemas and the pipeline's schema settings of one unit's plan.

    Plan keys: ``table_schema`` (``None`` before the first commit, else the version with
    ``input`` and ``table`` schemas as :func:`celeray.table_schema.schema_to_json` wrote
    them), ``schema_evolution``, ``on_bad_rows``, ``max_bad_rows``, ``metadata_columns``,
    ``processed_at`` (seconds since the epoch), ``table_format`` (``"delta"``: no widening).
    """

    options: Options
    table: pa.Schema | None
    metadata_columns: tuple[str, ...]
    processed_at: float

    @classmethod
    def of(cls, plan: dict[str, Any]) -> TablePlan:
        pinned = plan.get("table_schema") or None
        mode = str(plan.get("schema_evolution") or "add_columns")
        on_bad = str(plan.get("on_bad_rows") or "quarantine_file")
        return cls(
            options=Options(
                mode=mode,
                on_bad_rows=on_bad,
                max_bad_rows=float(plan.get("max_bad_rows", 0.1)),
                pinned=schema_from_json(pinned["input"]) if pinned and pinned["input"] else None,
                declared=arrow_types(plan.get("schema")),
                # a Delta table cannot widen a column (delta-rs): a wider value is a mismatch
                widen=plan.get("table_format") != "delta",
            ),
            table=schema_from_json(pinned["table"]) if pinned and pinned["table"] else None,
            metadata_columns=tuple(plan.get("metadata_columns") or ()),
            processed_at=float(plan.get("processed_at") or 0.0),
        )

    def read_types(self, fmt: str, text: set[str]) -> dict[str, pa.DataType]:
        """The types a file is parsed with: for CSV the pinned and declared ones (declared
        winning), ``text`` columns as text; for other formats none.

        Only CSV is parsed into the table's types (pyarrow's CSV reader takes them while it
        converts, so a column pinned as text stays text: ``01234`` keeps its zero); JSON
        lines and Parquet carry their own types, which the conformer casts.
        """
        if fmt != "csv":
            return {}
        pinned = self.options.pinned
        types = {f.name: f.type for f in pinned} if pinned is not None else {}
        types.update(self.options.declared)
        types.update({c: pa.string() for c in text})
        return types

    def conformer(self, file: dict[str, Any], *, fmt: str, batch_id: str,
                  exact_lines: bool) -> Conformer:  # fmt: skip
        """The conformer of one input file, its metadata columns' values filled."""
        values = {
            "_source_file": file["url"],
            "_source_size": int(file.get("size") or 0),
            "_source_modified": _timestamp(file.get("mtime")),
            "_batch_id": batch_id,
            "_processed_at": _timestamp(self.processed_at),
        }
        metadata = {
            name: pa.scalar(values[name], metadata_type(name)) for name in self.metadata_columns
        }
        return Conformer(self.options, url=file["url"], fmt=fmt, metadata=metadata,
                         exact_lines=exact_lines)  # fmt: skip


def _timestamp(seconds: Any) -> dt.datetime | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(float(seconds), tz=dt.UTC)
