"""Delta sinks below the stack: add actions, the format decision, the commit and its recovery.

The commits run against real Delta tables on a local disk (and one on moto's S3), written by
``ray_jobs.writer`` as a Ray task would write them, and read back with deltalake and Polars.
The crash cases stop the commit between its steps by calling the steps one at a time, as a
killed process would have left them.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import celeray.reading
from celeray import delta_actions, delta_schema, delta_table, table_format
from celeray.errors import LedgerError, TableFormatError
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog
from ray_jobs.process import unit_prefix
from ray_jobs.writer import write_parquet

PARTS = ["year", "month"]


def _rows(n: int, start: int = 0, **extra: list[Any]) -> pa.Table:
    data: dict[str, Any] = {
        "id": list(range(start, start + n)),
        "year": [2013] * n,
        "month": [1 + i % 2 for i in range(n)],
        **extra,
    }
    return pa.table(data)


def _batch(sink: str, batch_id: str, table: pa.Table, *, attempt: str = "a0") -> dict[str, Any]:
    """Write ``table`` into the sink as a Delta batch's Ray task does; return its entry,
    committed to the ledger (steps 1 and 2 of celeray.delta_table)."""
    outputs = write_parquet(
        iter(table.to_batches()), out_url=sink, partition_by=PARTS, remove_stale=False,
        basename=unit_prefix(batch_id, 0, [{"url": f"file:///{batch_id}"}], attempt),
    )  # fmt: skip
    version, _ = SchemaLog(sink).record(table.schema, table.schema, batch_id=batch_id,
                                        run_id="r")  # fmt: skip
    assert version is not None
    entry = {
        "batch_id": batch_id, "run_id": "r", "inputs": [], "quarantined": [],
        "outputs": outputs, "schema_version": version.version, "table_format": "delta",
        "delta": {"partition_by": PARTS},
        "delta_actions": delta_actions.add_actions(outputs, PARTS),
    }  # fmt: skip
    fresh, stored = Ledger(sink).commit_entry(entry)
    assert fresh
    return stored


def _delta_rows(sink: str) -> list[int]:
    table = delta_table.open_table(sink)
    return sorted(pa.table(table.to_pyarrow_table())["id"].to_pylist())


def _commits(sink: str) -> int:
    return int(delta_table.open_table(sink).version()) + 1


@pytest.fixture
def sink(tmp_path: Path) -> str:
    return (tmp_path / "lake").as_uri()


# -- pure logic ---------------------------------------------------------------------------


def test_partition_values_decode_hive_folders() -> None:
    assert delta_actions.partition_values("year=2013/month=1/p.parquet", PARTS) == {
        "year": "2013", "month": "1"}  # fmt: skip
    assert delta_actions.partition_values("k=a%20b/p.parquet", ["k"]) == {"k": "a b"}
    assert delta_actions.partition_values("k=__HIVE_DEFAULT_PARTITION__/p", ["k"]) == {"k": None}
    assert delta_actions.partition_values("p.parquet", []) == {}
    for bad in ("year=2013/p.parquet", "month=1/year=2013/p.parquet", "x/y/p.parquet"):
        with pytest.raises(LedgerError):
            delta_actions.partition_values(bad, PARTS)


def test_add_actions_sorted_with_sizes_and_rows() -> None:
    outputs = [{"path": "k=b/p1.parquet", "rows": 3, "bytes": 30},
               {"path": "k=a/p0.parquet", "rows": None, "bytes": 10}]  # fmt: skip
    assert delta_actions.add_actions(outputs, ["k"]) == [
        {"path": "k=a/p0.parquet", "size": 10, "partition_values": {"k": "a"}, "rows": 0},
        {"path": "k=b/p1.parquet", "size": 30, "partition_values": {"k": "b"}, "rows": 3},
    ]


def test_app_id_is_per_batch() -> None:
    assert delta_table.app_id("abc") == "celeray-abc" != delta_table.app_id("abd")


def test_unit_prefix_names_the_attempt() -> None:
    files = [{"url": "file:///x.csv"}]
    plain = unit_prefix("b1", 0, files)
    first, second = unit_prefix("b1", 0, files, "ab12"), unit_prefix("b1", 0, files, "cd34")
    assert plain.startswith("part-b1-u00000-") and first.startswith("part-b1-aab12-u00000-")
    assert len({plain, first, second}) == 3  # a new attempt never reuses a name
    assert unit_prefix("b1", 0, files, "../x") == unit_prefix("b1", 0, files, "x")


@pytest.mark.parametrize(
    ("declared", "holds_delta", "holds_parquet", "expected"),
    [
        (None, False, False, "delta"),
        ("parquet", False, False, "parquet"),
        ("delta", False, False, "delta"),
        (None, False, True, "parquet"),  # an existing Parquet sink is kept as it is
        ("parquet", False, True, "parquet"),
        (None, True, False, "delta"),
        ("delta", True, False, "delta"),
    ],
)
def test_format_decision(declared, holds_delta, holds_parquet, expected) -> None:  # type: ignore[no-untyped-def]
    got = table_format.decide(declared, holds_delta=holds_delta, holds_parquet=holds_parquet,
                              sink="s")  # fmt: skip
    assert got == expected


@pytest.mark.parametrize(("declared", "delta", "parquet", "fix"),
                         [("delta", False, True, 'table_format = "parquet"'),
                          ("parquet", True, False, "remove the key")])  # fmt: skip
def test_format_contradiction_is_refused_with_the_fix(declared, delta, parquet, fix) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TableFormatError, match=fix):
        table_format.decide(declared, holds_delta=delta, holds_parquet=parquet, sink="s")


def test_format_of_sinks_on_disk(tmp_path: Path) -> None:
    parquet = (tmp_path / "old").as_uri()
    Ledger(parquet).commit({"batch_id": "b", "inputs": [], "quarantined": [], "outputs": []})
    assert table_format.resolve(None, parquet) == "parquet"
    with pytest.raises(TableFormatError):
        table_format.resolve("delta", parquet)
    new = (tmp_path / "new").as_uri()
    assert table_format.resolve(None, new) == "delta"
    # a Delta sink whose first entry is written and whose Delta commit is not made yet
    half = (tmp_path / "half").as_uri()
    _batch(half, "b1", _rows(2))
    assert table_format.resolve(None, half) == "delta"


def test_widening_is_refused_for_delta(sink: str) -> None:
    delta_table.publish(Ledger(sink), _batch(sink, "b1", _rows(2)))
    narrow = pa.schema([("id", pa.int64()), ("year", pa.int64()), ("month", pa.int64())])
    table = delta_table.open_table(sink)
    delta_schema.check_schema(sink, narrow, table)  # same types: fine
    delta_schema.check_schema(sink, narrow.append(pa.field("new", pa.string())), table)  # new
    with pytest.raises(TableFormatError, match="id: long -> double"):
        delta_schema.check_schema(sink, narrow.set(0, pa.field("id", pa.float64())), table)
    with pytest.raises(TableFormatError, match="no type for u"):
        delta_schema.check_schema(sink, narrow.append(pa.field("u", pa.uint32())), table)


# -- the commit --------------------------------------------------------------------------


def test_batches_commit_once_each_and_read_back(sink: str) -> None:
    import polars as pl

    ledger = Ledger(sink)
    first = delta_table.publish(ledger, _batch(sink, "b1", _rows(4)))
    second = delta_table.publish(ledger, _batch(sink, "b2", _rows(3, start=10)))
    assert (first.version, first.fresh, second.version, second.fresh) == (0, True, 1, True)
    again = delta_table.publish(ledger, ledger.entries()[0])  # a redelivered commit
    assert (again.version, again.fresh) == (0, False)
    assert _delta_rows(sink) == [0, 1, 2, 3, 10, 11, 12]
    assert _commits(sink) == 2
    assert {e["batch_id"]: e["delta_version"] for e in ledger.entries()} == {"b1": 0, "b2": 1}
    path = delta_table.delta_uri(sink)
    assert sorted(pl.read_delta(path)["id"].to_list()) == _delta_rows(sink)
    assert pl.read_delta(path, version=0).height == 4  # time travel: before batch b2
    assert celeray.reading.dataset(sink).count_rows() == 7
    assert celeray.reading.dataset(sink, version=second.version - 1).count_rows() == 4


def test_a_new_table_is_checkpointed_every_ten_commits(sink: str, tmp_path: Path) -> None:
    """A table celeray creates says ``delta.checkpointInterval = 10``, so a load (one at
    every batch's commit) replays at most ten commits; each batch's version is recorded."""
    import polars as pl

    ledger = Ledger(sink)
    done = [delta_table.publish(ledger, _batch(sink, f"b{i:02d}", _rows(1, start=i)))
            for i in range(23)]
    assert [d.version for d in done] == list(range(23))
    table = delta_table.open_table(sink)
    assert table.metadata().configuration["delta.checkpointInterval"] == "10"
    log = tmp_path / "lake" / "_delta_log"
    # after the 10th and 20th commits (versions 9 and 19), where delta-rs writes them
    assert sorted(int(p.name.split(".")[0]) for p in log.glob("*.checkpoint.parquet")) == [9, 19]
    assert {e["batch_id"]: e["delta_version"] for e in ledger.entries()} == {
        f"b{i:02d}": i for i in range(23)}
    assert sorted(pl.read_delta(delta_table.delta_uri(sink))["id"].to_list()) == list(range(23))


def test_a_commit_from_a_stale_load_lands_after_the_newer_versions(sink: str) -> None:
    """A batch's commit starts from the table as loaded for its schema check; another
    batch's commit landing in between moves it to the next version, once."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    stale = delta_table.open_table(sink)
    delta_table.publish(ledger, _batch(sink, "b2", _rows(2, start=10)))
    late = delta_table.publish(ledger, _batch(sink, "b3", _rows(2, start=20)), stale)
    assert (late.version, late.fresh) == (2, True)
    # b2 once more from the load before its commit (a redelivered commit racing it): Delta's
    # conflict check refuses the append, and the fresh load finds b2's transaction
    b2 = ledger.entries()[1]
    schema = SchemaLog(sink).at(int(b2["schema_version"])).table
    again = delta_table.commit_entry(sink, b2, schema, stale)
    assert (again.version, again.fresh) == (1, False)
    assert _delta_rows(sink) == [0, 1, 10, 11, 20, 21]
    assert _commits(sink) == 3


def test_crash_between_entry_and_delta_commit(sink: str) -> None:
    """The entry is written, the process dies before the Delta commit: the next run's
    recovery makes it, once."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    _batch(sink, "b2", _rows(3, start=10))  # killed right after the ledger entry
    assert _delta_rows(sink) == [0, 1]
    assert "delta_version" not in ledger.entries()[1]
    assert delta_table.republish(ledger) == 1
    assert _delta_rows(sink) == [0, 1, 10, 11, 12]
    assert delta_table.republish(ledger) == 0  # nothing left to do
    assert _commits(sink) == 2


def test_crash_right_after_the_delta_commit(sink: str) -> None:
    """The Delta commit is made, the process dies before writing its version down: recovery
    finds the app transaction and only writes the version."""
    ledger = Ledger(sink)
    entry = _batch(sink, "b1", _rows(2))
    schema = SchemaLog(sink).current().table  # type: ignore[union-attr]
    made = delta_table.commit_entry(sink, entry, schema)  # killed before record_delta
    assert made == delta_table.DeltaCommit(0, True)
    entry2 = _batch(sink, "b2", _rows(2, start=5))
    delta_table.commit_entry(sink, entry2, schema)  # this one too, a commit later
    assert delta_table.republish(ledger) == 2
    assert _delta_rows(sink) == [0, 1, 5, 6] and _commits(sink) == 2
    assert {e["batch_id"]: e["delta_version"] for e in ledger.entries()} == {"b1": 0, "b2": 1}


def test_concurrent_publishers_of_one_batch_commit_once(sink: str) -> None:
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1, start=100)))
    entry = _batch(sink, "b1", _rows(5))
    schema = SchemaLog(sink).current().table  # type: ignore[union-attr]
    results: list[Any] = []

    def go() -> None:
        try:
            results.append(delta_table.commit_entry(sink, entry, schema))
        except Exception as exc:  # a transient failure is retried by the task: no rows
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in results if isinstance(r, delta_table.DeltaCommit) and r.fresh) == 1
    assert _delta_rows(sink) == [0, 1, 2, 3, 4, 100]


def test_batches_creating_the_table_at_once_each_record_their_own_version(sink: str) -> None:
    """Three batches find no table and create it at once: one gets version 0, the others
    commit on top of it, and each batch's version is the one holding its app transaction."""
    entries = [_batch(sink, f"c{i}", _rows(2, start=10 * i)) for i in range(3)]
    schema = SchemaLog(sink).current().table  # type: ignore[union-attr]
    start = threading.Barrier(len(entries))
    made: dict[str, Any] = {}

    def go(entry: dict[str, Any]) -> None:
        start.wait()
        made[entry["batch_id"]] = delta_table.commit_entry(sink, entry, schema)

    threads = [threading.Thread(target=go, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = {b: c.version for b, c in made.items()}
    assert sorted(versions.values()) == [0, 1, 2], versions
    table = delta_table.open_table(sink)
    for batch_id, version in versions.items():
        assert delta_table._find_version(sink, batch_id, version, version) == version
        ids = pa.table(delta_table.open_table(sink, version).to_pyarrow_table())["id"]
        assert 10 * int(batch_id[1]) in ids.to_pylist()
    assert _delta_rows(sink) == [0, 1, 10, 11, 20, 21] and table.version() == 2


@pytest.mark.parametrize("ntz", [False, True], ids=["timestamp", "timestamp_ntz"])
def test_the_table_celeray_creates_is_the_one_delta_rs_would(
    sink: str, tmp_path: Path, ntz: bool
) -> None:
    """Version 0 is celeray's own commit: the protocol, schema, partitioning and settings
    that delta-rs gives a table it creates, and deltalake, Polars and pyarrow read it,
    delta-rs appends to it and compacts it."""
    import datetime as dt

    import polars as pl
    from deltalake import DeltaTable, write_deltalake
    from deltalake.transaction import create_table_with_add_actions

    stamps = [dt.datetime(2013, 1, 1, 5)] * 4
    rows = _rows(4, t=pa.array(stamps, pa.timestamp("us", None if ntz else "UTC")))
    done = delta_table.publish(Ledger(sink), _batch(sink, "b1", rows))
    assert (done.version, done.fresh) == (0, True)
    ours = DeltaTable(delta_table.delta_uri(sink))
    theirs_uri = (tmp_path / "delta-rs").as_uri()
    create_table_with_add_actions(
        theirs_uri, delta_schema.delta_schema(rows.schema), [], mode="error",
        partition_by=PARTS, configuration={"delta.checkpointInterval": "10"},
    )  # fmt: skip
    theirs = DeltaTable(theirs_uri)
    assert ours.protocol() == theirs.protocol()
    assert ours.schema().to_json() == theirs.schema().to_json()
    for key in ("partition_columns", "configuration", "name", "description"):
        assert getattr(ours.metadata(), key) == getattr(theirs.metadata(), key), key
    created = ours.history()[-1]
    assert (created["operation"], created["engineInfo"]) == ("CREATE TABLE", "celeray")
    assert ours.transaction_version("celeray-b1") == delta_table.APP_VERSION
    assert _delta_rows(sink) == [0, 1, 2, 3]
    read = pl.read_delta(delta_table.delta_uri(sink)).sort("id")["t"].to_list()
    assert [v.replace(tzinfo=None) for v in read] == stamps
    assert celeray.reading.dataset(sink).count_rows() == 4
    write_deltalake(delta_table.delta_uri(sink), _rows(2, start=10, t=rows["t"][:2]),
                    mode="append", partition_by=PARTS)  # fmt: skip
    DeltaTable(delta_table.delta_uri(sink)).optimize.compact()
    assert _delta_rows(sink) == [0, 1, 2, 3, 10, 11]


def test_new_columns_join_the_delta_schema(sink: str) -> None:
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    delta_table.publish(ledger, _batch(sink, "b2", _rows(2, start=5, note=["x", "y"])))
    table = pa.table(delta_table.open_table(sink).to_pyarrow_table()).sort_by("id")
    assert table["note"].to_pylist() == [None, None, "x", "y"]


def test_timestamps_of_any_unit_are_delta_timestamps(sink: str) -> None:
    import datetime as dt

    import polars as pl

    when = [dt.datetime(2013, 1, 1, 5, tzinfo=dt.UTC), dt.datetime(2013, 1, 2, 6, tzinfo=dt.UTC)]
    stamps = pa.array(when, pa.timestamp("s", tz="UTC"))
    delta_schema.check_schema(sink, pa.schema([("t", stamps.type)]), None)  # no table yet
    delta_table.publish(Ledger(sink), _batch(sink, "b1", _rows(2, t=stamps)))
    table = pa.table(delta_table.open_table(sink).to_pyarrow_table()).sort_by("id")
    assert table["t"].to_pylist() == when
    assert pl.read_delta(delta_table.delta_uri(sink)).sort("id")["t"].to_list() == when


def test_a_missing_file_is_never_committed(sink: str, tmp_path: Path) -> None:
    ledger = Ledger(sink)
    entry = _batch(sink, "b1", _rows(2))
    (tmp_path / "lake" / entry["delta_actions"][0]["path"]).unlink()
    with pytest.raises(LedgerError, match="missing"):
        delta_table.publish(ledger, entry)
    assert delta_table.open_table(sink) is None
    assert ledger.delta_marker("b1") is None


def test_a_batch_without_rows_publishes_nothing(sink: str) -> None:
    ledger = Ledger(sink)
    entry = {"batch_id": "empty", "inputs": [], "quarantined": [], "outputs": [],
             "schema_version": None, "table_format": "delta", "delta_actions": []}  # fmt: skip
    _, stored = ledger.commit_entry(entry)
    assert delta_table.publish(ledger, stored) == delta_table.DeltaCommit(None, False)
    assert ledger.entries()[0]["delta_version"] is None


def test_delta_on_s3(s3: Any) -> None:
    """On moto's S3: the commit goes through conditional puts, recovery the same way."""
    sink = f"s3://lake/unit-{uuid.uuid4().hex[:8]}/t"
    ledger = Ledger(sink)
    assert delta_table.storage_options(sink)["AWS_ENDPOINT_URL"] == s3.endpoint
    delta_table.publish(ledger, _batch(sink, "b1", _rows(3)))
    _batch(sink, "b2", _rows(2, start=7))  # a crash after the entry
    assert delta_table.republish(ledger) == 1
    assert _delta_rows(sink) == [0, 1, 2, 7, 8]
    assert {e["batch_id"]: e["delta_version"] for e in ledger.entries()} == {"b1": 0, "b2": 1}


def test_the_demo_tells_how_to_read_the_table() -> None:
    from celeray.cli_stack import reading_hints

    hints = reading_hints("/srv/lake/flights", 7)
    text = "\n".join(hints)
    assert 'DeltaTable("/srv/lake/flights").to_pandas()' in text
    assert 'polars.read_delta("/srv/lake/flights")' in text
    assert "delta_scan('/srv/lake/flights');" in text
    assert 'read_delta("/srv/lake/flights", version=6)' in hints[-1]
    assert len(reading_hints("/t", None)) == 3

