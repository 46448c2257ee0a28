"""ray_jobs.transforms: SQL over the stream as ``input``, Python callables, error kinds."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from celeray.errors import ParseError, TransformError
from ray_jobs.transforms import JOIN_BELOW_ROWS, apply, load_callable


def batches(n: int = 5, rows: int = 1000) -> Iterator[pa.RecordBatch]:
    for i in range(n):
        start = i * rows
        yield pa.record_batch(
            {
                "k": [j % 3 for j in range(start, start + rows)],
                "v": list(range(start, start + rows)),
            }
        )


def failing(after: int, error: Exception) -> Iterator[pa.RecordBatch]:
    yield from batches(after)
    raise error


def run(source: Iterator[pa.RecordBatch], **kwargs) -> pa.Table:
    kwargs.setdefault("sql", None)
    kwargs.setdefault("transform", None)
    kwargs.setdefault("threads", 2)
    out = list(apply(source, **kwargs))
    return pa.Table.from_batches(out) if out else pa.table({})


def test_nothing_to_do_passes_batches_through() -> None:
    assert run(batches()).num_rows == 5000


def test_sql_reads_input() -> None:
    table = run(batches(), sql="SELECT v, v * 2 AS w FROM input WHERE k = 0")
    assert table.column_names == ["v", "w"]
    assert table.num_rows == len([v for v in range(5000) if v % 3 == 0])
    assert table.column("w").to_pylist()[:2] == [0, 6]


def test_sql_streams_large_inputs() -> None:
    pulled = []

    def source() -> Iterator[pa.RecordBatch]:
        for b in batches(50, 10_000):
            pulled.append(b.num_rows)
            yield b

    out = apply(source(), sql="SELECT v FROM input", transform=None, threads=1)
    first = next(out)
    assert first.num_rows > 0
    assert len(pulled) < 50  # results came before the whole input was read
    assert sum(b.num_rows for b in out) + first.num_rows == 500_000


def test_sql_aggregation_covers_the_stream() -> None:
    table = run(batches(), sql="SELECT k, count(*) AS n FROM input GROUP BY k ORDER BY k")
    assert table.to_pydict() == {"k": [0, 1, 2], "n": [1667, 1667, 1666]}


def test_bad_sql_is_a_transform_error() -> None:
    with pytest.raises(TransformError, match="sql failed"):
        run(batches(), sql="SELEC v FROM input")
    with pytest.raises(TransformError, match="sql failed"):
        run(batches(), sql="SELECT no_such_column FROM input")


def test_sql_runtime_failure_is_a_transform_error() -> None:
    with pytest.raises(TransformError, match="sql failed"):
        run(batches(), sql="SELECT CAST('x' || v AS INTEGER) FROM input")


def test_input_error_midstream_under_sql_comes_out_as_itself() -> None:
    error = ParseError("bad JSON at the end", url="file:///x.jsonl", row=4001)
    with pytest.raises(ParseError) as info:
        run(failing(4, error), sql="SELECT k, sum(v) FROM input GROUP BY k")
    assert info.value is error


def test_input_error_midstream_under_streaming_sql_comes_out_as_itself() -> None:
    error = ParseError("bad row", url="file:///x.csv", line=3)
    with pytest.raises(ParseError) as info:
        run(failing(3, error), sql="SELECT v + 1 AS w FROM input")
    assert info.value is error


def test_input_error_in_the_first_batch_under_sql() -> None:
    error = ParseError("bad from the start", url="file:///x.csv")
    with pytest.raises(ParseError) as info:
        run(failing(0, error), sql="SELECT * FROM input")
    assert info.value is error


def test_empty_stream_yields_nothing() -> None:
    assert run(iter([]), sql="SELECT count(*) FROM input").num_rows == 0


def test_transform_callable_per_chunk() -> None:
    rows = JOIN_BELOW_ROWS
    table = run(batches(3, rows), transform="tests._sample_transforms:tag_chunk")
    assert table.column("chunk_rows").to_pylist() == [rows] * 3 * rows  # one batch per call


def test_transform_sees_small_batches_joined() -> None:
    """Small files' batches (or SQL's few rows of each) reach the callable joined, in order."""
    table = run(batches(30, 100), sql="SELECT * FROM input WHERE k = 1",
                transform="tests._sample_transforms:tag_chunk")
    assert set(table.column("chunk_rows").to_pylist()) == {1000}  # 30 x 33 or 34 rows, once
    assert table.column("v").to_pylist() == [v for v in range(3000) if v % 3 == 1]


def test_sql_then_transform() -> None:
    table = run(
        batches(),
        sql="SELECT v FROM input WHERE k = 1",
        transform="tests._sample_transforms:double_v",
    )
    assert table.column_names == ["v", "v2"]
    assert table.column("v2").to_pylist()[:2] == [2, 8]


def test_input_error_midstream_under_transform_comes_out_as_itself() -> None:
    error = ParseError("bad", url="file:///x.csv")
    with pytest.raises(ParseError) as info:
        run(failing(2, error), transform="tests._sample_transforms:double_v")
    assert info.value is error


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must look like"),
        ("_no_such_module_here:fn", "module '_no_such_module_here' is not found"),
        ("tests._sample_transforms:missing", "has no attribute"),
        ("tests._sample_transforms:NOT_CALLABLE", "not a callable"),
    ],
)
def test_load_callable_errors(spec: str, message: str) -> None:
    with pytest.raises(TransformError, match=message):
        load_callable(spec)
    with pytest.raises(TransformError, match=message):  # apply checks before reading
        apply(batches(), sql=None, transform=spec, threads=1)


def test_load_callable_dotted_attribute() -> None:
    assert load_callable("pyarrow:Table.from_batches") is pa.Table.from_batches


def test_callable_failure_is_a_transform_error() -> None:
    with pytest.raises(TransformError, match="ValueError: boom from the transform"):
        run(batches(), transform="tests._sample_transforms:boom")
    with pytest.raises(TransformError, match=r"returned dict, not a pyarrow\.Table"):
        run(batches(), transform="tests._sample_transforms:not_a_table")
