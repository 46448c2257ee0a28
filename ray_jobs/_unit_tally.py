"""What one unit reports: its good and quarantined files, outputs, schemas and counts.

:func:`ray_jobs.process.process_unit` reads and writes; a :class:`UnitTally` keeps the
account of it, and :meth:`UnitTally.result` is the unit's result as the merge and the
commit take it (its keys are listed in :func:`~ray_jobs.process.process_unit`). Plain
Python, free of Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from celeray.errors import InputError
from celeray.table_schema import schema_to_json, widens
from ray_jobs._conform import Conformer
from ray_jobs._line_range import ByteRange, SplitRefused

__all__ = ["UnitTally", "span_of"]


class UnitTally:
    """The account of one unit's files, outputs, schemas and counts."""

    def __init__(self) -> None:
        self.good: dict[int, dict[str, Any]] = {}
        self.quarantined: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.split: dict[str, Any] | None = None
        self.input_schemas: list[pa.Schema] = []
        self.table_schemas: list[pa.Schema] = []
        self.rejects: list[dict[str, Any]] = []
        self.counts: dict[str, Any] = {"rows_rescued": 0, "rows_skipped": 0,
                                       "values_rescued": 0, "dropped": {}}  # fmt: skip

    def mark_good(self, index: int, file: dict[str, Any], rows: int, conformer: Conformer
                  ) -> None:  # fmt: skip
        """File ``index`` is done: ``rows`` written, the conformer's skips and rescues."""
        size = int(file["size"]) if file.get("range") is None else span_of(file).listed_bytes
        # rows_in: every data row of the file, the skipped ones included
        rows_in = rows + len(conformer.rejects)
        self.good[index] = {"url": file["url"], "rows_in": rows_in, "bytes_in": size}
        self.rejects += conformer.rejects
        self.counts["rows_skipped"] += len(conformer.rejects)
        self.counts["rows_rescued"] += conformer.rescued_rows
        self.counts["values_rescued"] += conformer.rescued
        for column, values in conformer.dropped.items():
            self.counts["dropped"][column] = self.counts["dropped"].get(column, 0) + values

    def quarantine(self, file: dict[str, Any], error: InputError | SplitRefused) -> None:
        """``file`` is quarantined for ``error`` (its record, ``url`` being the file's)."""
        if isinstance(error, SplitRefused):  # cannot happen to a whole file
            raise TypeError(f"{file['url']}: a whole file was refused a split: {error}")
        record = error.record()
        record["url"] = file["url"]
        self.quarantined.append(record)

    def noting_input(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Pass a stream through, noting its schema among those the unit read."""
        for batch in batches:
            _note(self.input_schemas, batch.schema)
            yield batch

    def to_table(self, batches: Iterator[pa.RecordBatch], pinned: pa.Schema | None
                 ) -> Iterator[pa.RecordBatch]:  # fmt: skip
        """The rows to write, each column cast to its ``pinned`` table type where it widens
        to it (the files of a table then agree), the schema noted among those written."""
        for batch in batches:
            if pinned is not None:
                batch = _cast_to(batch, pinned)
            _note(self.table_schemas, batch.schema)
            yield batch

    def result(self, unit: dict[str, Any], seconds: float,
               reject_outputs: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        """The unit's result (see :func:`ray_jobs.process.process_unit`)."""
        files = [self.good[i] for i in sorted(self.good)]
        outputs = sorted(self.outputs, key=lambda o: str(o["path"]))
        result = {
            "batch_id": unit["batch_id"],
            "unit": unit["unit"],
            "files": files,
            "quarantined": self.quarantined,
            "outputs": outputs,
            "rows_in": sum(f["rows_in"] for f in files),
            "rows_out": sum(int(o["rows"] or 0) for o in outputs),
            "bytes_in": sum(f["bytes_in"] for f in files),
            "bytes_out": sum(int(o["bytes"]) for o in outputs),
            "files_done": len(files) + len(self.quarantined),
            "seconds": round(seconds, 4),
            "input_schemas": [schema_to_json(s) for s in self.input_schemas],
            "table_schemas": [schema_to_json(s) for s in self.table_schemas],
            "rejects": reject_outputs,
            "schema_counts": self.counts,
        }
        if self.split is not None:
            last = self.split["range"][1] == self.split["size"]
            result["split"] = self.split
            result["files_done"] = int(last)  # a split file counts once, with its last range
        return result


def span_of(file: dict[str, Any]) -> ByteRange:
    """The range of a split file's dict (see :func:`ray_jobs.units.plan_units`)."""
    start, end = (int(x) for x in file["range"])
    if file.get("text_bytes"):
        return ByteRange(start, end, int(file["text_bytes"]), compressed=int(file["size"]))
    return ByteRange(start, end, int(file["size"]))


def _note(schemas: list[pa.Schema], schema: pa.Schema) -> None:
    if not any(schema.equals(s, check_metadata=False) for s in schemas):
        schemas.append(schema.remove_metadata())


def _cast_to(batch: pa.RecordBatch, pinned: pa.Schema) -> pa.RecordBatch:
    """``batch`` with each column whose type widens to its pinned type cast to it."""
    fields = list(batch.schema)
    changed = False
    for i, f in enumerate(fields):
        if f.name in pinned.names:
            target = pinned.field(f.name).type
            if f.type != target and widens(f.type, target):
                fields[i] = f.with_type(target)
                changed = True
    return batch.cast(pa.schema(fields)) if changed else batch
