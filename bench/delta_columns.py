"""``python -m bench.delta_columns``: what a batch that brings a column costs to commit.

On a local Delta table, ``--batches`` batches (one small file each) are committed three
ways, each on a table of its own, and the per-batch commit time printed (median, ms):

- ``append``: no new column, delta-rs's ``create_write_transaction`` (the common case);
- ``one commit``: each batch brings a column, committed by
  :func:`celeray.delta_table.commit_entry`, whose version celeray writes itself
  (:mod:`celeray.delta_log`): schema and rows in one version;
- ``two commits``: the same batches the way celeray committed them before, delta-rs's
  ``alter.add_columns`` then its append (a version with the column and none of the rows).

Only the commit is timed (the data files are written first, as the Ray tasks would).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _file(folder: Path, i: int, extra: int) -> dict[str, Any]:
    """One batch's file: ``id`` plus columns ``c1..c<extra>``; its add action."""
    data: dict[str, Any] = {"id": [i, i + 1]}
    data.update({f"c{k}": [k, k] for k in range(1, extra + 1)})
    name = f"part-{i:05d}.parquet"
    pq.write_table(pa.table(data), folder / name)
    return {"path": name, "size": (folder / name).stat().st_size, "partition_values": {},
            "rows": 2}  # fmt: skip


def _schema(extra: int) -> pa.Schema:
    return pa.schema([("id", pa.int64()), *((f"c{k}", pa.int64()) for k in range(1, extra + 1))])


def _entry(i: int, action: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": f"b{i}", "run_id": "bench", "delta_actions": [action],
            "delta": {"partition_by": []}}  # fmt: skip


def run(batches: int, mode: str) -> list[float]:
    """Per-batch commit seconds of ``batches`` batches committed by ``mode``."""
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, CommitProperties, Transaction

    from celeray import delta_table
    from celeray.delta_schema import delta_schema

    folder = Path(tempfile.mkdtemp(prefix=f"bench-delta-{mode.replace(' ', '-')}-"))
    sink = folder.as_uri()
    delta_table.commit_entry(sink, _entry(0, _file(folder, 0, 0)), _schema(0))
    times = []
    for i in range(1, batches + 1):
        extra = 0 if mode == "append" else i
        action = _file(folder, 10 * i, extra)
        started = time.perf_counter()
        if mode != "two commits":
            delta_table.commit_entry(sink, _entry(i, action), _schema(extra))
        else:
            table = DeltaTable(str(folder))
            table.alter.add_columns(delta_schema(pa.schema([(f"c{i}", pa.int64())])).fields)
            table = DeltaTable(str(folder))
            add = AddAction(action["path"], action["size"], {}, int(time.time() * 1000), True,
                            json.dumps({"numRecords": 2}))  # fmt: skip
            table.create_write_transaction(
                [add], "append", pa.schema(table.schema().to_arrow()),
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(f"celeray-b{i}", 1)]),
            )  # fmt: skip
        times.append(time.perf_counter() - started)
    rows = DeltaTable(str(folder)).to_pyarrow_table().num_rows
    assert rows == 2 * (batches + 1), (mode, rows)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    print(f"{args.batches} batches each, local disk; per-batch commit, median ms")
    for mode in ("append", "one commit", "two commits"):
        times = run(args.batches, mode)
        print(f"  {mode:12s} {1000 * statistics.median(times):7.1f}")


if __name__ == "__main__":
    main()
