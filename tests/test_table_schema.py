"""The table schema's pure rules: the widenings, evolving, a first batch's settling, the log."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from celeray.batch_schema import settle
from celeray.errors import SchemaConflictError
from celeray.schema_log import SchemaLog
from celeray.table_schema import (
    common_type,
    evolve,
    schema_from_json,
    schema_to_json,
    unify_first,
    widens,
)

I8, I16, I32, I64 = pa.int8(), pa.int16(), pa.int32(), pa.int64()
F64, S = pa.float64(), pa.string()


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (pa.null(), I64), (pa.null(), S), (I8, I16), (I32, I64), (I32, F64), (I64, F64),
        (pa.uint8(), I16), (pa.uint32(), I64), (pa.float32(), F64),
        (pa.date32(), pa.timestamp("us")), (pa.timestamp("s"), pa.timestamp("us")),
        (pa.timestamp("ms", "UTC"), pa.timestamp("us", "UTC")), (S, pa.large_string()),
        (pa.decimal128(10, 2), pa.decimal128(12, 3)), (pa.list_(I32), pa.list_(I64)),
    ],
)
def test_widenings(source: pa.DataType, target: pa.DataType) -> None:
    assert widens(source, target)
    assert source == target or not widens(target, source)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (I64, S), (S, I64), (F64, I64), (I64, I32), (pa.uint64(), I64),
        (pa.timestamp("us"), pa.timestamp("us", "UTC")), (pa.timestamp("us"), pa.date32()),
        (pa.decimal128(10, 2), pa.decimal128(10, 3)), (pa.bool_(), I64),
    ],
)
def test_not_widenings(source: pa.DataType, target: pa.DataType) -> None:
    assert not widens(source, target)


def test_common_type_text_wins_only_when_asked() -> None:
    assert common_type(I64, F64) == F64
    assert common_type(pa.timestamp("s"), pa.timestamp("ms")) == pa.timestamp("ms")
    assert common_type(I64, S) is None
    assert common_type(I64, S, text_wins=True) == S
    assert common_type(pa.timestamp("us"), I64, text_wins=True) is None


def test_evolve_pins_adds_widens_and_refuses() -> None:
    first, changes = evolve(None, pa.schema([("a", I32), ("b", S)]))
    assert [str(c) for c in changes] == ["a int32 (pinned)", "b string (pinned)"]
    second, changes = evolve(first, pa.schema([("b", S), ("a", I64), ("c", F64)]))
    assert second.names == ["a", "b", "c"]  # the table's order, new columns last
    assert [str(c) for c in changes] == ["a: int32 -> int64", "c double (added)"]
    same, changes = evolve(second, pa.schema([("a", I8)]))  # int8 widens to the table's
    assert same.equals(second) and changes == []
    with pytest.raises(SchemaConflictError, match="'b' is int64 in this batch but string") as e:
        evolve(second, pa.schema([("b", I64)]))
    assert e.value.column == "b"


def test_unify_first_is_the_same_in_any_order() -> None:
    a = pa.schema([("id", I64), ("x", I64)])
    b = pa.schema([("id", I32), ("x", S), ("y", F64)])
    assert unify_first([a, b]).equals(pa.schema([("id", I64), ("x", S), ("y", F64)]))
    assert unify_first([b, a]).field("x").type == S and unify_first([b, a]).field("id").type == I64


def test_unify_first_without_a_common_type_names_the_column() -> None:
    with pytest.raises(SchemaConflictError, match="'t' is timestamp"):
        unify_first([pa.schema([("t", pa.timestamp("us"))]), pa.schema([("t", I64)])])


def test_schema_json_round_trip() -> None:
    schema = pa.schema([("t", pa.timestamp("us", "UTC")), ("d", pa.decimal128(10, 2))])
    doc = schema_to_json(schema)
    assert doc["columns"] == [["t", "timestamp[us, tz=UTC]"], ["d", "decimal128(10, 2)"]]
    assert schema_from_json(doc).equals(schema)


def _result(*schemas: pa.Schema) -> dict:
    docs = [schema_to_json(s) for s in schemas]
    return {"input_schemas": docs, "table_schemas": docs}


def test_settle_rereads_a_first_batch_whose_files_disagree() -> None:
    ints, text = pa.schema([("x", I64)]), pa.schema([("x", S)])
    settled = settle({"table_schema": None}, _result(ints, text))
    assert settled.reread_with is not None
    assert schema_from_json(settled.reread_with["input"]).field("x").type == S
    again = settle({"table_schema": settled.reread_with}, _result(text))
    assert again.reread_with is None and again.input.field("x").type == S


def test_settle_takes_widenings_without_a_second_read() -> None:
    settled = settle({"table_schema": None}, _result(pa.schema([("x", I32)]),
                                                     pa.schema([("x", F64)])))  # fmt: skip
    assert settled.reread_with is None and settled.input.field("x").type == F64


def test_log_records_versions_and_history(tmp_path: Path) -> None:
    log = SchemaLog(tmp_path.as_uri())
    assert log.current() is None
    v0, changes = log.record(pa.schema([("a", I32)]), pa.schema([("a", I32)]),
                             batch_id="b0", run_id="r")  # fmt: skip
    assert v0 is not None and v0.version == 0 and changes["input"][0].kind == "pinned"
    again, changes = log.record(pa.schema([("a", I32)]), pa.schema([("a", I32)]),
                                batch_id="b0", run_id="r")  # fmt: skip
    assert again == v0 and changes == {}  # a redelivered commit changes nothing
    v1, _ = log.record(pa.schema([("a", I64)]), pa.schema([("a", I64)]), batch_id="b1",
                       run_id="r")  # fmt: skip
    assert v1 is not None and v1.version == 1
    assert [h.batch_id for h in SchemaLog(tmp_path.as_uri()).history()] == ["b0", "b1"]
    assert (tmp_path / "_celeray" / "schema" / "v00000001.json").exists()


def test_concurrent_batches_adding_different_columns_both_land(tmp_path: Path) -> None:
    """Eight committers at once, each adding its own column: every column ends up in the
    schema, one version each after the pinning, none rewritten."""
    log = SchemaLog(tmp_path.as_uri())
    log.record(pa.schema([("id", I64)]), pa.schema([("id", I64)]), batch_id="b", run_id="r")
    barrier = threading.Barrier(8)

    def add(i: int) -> None:
        schema = pa.schema([("id", I64), (f"c{i}", S)])
        barrier.wait()
        SchemaLog(tmp_path.as_uri()).record(schema, schema, batch_id=f"b{i}", run_id="r")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    current = SchemaLog(tmp_path.as_uri()).current()
    assert current is not None and current.version == 8
    assert sorted(current.table.names) == sorted(["id", *(f"c{i}" for i in range(8))])
