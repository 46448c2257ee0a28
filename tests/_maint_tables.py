"""Tables for the maintenance tests: a Parquet sink of committed batches, a Delta table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from celeray.ledger import Ledger


def frame(start: int, n: int, k: int) -> pa.Table:
    """``n`` rows with ids from ``start``, all in partition ``k``."""
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "name": [f"row-{i}" for i in range(start, start + n)],
                     "k": pa.array([k] * n, pa.int64())})  # fmt: skip


def commit_batch(sink: Path, batch_id: str, table: pa.Table) -> list[dict[str, Any]]:
    """Commit ``table`` into the Parquet sink as a batch does: staged Parquet per partition
    (without the partition column, as the writer leaves it), then the ledger entry."""
    ledger = Ledger(f"file://{sink}")
    staging = Path(ledger.staging_url(batch_id).removeprefix("file://"))
    outputs = []
    for k in sorted(set(table.column("k").to_pylist())):
        part = table.filter(pa.compute.equal(table.column("k"), k)).drop_columns(["k"])
        rel = f"k={k}/part-{batch_id}-0.parquet"
        (staging / f"k={k}").mkdir(parents=True, exist_ok=True)
        pq.write_table(part, staging / rel)
        size = (staging / rel).stat().st_size
        outputs.append({"path": rel, "rows": part.num_rows, "bytes": size})
    ledger.commit({"batch_id": batch_id, "pipeline": "p", "run_id": "r", "inputs": [],
                   "quarantined": [], "outputs": outputs})  # fmt: skip
    return outputs


def read_rows(sink: Path) -> list[tuple[Any, ...]]:
    """Every row a reader of the partition folders sees, sorted (duplicates kept)."""
    table = ds.dataset(str(sink), format="parquet", partitioning="hive").to_table()
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "name", "k")), strict=True))


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "name", "k")), strict=True))


def data_files(sink: Path) -> dict[str, list[str]]:
    """Partition folder -> the data files in it (what a lister sees)."""
    out: dict[str, list[str]] = {}
    for p in sorted(sink.glob("k=*/*.parquet")):
        out.setdefault(p.parent.name, []).append(p.name)
    return out


def backdate_removes(table: Path, partition: str, hours: float) -> int:
    """Move the deletion time of the ``remove`` actions of ``partition``'s files back by
    ``hours`` in the Delta log (as if the compaction had run that long ago); return how many."""
    moved = 0
    for log in sorted((table / "_delta_log").glob("*.json")):
        lines = log.read_text().splitlines()
        out = []
        for line in lines:
            action = json.loads(line)
            remove = action.get("remove")
            if remove and remove["path"].startswith(f"{partition}/"):
                remove["deletionTimestamp"] -= int(hours * 3600 * 1000)
                moved += 1
            out.append(json.dumps(action))
        log.write_text("\n".join(out) + "\n")
    return moved


def delta_batch(sink: str, batch_id: str, table: pa.Table, *, publish: bool) -> dict[str, Any]:
    """Write ``table`` into the Delta sink as a batch's Ray task does and commit its ledger
    entry; with ``publish`` also its Delta commit, without it the batch is left as a crash
    between its entry and its Delta commit leaves it. Partitioned by ``k``."""
    from celeray import delta_actions, delta_table
    from celeray.schema_log import SchemaLog
    from ray_jobs.process import unit_prefix
    from ray_jobs.writer import write_parquet

    outputs = write_parquet(
        iter(table.to_batches()), out_url=sink, partition_by=["k"], remove_stale=False,
        basename=unit_prefix(batch_id, 0, [{"url": f"file:///{batch_id}"}], "a0"),
    )  # fmt: skip
    version, _ = SchemaLog(sink).record(table.schema, table.schema, batch_id=batch_id,
                                        run_id="r")  # fmt: skip
    assert version is not None
    ledger = Ledger(sink)
    _fresh, stored = ledger.commit_entry({
        "batch_id": batch_id, "pipeline": "p", "run_id": "r", "inputs": [], "quarantined": [],
        "outputs": outputs, "schema_version": version.version, "table_format": "delta",
        "delta": {"partition_by": ["k"]},
        "delta_actions": delta_actions.add_actions(outputs, ["k"]),
    })  # fmt: skip
    if publish:
        delta_table.publish(ledger, stored)
    return stored
