"""A batch that brings new columns: its schema change and its files in ONE Delta commit.

delta-rs drops a wider schema from an append (delta-rs#3934), so such a batch's version is
written by :mod:`celeray.delta_log`. These tests hold that version to what delta-rs would
have written: readable by deltalake, Polars and DuckDB (over deltalake's pyarrow dataset:
DuckDB's own delta extension needs a download this machine cannot make), one version per
batch with both ``metaData`` and the adds, concurrent batches adding different columns all
ending in the schema, and recovery unchanged. Real tables on a local disk and on moto's S3.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import celeray.reading
from celeray import delta_log, delta_schema, delta_table, storage
from celeray.delta_log import TableState
from celeray.errors import TableFormatError
from celeray.ledger import Ledger
from celeray.schema_log import SchemaLog
from tests.test_delta_table import _batch, _delta_rows, _rows


@pytest.fixture
def sink(tmp_path: Path) -> str:
    return (tmp_path / "lake").as_uri()


def _version_actions(sink: str, version: int) -> list[dict[str, Any]]:
    fs, root = storage.open_fs(sink)
    with fs.open(f"{root.rstrip('/')}/_delta_log/{version:020d}.json", "rb") as f:
        return [json.loads(line) for line in f.read().decode().splitlines()]


def _kinds(actions: list[dict[str, Any]]) -> list[str]:
    return [next(iter(a)) for a in actions]


def _state(**over: Any) -> TableState:
    base: dict[str, Any] = {
        "version": 4, "min_reader": 1, "min_writer": 2, "reader_features": (),
        "writer_features": (), "table_id": "t", "name": None, "description": None,
        "partition_columns": ("k",), "created_time": 1, "configuration": {},
        "schema": {"type": "struct", "fields": [
            {"name": "id", "type": "long", "nullable": True, "metadata": {}}]},
    }  # fmt: skip
    return TableState(**{**base, **over})


# -- pure logic ---------------------------------------------------------------------------


def _commit_at_once(sink: str, entries: list[dict[str, Any]]) -> list[Any]:
    """Commit each entry from a thread of its own, all at once: each result, or the
    exception it raised (collected, so an assertion shows it)."""
    results: list[Any] = []

    def go(entry: dict[str, Any]) -> None:
        schema = SchemaLog(sink).at(int(entry["schema_version"])).table  # type: ignore[union-attr]
        try:
            results.append(delta_table.commit_entry(sink, entry, schema))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=go, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_paths_are_encoded_as_delta_rs_encodes_them() -> None:
    assert delta_log.encode_path("year=2013/part-b1-a0.parquet") == "year=2013/part-b1-a0.parquet"
    # seen in a log delta-rs 1.6.6 wrote for the path "p=q%2Fr s/new file%.parquet"
    encoded = delta_log.encode_path("p=q%2Fr s/new file%.parquet")
    assert encoded == "p=q%252Fr%20s/new%20file%25.parquet"
    assert delta_log.encode_path("k=São/x#1.parquet") == "k=S%C3%A3o/x%231.parquet"


def test_which_protocols_the_commit_honours() -> None:
    assert delta_log.unsupported(_state()) == []
    assert delta_log.unsupported(_state(min_writer=4)) == []
    assert delta_log.unsupported(_state(min_writer=5)) == ["writer version 5"]
    assert delta_log.unsupported(_state(min_reader=2)) == ["reader version 2"]
    features = _state(min_reader=3, min_writer=7, writer_features=("timestampNtz", "rowTracking"))
    assert delta_log.unsupported(features) == ["writer feature rowTracking"]
    mapped = _state(min_writer=7, writer_features=("columnMapping",))
    assert delta_log.unsupported(mapped) == []
    named = _state(min_writer=7, writer_features=("columnMapping",),
                   configuration={"delta.columnMapping.mode": "name"})  # fmt: skip
    assert delta_log.unsupported(named) == ["writer feature columnMapping"]


def test_a_timestamp_ntz_column_moves_the_protocol_to_table_features() -> None:
    schema = delta_log.merged_schema(_state().schema, [
        {"name": "at", "type": "timestamp_ntz", "nullable": True, "metadata": {}}])  # fmt: skip
    assert delta_log.protocol_for(_state(), schema) == {
        "minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["timestampNtz"],
        "writerFeatures": ["appendOnly", "invariants", "timestampNtz"],
    }  # fmt: skip
    nested = delta_log.merged_schema(_state().schema, [{"name": "s", "nullable": True,
        "metadata": {}, "type": {"type": "array", "elementType": "timestamp_ntz",
                                 "containsNull": True}}])  # fmt: skip
    assert delta_log.protocol_for(_state(), nested) is not None
    named = delta_log.merged_schema(_state().schema, [
        {"name": "timestamp_ntz", "type": "long", "nullable": True, "metadata": {}}])  # fmt: skip
    assert delta_log.protocol_for(_state(), named) is None  # a name is not a type
    has = _state(min_reader=3, min_writer=7, reader_features=("timestampNtz",),
                 writer_features=("timestampNtz",))  # fmt: skip
    assert delta_log.protocol_for(has, schema) is None


def test_merged_schema_keeps_the_table_fields_first() -> None:
    merged = delta_log.merged_schema(_state().schema, [
        {"name": "id", "type": "long", "nullable": True, "metadata": {}},
        {"name": "note", "type": "string", "nullable": True, "metadata": {}}])  # fmt: skip
    assert [f["name"] for f in merged["fields"]] == ["id", "note"]


# -- the commit ---------------------------------------------------------------------------


def test_a_batch_bringing_columns_is_one_commit(sink: str) -> None:
    import duckdb
    import polars as pl

    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    done = delta_table.publish(ledger, _batch(sink, "b2", _rows(3, start=5, note=["x", "y", "z"])))
    assert done == delta_table.DeltaCommit(1, True)
    assert delta_table.open_table(sink).version() == 1  # no version of its own for the column
    actions = _version_actions(sink, 1)
    assert _kinds(actions) == ["commitInfo", "metaData", "txn", "add", "add"]
    assert actions[2]["txn"]["appId"] == delta_table.app_id("b2")
    assert actions[0]["commitInfo"]["celeray.added_columns"] == ["note"]
    schema = json.loads(actions[1]["metaData"]["schemaString"])
    assert [f["name"] for f in schema["fields"]] == ["id", "year", "month", "note"]
    # readers: deltalake, Polars, DuckDB over the dataset, celeray.reading, time travel
    table = pa.table(delta_table.open_table(sink).to_pyarrow_table()).sort_by("id")
    assert table["note"].to_pylist() == [None, None, "x", "y", "z"]
    frame = pl.read_delta(delta_table.delta_uri(sink)).sort("id")
    assert frame["note"].to_list() == [None, None, "x", "y", "z"]
    dataset = delta_table.open_table(sink).to_pyarrow_dataset()  # noqa: F841 (DuckDB scans it)
    assert duckdb.sql("SELECT count(note), sum(id) FROM dataset").fetchall() == [(3, 19)]
    assert celeray.reading.dataset(sink).count_rows() == 5
    assert pl.read_delta(delta_table.delta_uri(sink), version=0).columns == ["id", "year", "month"]
    # a redelivered commit finds the batch's transaction: nothing more
    assert delta_table.publish(ledger, ledger.entries()[1]) == delta_table.DeltaCommit(1, False)
    assert delta_table.open_table(sink).version() == 1


def test_delta_rs_commits_after_ours_and_compacts(sink: str) -> None:
    """The table stays delta-rs's: it appends, adds a column its own way, and compacts on
    top of a version celeray wrote, with a timestamp_ntz column that needed a new protocol."""
    import datetime as dt

    import polars as pl

    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    at = [dt.datetime(2013, 1, 1, 5), dt.datetime(2013, 1, 2, 6)]
    delta_table.publish(ledger, _batch(sink, "b2", _rows(2, start=5, at=at)))
    table = delta_table.open_table(sink)
    assert "timestampNtz" in (table.protocol().writer_features or [])
    assert _kinds(_version_actions(sink, 1))[:3] == ["commitInfo", "protocol", "metaData"]
    delta_table.publish(ledger, _batch(sink, "b3", _rows(2, start=9)))  # delta-rs's append
    table = delta_table.open_table(sink)
    table.alter.add_columns(delta_schema.delta_schema(pa.schema([("z", pa.int32())])).fields)
    table = delta_table.open_table(sink)
    table.optimize.compact()
    table = delta_table.open_table(sink)
    rows = pa.table(table.to_pyarrow_table()).sort_by("id")
    assert rows["id"].to_pylist() == [0, 1, 5, 6, 9, 10]
    assert rows["at"].to_pylist() == [None, None, *at, None, None]
    frame = pl.read_delta(delta_table.delta_uri(sink)).sort("id")
    assert frame["at"].to_list() == [None, None, *at, None, None]


def test_concurrent_batches_adding_different_columns_all_land(sink: str) -> None:
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1, start=100)))
    entries = [
        _batch(sink, f"c{i}", _rows(2, start=10 * i, **({f"col{i}": [i, i]} if i % 3 else {})))
        for i in range(1, 7)
    ]  # batches 3 and 6 bring no column: delta-rs commits them, racing ours
    results = _commit_at_once(sink, entries)
    assert all(isinstance(r, delta_table.DeltaCommit) and r.fresh for r in results), results
    table = delta_table.open_table(sink)
    assert table.version() == 6  # one version per batch, none for columns
    names = pa.schema(table.schema().to_arrow()).names
    assert {"col1", "col2", "col4", "col5"} <= set(names)
    assert sorted({r.version for r in results}) == [1, 2, 3, 4, 5, 6]
    ids = [100, *(v for i in range(1, 7) for v in (10 * i, 10 * i + 1))]
    assert _delta_rows(sink) == sorted(ids)


def test_a_commit_that_loses_its_version_merges_the_winners_columns(
    sink: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race made deterministic: between batch c1 reading the table and creating its
    version, batch c2 commits its own new column there. c1 loses the version, reads the
    table again, and lands next with its column merged into the winner's schema."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1, start=100)))
    c2 = _batch(sink, "c2", _rows(2, start=20, col2=["a", "b"]))  # schema log: + col2
    c1 = _batch(sink, "c1", _rows(2, start=10, col1=[1, 1]))  # + col1 (its schema has both)
    real = delta_log.write_version
    calls: list[int] = []

    def racing(log_url: str, version: int, data: bytes) -> bool:
        calls.append(version)
        if len(calls) == 1:  # c1's first try: c2 gets there first
            schema = SchemaLog(sink).at(int(c2["schema_version"])).table  # type: ignore[union-attr]
            assert delta_table.commit_entry(sink, c2, schema) == delta_table.DeltaCommit(1, True)
        return real(log_url, version, data)

    monkeypatch.setattr(delta_log, "write_version", racing)
    schema = SchemaLog(sink).at(int(c1["schema_version"])).table  # type: ignore[union-attr]
    assert delta_table.commit_entry(sink, c1, schema) == delta_table.DeltaCommit(2, True)
    assert calls == [1, 1, 2]  # c1 tried version 1, c2 took it, c1 made version 2
    fields = json.loads(_version_actions(sink, 2)[1]["metaData"]["schemaString"])["fields"]
    assert [f["name"] for f in fields][-2:] == ["col2", "col1"]
    assert _delta_rows(sink) == [10, 11, 20, 21, 100]


def test_concurrent_publishers_of_one_column_adding_batch_commit_once(sink: str) -> None:
    """A redelivered commit racing recovery, for a batch that brings a column: one version
    is made; the others find the batch's transaction in it."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1, start=100)))
    entry = _batch(sink, "b1", _rows(3, note=["x", "y", "z"]))
    schema = SchemaLog(sink).at(int(entry["schema_version"])).table  # type: ignore[union-attr]
    results: list[Any] = []

    def go() -> None:
        try:
            results.append(delta_table.commit_entry(sink, entry, schema))
        except Exception as exc:  # collected: the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((r.version, r.fresh) for r in results) == [(1, False)] * 3 + [(1, True)], results
    assert delta_table.open_table(sink).version() == 1
    assert _delta_rows(sink) == [0, 1, 2, 100]


@pytest.mark.parametrize("writer", ["celeray", "delta-rs"])
def test_an_append_that_loses_to_a_column_commit_is_tried_again(
    sink: str, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """An append whose snapshot a column-adding commit overtook loses its version (celeray's
    own commit: the version's file exists; delta-rs's, for a protocol celeray does not
    write: "Metadata changed since last commit"): the batch reads the table again and
    lands next."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1, start=100)))
    plain = _batch(sink, "p1", _rows(2, start=10))  # no new column: a plain append
    wide = _batch(sink, "w1", _rows(2, start=20, note=["a", "b"]))
    name = "_write_commit" if writer == "celeray" else "_append"
    real, real_unsupported = getattr(delta_table, name), delta_log.unsupported
    tries: list[int] = []

    def overtaken(sink_: str, table: Any, *args: Any) -> bool:
        tries.append(table.version() if writer == "delta-rs" else table.version)
        if len(tries) == 1:  # the column-adding batch commits after p1 read the table
            schema = SchemaLog(sink).at(int(wide["schema_version"])).table  # type: ignore[union-attr]
            with monkeypatch.context() as m:
                m.setattr(delta_table, name, real)
                m.setattr(delta_log, "unsupported", real_unsupported)
                assert delta_table.commit_entry(sink, wide, schema).version == 1
        return bool(real(sink_, table, *args))

    monkeypatch.setattr(delta_table, name, overtaken)
    if writer == "delta-rs":  # a protocol celeray's commit does not write: delta-rs appends
        monkeypatch.setattr(delta_log, "unsupported",
                            lambda st: real_unsupported(st) or ["a feature (test)"])
    schema = SchemaLog(sink).at(int(plain["schema_version"])).table  # type: ignore[union-attr]
    assert delta_table.commit_entry(sink, plain, schema) == delta_table.DeltaCommit(2, True)
    assert tries == [0, 1]
    assert _delta_rows(sink) == [10, 11, 20, 21, 100]


def test_crash_right_after_a_column_adding_commit(sink: str) -> None:
    """Killed after the commit that adds the column and the rows, before its version is
    written down: recovery finds the transaction; the rows are there once."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    entry = _batch(sink, "b2", _rows(2, start=5, note=["x", "y"]))
    schema = SchemaLog(sink).at(int(entry["schema_version"])).table  # type: ignore[union-attr]
    assert delta_table.commit_entry(sink, entry, schema) == delta_table.DeltaCommit(1, True)
    assert delta_table.republish(ledger) == 1
    assert _delta_rows(sink) == [0, 1, 5, 6] and delta_table.open_table(sink).version() == 1
    assert {e["batch_id"]: e["delta_version"] for e in ledger.entries()} == {"b1": 0, "b2": 1}


def test_a_checkpoint_where_one_is_due(sink: str, tmp_path: Path) -> None:
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b1", _rows(2)))
    # version 1 sets it; the 3rd commit, version 2 (celeray's own, a new column) is due one,
    # as delta-rs writes them after every interval-th commit
    delta_table.open_table(sink).alter.set_table_properties({"delta.checkpointInterval": "3"})
    delta_table.publish(ledger, _batch(sink, "b2", _rows(2, start=5, note=["x", "y"])))
    assert delta_table.open_table(sink).version() == 2
    log = tmp_path / "lake" / "_delta_log"
    assert [p.name for p in log.glob("*.checkpoint.parquet")] == [f"{2:020d}.checkpoint.parquet"]
    assert _delta_rows(sink) == [0, 1, 5, 6]


@pytest.mark.parametrize("cleanup", ["true", "false"])
def test_log_files_past_their_retention_go_at_a_checkpoint(
    sink: str, tmp_path: Path, cleanup: str
) -> None:
    """As after delta-rs's own commits: a due checkpoint, then the log files older than
    ``delta.logRetentionDuration`` deleted, unless ``delta.enableExpiredLogCleanup`` is off."""
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1)))
    delta_table.open_table(sink).alter.set_table_properties({
        "delta.checkpointInterval": "3", "delta.logRetentionDuration": "interval 0 seconds",
        "delta.enableExpiredLogCleanup": cleanup})  # version 1  # fmt: skip
    for i in range(1, 5):  # versions 2..5; 2 and 5 are due checkpoints
        delta_table.publish(ledger, _batch(sink, f"b{i}", _rows(1, start=10 * i)))
    log = tmp_path / "lake" / "_delta_log"
    versions = sorted(int(p.name.split(".")[0]) for p in log.glob("*.json"))
    assert versions == ([5] if cleanup == "true" else [0, 1, 2, 3, 4, 5])
    assert _delta_rows(sink) == [0, 10, 20, 30, 40]


def test_a_protocol_the_commit_cannot_honour_is_refused_before_the_entry(sink: str) -> None:
    delta_table.publish(Ledger(sink), _batch(sink, "b1", _rows(2)))
    delta_table.open_table(sink).alter.set_table_properties(
        {"delta.enableChangeDataFeed": "true"})  # writer 4: still fine
    wider = _rows(1).schema.append(pa.field("note", pa.string()))
    delta_schema.check_schema(sink, wider, delta_table.open_table(sink))
    state = TableState.of(delta_table.open_table(sink))
    tracked = dataclasses.replace(state, min_writer=7, writer_features=("rowTracking",))
    with pytest.raises(TableFormatError, match="writer feature rowTracking"):
        delta_schema.check_protocol(sink, tracked)


def test_column_adding_commits_on_s3(s3: Any) -> None:
    """On moto's S3 the version is created with If-None-Match: two batches adding different
    columns at once both land, each in one version."""
    sink = f"s3://lake/cols-{uuid.uuid4().hex[:8]}/t"
    ledger = Ledger(sink)
    delta_table.publish(ledger, _batch(sink, "b0", _rows(1, start=100)))
    entries = [_batch(sink, f"c{i}", _rows(2, start=10 * i, **{f"col{i}": [i, i]}))
               for i in (1, 2)]  # fmt: skip
    results = _commit_at_once(sink, entries)
    assert sorted(r.version for r in results) == [1, 2], results
    table = delta_table.open_table(sink)
    assert {"col1", "col2"} <= set(pa.schema(table.schema().to_arrow()).names)
    assert _delta_rows(sink) == [10, 11, 20, 21, 100]
    # c2's schema version holds col1 and col2 (the schema log only grows): the first to
    # land adds its columns in a metaData; after c2, c1 has no column left to add.
    first, second = (_version_actions(sink, v) for v in (1, 2))
    assert {"metaData", "txn", "add"} <= set(_kinds(first))
    second_app = next(a["txn"]["appId"] for a in second if "txn" in a)
    brings_col2 = second_app == delta_table.app_id("c2")
    assert {"txn", "add"} <= set(_kinds(second))
    assert ("metaData" in _kinds(second)) == brings_col2
    assert not storage.create_file(storage.join(sink, "_delta_log", f"{1:020d}.json"), b"{}")
