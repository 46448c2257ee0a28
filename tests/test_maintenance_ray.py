"""Compaction and vacuum on a real local Ray (its own), under the real Redis lock, while
batches commit: Delta tables (appends by deltalake from a thread) and Parquet sinks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray
from deltalake import DeltaTable, write_deltalake

from celeray.errors import MaintenanceBusyError
from celeray.ledger import Ledger
from celeray.maintenance import MaintenanceLock
from celeray.maintenance_flow import MaintenanceFlow
from celeray.pipeline_spec import Pipeline
from celeray.ray_private import private_temp_dir, remove_private_temp_dir
from celeray.runstate import RunStore
from celeray.settings import Settings
from tasks._ray import maintain_on_ray
from tests._maint_tables import (
    backdate_removes,
    commit_batch,
    data_files,
    delta_batch,
    frame,
    read_rows,
    rows_of,
)
from tests._stack import unit_store

MiB = 1024**2


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        pytest.skip("Ray already connected in this process")
    temp = private_temp_dir()  # not the shared /tmp/ray: Ray makes its folders 0777
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=100 * MiB, _temp_dir=str(temp))  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()
        remove_private_temp_dir(temp)


@pytest.fixture
def lock() -> Iterator[MaintenanceLock]:
    with unit_store(lock_ttl=30) as store:
        yield MaintenanceLock(store.r, ttl=30)


SETTINGS = Settings(task_time_limit=120)


def _flow(settings: Settings, lock: MaintenanceLock) -> MaintenanceFlow:
    """The ray worker's flow (the real Ray side) on the test's Redis, whose lock keys
    ``lock`` shares."""
    return MaintenanceFlow(RunStore(lock.r, lock_ttl=30, record_ttl=60), settings,
                           maintain_on_ray)  # fmt: skip


def compact_pipeline(p: Pipeline, settings: Settings, lock: MaintenanceLock) -> dict[str, Any]:
    return _flow(settings, lock).compact_pipeline(p)


def vacuum_pipeline(p: Pipeline, settings: Settings, lock: MaintenanceLock) -> dict[str, Any]:
    return _flow(settings, lock).vacuum_pipeline(p)


def pipeline(sink: Path, **maintenance: Any) -> Pipeline:
    return Pipeline.model_validate({
        "name": "p", "source": str(sink.parent / "landing" / "*.csv"), "sink": str(sink),
        "partition_by": ["k"], "maintenance": {"target_file_size": "1MiB", **maintenance},
    })  # fmt: skip


def two(i: int) -> pa.Table:
    return pa.concat_tables([frame(i * 10, 5, 0), frame(i * 10 + 5, 5, 1)])


def delta_files_per_partition(table: DeltaTable) -> dict[str, int]:
    out: dict[str, int] = {}
    for uri in table.file_uris():
        part = uri.rsplit("/", 2)[-2]
        out[part] = out.get(part, 0) + 1
    return out


class Appender(threading.Thread):
    """Commits batches (one frame each) until stopped: batches committing meanwhile."""

    def __init__(self, commit: Any, first: int) -> None:
        super().__init__(daemon=True)
        self.commit, self.next, self.stop = commit, first, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.commit(self.next)
                self.next += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def end(self) -> int:
        self.stop.set()
        self.join(60)
        assert self.error is None, self.error
        return self.next


def test_delta_compaction_while_batches_commit(tmp_path: Path, lock: MaintenanceLock) -> None:
    sink = tmp_path / "lake"
    url = str(sink)
    for i in range(40):  # 80 small files over 2 partitions
        write_deltalake(url, two(i), mode="append", partition_by=["k"])
    before_version = DeltaTable(url).version()
    before_rows = rows_of(DeltaTable(url).to_pyarrow_table())
    assert delta_files_per_partition(DeltaTable(url)) == {"k=0": 40, "k=1": 40}

    appender = Appender(lambda i: write_deltalake(url, two(i), mode="append",
                                                  partition_by=["k"]), first=1000)  # fmt: skip
    appender.start()
    out = compact_pipeline(pipeline(sink), SETTINGS, lock)
    last = appender.end()
    assert appender.next > 1000, "no batch committed during the compaction"
    assert out["format"] == "delta" and out["files_removed"] >= 80 and out["files_added"] == 2

    table = DeltaTable(url)
    expected = sorted(before_rows + [r for i in range(1000, last) for r in rows_of(two(i))])
    got = rows_of(table.to_pyarrow_table())
    assert got == expected  # rows identical: none lost, none twice
    assert len(set(got)) == len(got)
    # time travel: before compaction, and the version just before the compaction's commit
    assert rows_of(DeltaTable(url, version=before_version).to_pyarrow_table()) == before_rows
    optimize = next(h for h in table.history() if h["operation"] == "OPTIMIZE")
    v = optimize["version"]
    assert (rows_of(DeltaTable(url, version=v - 1).to_pyarrow_table())
            == rows_of(DeltaTable(url, version=v).to_pyarrow_table()))  # fmt: skip
    # once batches stop, files per partition drop to the target: one file each here
    compact_pipeline(pipeline(sink), SETTINGS, lock)
    assert delta_files_per_partition(DeltaTable(url)) == {"k=0": 1, "k=1": 1}
    assert rows_of(DeltaTable(url).to_pyarrow_table()) == expected


def test_delta_vacuum_deletes_only_unreferenced_files_older_than_retention(
    tmp_path: Path, lock: MaintenanceLock,
) -> None:
    sink = tmp_path / "lake"
    url = str(sink)
    for i in range(10):
        write_deltalake(url, two(i), mode="append", partition_by=["k"])
    old_version = DeltaTable(url).version()
    before_rows = rows_of(DeltaTable(url).to_pyarrow_table())
    old_files = {u.removeprefix("file://") for u in DeltaTable(url).file_uris()}
    compact_pipeline(pipeline(sink), SETTINGS, lock)
    live = {u.removeprefix("file://") for u in DeltaTable(url).file_uris()}
    assert not live & old_files
    # an orphan (a batch's file not committed yet), unreferenced by any version
    orphan = sink / "k=0" / "part-uncommitted-batch.parquet"
    orphan.write_bytes(Path(next(iter(live))).read_bytes())
    # the compaction of partition k=0 "ran" 3 hours ago, k=1's just now
    assert backdate_removes(sink, "k=0", hours=3) == 10

    out = vacuum_pipeline(pipeline(sink, vacuum_retention="2h"), SETTINGS, lock)
    deleted = {str(sink / p) for p in out["deleted"]}
    assert deleted == {f for f in old_files if "/k=0/" in f}  # unreferenced and old enough
    assert all(Path(f).exists() for f in old_files if "/k=1/" in f)  # too recent: kept
    assert all(Path(f).exists() for f in live)  # referenced: kept
    assert orphan.exists()  # never in the log: not Delta's to delete
    assert rows_of(DeltaTable(url).to_pyarrow_table()) == before_rows
    # time travel to before the compaction still reads partition k=1, whose files are kept
    old = DeltaTable(url, version=old_version).to_pyarrow_table(filters=[("k", "=", 1)])
    assert rows_of(old) == [r for r in before_rows if r[2] == 1]


def test_vacuum_retention_is_raised_to_the_task_time_limit(
    tmp_path: Path, lock: MaintenanceLock,
) -> None:
    sink = tmp_path / "lake"
    for i in range(4):
        write_deltalake(str(sink), two(i), mode="append", partition_by=["k"])
    compact_pipeline(pipeline(sink), SETTINGS, lock)
    backdate_removes(sink, "k=0", hours=1.5)
    out = vacuum_pipeline(pipeline(sink, vacuum_retention="0h"),
                          Settings(task_time_limit=2 * 3600), lock)  # fmt: skip
    assert out["retention_seconds"] == 7200 and "shorter than" in out["notes"][0]
    assert out["files_deleted"] == 0  # 1.5 h old removals survive a 2 h floor
    out = vacuum_pipeline(pipeline(sink, vacuum_retention="0h"), Settings(task_time_limit=60),
                          lock)  # fmt: skip
    assert out["retention_hours"] == 1 and out["files_deleted"] == 4


def test_never_two_maintenances_of_one_table(tmp_path: Path, lock: MaintenanceLock) -> None:
    sink = tmp_path / "lake"
    write_deltalake(str(sink), two(0), mode="append", partition_by=["k"])
    with lock.held(pipeline(sink).sink, "someone else"):
        with pytest.raises(MaintenanceBusyError):
            compact_pipeline(pipeline(sink), SETTINGS, lock)
        with pytest.raises(MaintenanceBusyError):
            vacuum_pipeline(pipeline(sink), SETTINGS, lock)
    compact_pipeline(pipeline(sink), SETTINGS, lock)  # free again


def test_parquet_compaction_on_ray_while_batches_commit(
    tmp_path: Path, lock: MaintenanceLock,
) -> None:
    sink = tmp_path / "lake"
    for i in range(30):
        commit_batch(sink, f"b{i:04d}", two(i))
    before = read_rows(sink)
    appender = Appender(lambda i: commit_batch(sink, f"b{i:04d}", two(i)), first=1000)
    appender.start()
    out = compact_pipeline(pipeline(sink), SETTINGS, lock)
    last = appender.end()
    assert out["format"] == "parquet" and out["files_removed"] >= 60
    expected = sorted(before + [r for i in range(1000, last) for r in rows_of(two(i))])
    assert read_rows(sink) == expected
    out = compact_pipeline(pipeline(sink), SETTINGS, lock)  # batches stopped: the rest
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 1, "k=1": 1}
    assert read_rows(sink) == expected and len(set(expected)) == len(expected)
    assert vacuum_pipeline(pipeline(sink), SETTINGS, lock)["removed_again"] == 0


def test_maintenance_publishes_pending_delta_batches_first(
    tmp_path: Path, lock: MaintenanceLock,
) -> None:
    """A batch committed in the ledger whose Delta commit a crash left unmade (no run since)
    is published before a vacuum or compaction touches the table: its files, hours old and
    in no Delta version yet, are kept and become the table's, once."""
    sink = tmp_path / "lake"
    url = pipeline(sink).sink
    delta_batch(url, "b1", two(1), publish=True)
    pending = delta_batch(url, "b2", two(2), publish=False)  # killed after its entry
    files = [sink / a["path"] for a in pending["delta_actions"]]
    for f in files:  # written long before the vacuum: older than any retention asked for
        os.utime(f, (time.time() - 5 * 3600,) * 2)
    assert rows_of(DeltaTable(str(sink)).to_pyarrow_table()) == rows_of(two(1))

    out = vacuum_pipeline(pipeline(sink, vacuum_retention="1h"), SETTINGS, lock)
    assert out["published_pending"] == 1 and all(f.exists() for f in files)
    table = DeltaTable(str(sink))
    assert rows_of(table.to_pyarrow_table()) == sorted(rows_of(two(1)) + rows_of(two(2)))
    assert {e["batch_id"]: e["delta_version"] for e in Ledger(url).entries()} == {
        "b1": 0, "b2": 1}
    assert table.transaction_version("celeray-b2") == 1

    delta_batch(url, "b3", two(3), publish=False)
    out = compact_pipeline(pipeline(sink), SETTINGS, lock)
    assert out["published_pending"] == 1
    expected = sorted(rows_of(two(1)) + rows_of(two(2)) + rows_of(two(3)))
    table = DeltaTable(str(sink))
    assert rows_of(table.to_pyarrow_table()) == expected
    assert delta_files_per_partition(table) == {"k=0": 1, "k=1": 1}  # b3's files compacted too
    again = vacuum_pipeline(pipeline(sink, vacuum_retention="1h"), SETTINGS, lock)
    assert again["published_pending"] == 0
    appends = [h for h in table.history() if h["operation"] != "OPTIMIZE"]
    assert len(appends) == 3  # one Delta commit per batch, none twice
