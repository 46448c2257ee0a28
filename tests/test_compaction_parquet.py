"""Parquet-sink compaction committed through the ledger: crashes at each step, then recovery.

The rewrite is the Ray side's own function, called in this process (the Ray path is in
tests/test_maintenance_ray.py); what is tested here is the commit and its recovery.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from celeray import storage
from celeray.compaction import CompactionLog, compaction_id_for, output_path, plan_groups
from celeray.ledger import Ledger
from celeray.maintenance import compact_parquet, vacuum_parquet
from celeray.pipeline_spec import Pipeline
from ray_jobs.maintain import rewrite_parquet_group
from tests._maint_tables import commit_batch, data_files, frame, read_rows, rows_of

TARGET = 1024**2


def local_rewrite(sink: str) -> Any:
    def rewrite(calls: list[tuple[list[str], str]]) -> list[dict[str, Any]]:
        return [rewrite_parquet_group(sink, paths, out) for paths, out in calls]

    return rewrite


@pytest.fixture
def sink(tmp_path: Path) -> Path:
    """A Parquet sink of 12 committed batches over 2 partitions (24 small files)."""
    root = tmp_path / "lake"
    for i in range(12):
        commit_batch(root, f"b{i:03d}", _two_partitions(i))
    return root


def _two_partitions(i: int) -> pa.Table:
    return pa.concat_tables([frame(i * 100, 50, 0), frame(i * 100 + 50, 50, 1)])


def pipeline(root: Path) -> Pipeline:
    return Pipeline.model_validate({"name": "p", "source": str(root.parent / "in" / "*.csv"),
                                    "sink": str(root)})  # fmt: skip


def staged_compaction(root: Path) -> tuple[CompactionLog, dict[str, Any]]:
    """Plan and rewrite (staged, not committed) as compact_parquet does; the record."""
    sink = f"file://{root}"
    clog = CompactionLog(sink)
    groups = plan_groups(clog.live_files(Ledger(sink)), TARGET)
    cid = compaction_id_for(groups)
    outs = [output_path(g, cid, i) for i, g in enumerate(groups)]
    written = local_rewrite(sink)([([f["path"] for f in g], storage.join(clog.staging_url(cid), o))
                                   for g, o in zip(groups, outs, strict=True)])  # fmt: skip
    record = {"compaction_id": cid, "pipeline": "p", "groups": [
        {"replaced": g, "output": {"path": o, **w}}
        for g, o, w in zip(groups, outs, written, strict=True)]}  # fmt: skip
    return clog, record


def test_compaction_drops_files_and_keeps_rows(sink: Path) -> None:
    before = read_rows(sink)
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 12, "k=1": 12}
    out = compact_parquet(pipeline(sink), local_rewrite(f"file://{sink}"), target_size=TARGET)
    assert (out["files_before"], out["files_removed"], out["files_added"]) == (24, 24, 2)
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 1, "k=1": 1}
    assert read_rows(sink) == before
    assert len(set(before)) == len(before) == 1200
    again = compact_parquet(pipeline(sink), local_rewrite(f"file://{sink}"), target_size=TARGET)
    assert again["files_added"] == 0  # nothing left to gain
    # later batches join the compacted file at the next compaction
    commit_batch(sink, "b100", _two_partitions(100))
    out = compact_parquet(pipeline(sink), local_rewrite(f"file://{sink}"), target_size=TARGET)
    assert (out["files_removed"], out["files_added"]) == (4, 2)
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 1, "k=1": 1}
    assert read_rows(sink) == sorted(before + read_rows_of_batch(100))
    assert not (sink / "_celeray" / "compaction" / out["compaction_id"]).exists()


def read_rows_of_batch(i: int) -> list[tuple[Any, ...]]:
    return rows_of(_two_partitions(i))


def test_crash_before_the_record_changes_nothing(sink: Path) -> None:
    before, files = read_rows(sink), data_files(sink)
    clog, record = staged_compaction(sink)  # then the process dies
    assert read_rows(sink) == before  # the new files are hidden under _celeray
    assert clog.recover() == {"rolled_forward": 0, "dropped": 1, "removed_again": 0}
    assert data_files(sink) == files and read_rows(sink) == before
    assert not Path(clog.staging_url(record["compaction_id"]).removeprefix("file://")).exists()


def test_crash_after_the_record_rolls_forward(sink: Path) -> None:
    before = read_rows(sink)
    clog, record = staged_compaction(sink)
    assert clog.write_record(record)[0]  # the commit point; then the process dies
    assert read_rows(sink) == before  # nothing moved yet: readers see the old files
    assert clog.recover() == {"rolled_forward": 1, "dropped": 0, "removed_again": 0}
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 1, "k=1": 1}
    assert read_rows(sink) == before


def test_crash_between_the_moves_rolls_forward(sink: Path) -> None:
    before = read_rows(sink)
    clog, record = staged_compaction(sink)
    clog.write_record(record)
    first = record["groups"][0]["output"]["path"]  # one new file moved, then the crash
    storage.move(storage.join(clog.staging_url(record["compaction_id"]), first),
                 f"file://{sink}/{first}")  # fmt: skip
    # What a lister sees now: no row missing, the first group's rows twice (docs say so).
    seen = read_rows(sink)
    assert set(seen) == set(before) and len(seen) == len(before) + 600
    clog.recover()
    assert read_rows(sink) == before
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 1, "k=1": 1}


def test_a_batch_done_again_after_compaction_puts_nothing_back(sink: Path) -> None:
    before = read_rows(sink)
    compact_parquet(pipeline(sink), local_rewrite(f"file://{sink}"), target_size=TARGET)
    # batch b003's transform runs again (a redelivered message) and commits: its entry is
    # there, so this is a redo; its staged outputs were compacted and must stay out
    outputs = commit_batch(sink, "b003", _two_partitions(3))
    assert all(not (sink / o["path"]).exists() for o in outputs)
    assert read_rows(sink) == before
    # a redo that raced the compaction and put a file back: the next maintenance removes it
    staged = sink / "_celeray" / "x"
    commit_batch(staged, "b003", _two_partitions(3))
    shutil.copy(staged / outputs[0]["path"], sink / outputs[0]["path"])
    assert len(read_rows(sink)) == len(before) + 50
    assert vacuum_parquet(pipeline(sink))["removed_again"] == 1
    assert read_rows(sink) == before


def test_batches_committing_meanwhile_are_not_touched(sink: Path) -> None:
    """A batch whose entry is written but whose moves are not done is left out."""
    before = read_rows(sink)
    ledger = Ledger(f"file://{sink}")
    commit_batch(sink, "b200", _two_partitions(200))
    entry = next(e for e in ledger.entries() if e["batch_id"] == "b200")
    # as if its moves had not happened yet: its files back in staging
    for o in entry["outputs"]:
        dst = Path(ledger.staging_url("b200").removeprefix("file://")) / o["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        (sink / o["path"]).rename(dst)
    live = {f["path"] for f in CompactionLog(f"file://{sink}").live_files(ledger)}
    assert not live & {o["path"] for o in entry["outputs"]}
    compact_parquet(pipeline(sink), local_rewrite(f"file://{sink}"), target_size=TARGET)
    ledger.recover()  # the interrupted batch's moves finish after the compaction
    assert read_rows(sink) == sorted(before + read_rows_of_batch(200))
