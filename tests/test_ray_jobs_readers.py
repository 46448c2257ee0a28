"""ray_jobs.readers: formats, declared types, and what each bad input reports."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import ray_jobs._read_jsonl as read_jsonl
from celeray.errors import (
    DecompressionError,
    EmptyInputError,
    InputTooLargeError,
    ParseError,
    SchemaError,
)
from ray_jobs._read_jsonl import _check_line_lengths
from ray_jobs.readers import detect_format, read_batches
from tests._plans import limits

LIMITS = limits()
N = 30_000
ROWS = [{"id": i, "name": f"n{i}", "v": i * 0.5} for i in range(N)]
CODECS = {
    "": lambda d: d,
    ".zst": lambda d: zstandard.ZstdCompressor().compress(d),
    ".gz": gzip.compress,
}


def csv_bytes(rows: list[dict] = ROWS) -> bytes:
    lines = ["id,name,v"] + [f"{r['id']},{r['name']},{r['v']}" for r in rows]
    return ("\n".join(lines) + "\n").encode()


def jsonl_bytes(rows: list[dict] = ROWS) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet_bytes(table: pa.Table | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table if table is not None else pa.Table.from_pylist(ROWS), buf)
    return buf.getvalue()


def put(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri()


def read(url: str, schema: dict[str, str] | None = None, fmt: str | None = None, **limits: int):
    batches = list(read_batches(url, fmt=fmt, schema=schema, limits={**LIMITS, **limits}))
    assert all(b.num_rows for b in batches)
    return pa.Table.from_batches(batches)


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize(
    ("ext", "encode"), [(".csv", csv_bytes), (".jsonl", jsonl_bytes), (".parquet", parquet_bytes)]
)
def test_formats_and_codecs(tmp_path: Path, ext: str, encode, codec: str) -> None:
    url = put(tmp_path, f"data{ext}{codec}", CODECS[codec](encode()))
    table = read(url, schema={"id": "int32", "v": "float32"})
    assert table.num_rows == N
    assert table.schema.field("id").type == pa.int32()
    assert table.schema.field("v").type == pa.float32()
    assert table.column("name").to_pylist()[:2] == ["n0", "n1"]
    assert table.column("id").to_pylist() == list(range(N))


def test_csv_reads_in_several_batches(tmp_path: Path) -> None:
    url = put(tmp_path, "d.csv", csv_bytes())
    batches = list(read_batches(url, fmt=None, schema=None, limits=LIMITS))
    assert len(batches) > 1  # 64 KiB blocks: it streams


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("s3://b/x/y.csv", "csv"),
        ("file:///x/y.CSV.ZST", "csv"),
        ("y.json.gz", "jsonl"),
        ("y.ndjson", "jsonl"),
        ("y.jsonl.zstd", "jsonl"),
        ("y.parquet", "parquet"),
        ("y.parquet.zst", "parquet"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


def test_detect_format_unknown() -> None:
    with pytest.raises(ParseError, match="set format in the pipeline") as info:
        detect_format("file:///x/data.txt.gz")
    assert info.value.url == "file:///x/data.txt.gz"


def test_explicit_format_beats_the_name(tmp_path: Path) -> None:
    url = put(tmp_path, "export.txt", csv_bytes())
    assert read(url, fmt="csv").num_rows == N


def test_unknown_declared_type_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"schema\.id: unknown column type 'integer'"):
        read_batches(
            put(tmp_path, "d.csv", csv_bytes()), fmt=None, schema={"id": "integer"}, limits=LIMITS
        )


def test_csv_declared_timestamp_date_decimal(tmp_path: Path) -> None:
    data = (
        b"t,d,m,b\n"
        b"2024-01-02 03:04:05,2024-01-02,12.34,true\n"
        b"2024-02-03 00:00:00,2024-02-03,1.5,false\n"
    )
    table = read(
        put(tmp_path, "t.csv", data),
        schema={"t": "timestamp[s]", "d": "date32", "m": "decimal128(10,2)", "b": "bool"},
    )
    assert table.schema.types == [pa.timestamp("s"), pa.date32(), pa.decimal128(10, 2), pa.bool_()]


def test_malformed_csv_row_reports_its_line(tmp_path: Path) -> None:
    rows = csv_bytes().split(b"\n")
    rows[20_001] = b"20000,n20000,1.0,one-too-many"  # line 20002 of the file
    url = put(tmp_path, "bad.csv.zst", zstandard.ZstdCompressor().compress(b"\n".join(rows)))
    with pytest.raises(ParseError, match="expected 3 columns, got 4") as info:
        read(url)
    assert (info.value.line, info.value.row, info.value.url) == (20_002, 20_001, url)
    assert info.value.record() == {
        "url": url,
        "kind": "parse",
        "error": info.value.message,
        "line": 20_002,
        "row": 20_001,
    }


def test_csv_value_that_does_not_cast(tmp_path: Path) -> None:
    data = csv_bytes().replace(b"\n25000,", b"\ntwenty-five-thousand,")
    url = put(tmp_path, "bad.csv", data)
    with pytest.raises(SchemaError) as info:
        read(url, schema={"id": "int32"})
    # pyarrow (use_threads=False) reports the column index and the row; the name is ours.
    assert "column 'id'" in info.value.message
    assert "'twenty-five-thousand'" in info.value.message and "int32" in info.value.message
    assert (info.value.row, info.value.line) == (25_001, 25_002)


def test_csv_bad_value_in_first_block_still_names_the_column(tmp_path: Path) -> None:
    data = b"a,b\n1,2\nx,3\n"
    with pytest.raises(SchemaError, match="column 'a': value 'x' does not convert to int32"):
        read(put(tmp_path, "bad.csv", data), schema={"a": "int32"})


def test_csv_declared_column_missing_is_no_error(tmp_path: Path) -> None:
    """A declared type is a hint: a file without the column reads (the table gives it as
    nulls, see test_schema_conform)."""
    table = read(put(tmp_path, "d.csv", csv_bytes()), schema={"zz": "int32"})
    assert "zz" not in table.column_names and table.num_rows > 0


@pytest.mark.parametrize("codec", ["", ".zst", ".gz"])
def test_header_only_csv_is_empty(tmp_path: Path, codec: str) -> None:
    url = put(tmp_path, f"h.csv{codec}", CODECS[codec](b"id,name,v\n"))
    with pytest.raises(EmptyInputError, match="header but no data rows") as info:
        read(url)
    assert info.value.url == url


@pytest.mark.parametrize("name", ["e.csv", "e.jsonl", "e.parquet", "e.csv.gz"])
def test_zero_byte_file_is_empty(tmp_path: Path, name: str) -> None:
    with pytest.raises(EmptyInputError):
        read(put(tmp_path, name, b""))


def test_blank_csv_and_jsonl_are_empty(tmp_path: Path) -> None:
    with pytest.raises(EmptyInputError):
        read(put(tmp_path, "blank.csv", b"\n\n"))
    with pytest.raises(EmptyInputError):
        read(put(tmp_path, "blank.jsonl", b"\n\n"))


def test_parquet_without_rows_is_empty(tmp_path: Path) -> None:
    empty = pa.Table.from_pylist(ROWS).slice(0, 0)
    with pytest.raises(EmptyInputError):
        read(put(tmp_path, "e.parquet", parquet_bytes(empty)))


def test_csv_row_longer_than_max_row_bytes(tmp_path: Path) -> None:
    data = csv_bytes().replace(b"\n500,n500,", b"\n500," + b"x" * 300_000 + b",")
    with pytest.raises(InputTooLargeError, match="max_row_bytes") as info:
        read(put(tmp_path, "long.csv", data))
    assert "64.0 KiB" in info.value.message


def test_csv_row_within_max_row_bytes_is_fine(tmp_path: Path) -> None:
    data = csv_bytes().replace(b"\n500,n500,", b"\n500," + b"x" * 60_000 + b",")
    assert read(put(tmp_path, "long.csv", data)).num_rows == N


def test_bad_json_reports_the_row(tmp_path: Path) -> None:
    lines = jsonl_bytes().split(b"\n")
    lines[22_222] = b'{"id": 22222, "name": "n22222", "v": }'
    url = put(tmp_path, "bad.jsonl.gz", gzip.compress(b"\n".join(lines)))
    with pytest.raises(ParseError, match="bad JSON") as info:
        read(url)
    # pyarrow counts rows within its block; the reader adds the rows of earlier blocks.
    assert info.value.row == 22_223
    assert info.value.url == url


def test_json_value_that_does_not_cast(tmp_path: Path) -> None:
    rows = [{"id": str(i), "name": "x"} for i in range(N)]
    rows[12_345]["id"] = "12x345"
    with pytest.raises(SchemaError) as info:
        read(put(tmp_path, "bad.jsonl", jsonl_bytes(rows)), schema={"id": "int32"})
    assert "column 'id'" in info.value.message and "'12x345'" in info.value.message
    assert info.value.row == 12_346


def test_json_type_change_reports_column_and_row(tmp_path: Path) -> None:
    rows = [{"id": i} for i in range(100)]
    rows[40]["id"] = "forty"  # type: ignore[assignment]
    with pytest.raises(SchemaError, match="column 'id' changes from number to string") as info:
        read(put(tmp_path, "bad.jsonl", jsonl_bytes(rows)))
    assert info.value.row == 41


def test_json_declared_key_absent_becomes_nulls(tmp_path: Path) -> None:
    table = read(put(tmp_path, "d.jsonl", jsonl_bytes()), schema={"extra": "int64"})
    assert table.schema.field("extra").type == pa.int64()
    assert table.column("extra").null_count == N


def test_json_key_appearing_late_in_a_small_file(tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    rows[-1]["late"] = 7  # far past the first 64 KiB block
    rows[-2]["v"] = None
    table = read(put(tmp_path, "late.jsonl", jsonl_bytes(rows)))
    assert table.num_rows == N
    assert table.column("late").to_pylist()[-1] == 7


def test_json_key_appearing_late_in_a_large_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(read_jsonl, "HOLD_BYTES", 100_000)
    monkeypatch.setattr(read_jsonl, "WHOLE_FILE_BYTES", 200_000)
    rows = [dict(r) for r in ROWS]
    rows[-1]["late"] = 7
    with pytest.raises(SchemaError, match="first appears after object"):
        read(put(tmp_path, "late.jsonl", jsonl_bytes(rows)))


def test_json_line_longer_than_max_row_bytes(tmp_path: Path) -> None:
    rows = [dict(r) for r in ROWS]
    rows[20_000]["name"] = "y" * 300_000
    with pytest.raises(InputTooLargeError, match="max_row_bytes"):
        read(put(tmp_path, "long.jsonl", jsonl_bytes(rows)))


def test_whole_file_path_applies_the_row_cap() -> None:
    # The whole-file JSON path (after a late key) checks line lengths itself.
    data = b'{"a": 1}\n' * 1000 + b'{"a": "' + b"x" * 1000 + b'"}\n' + b'{"a": 2}\n'
    _check_line_lengths(data, url="u", max_row_bytes=1009)
    with pytest.raises(InputTooLargeError) as info:
        _check_line_lengths(data, url="u", max_row_bytes=1008)
    assert info.value.line == 1001


def test_corrupt_parquet(tmp_path: Path) -> None:
    data = parquet_bytes()
    with pytest.raises(ParseError, match="not a readable Parquet file"):
        read(put(tmp_path, "cut.parquet", data[: len(data) // 2]))
    with pytest.raises(ParseError):
        read(put(tmp_path, "text.parquet.zst", zstandard.ZstdCompressor().compress(csv_bytes())))


def test_parquet_cast_failure_names_column_and_row(tmp_path: Path) -> None:
    table = pa.table({"id": [str(i) for i in range(1000)]})
    table = table.set_column(
        0, "id", pa.array([*map(str, range(700)), "oops", *map(str, range(701, 1000))])
    )
    with pytest.raises(SchemaError, match="column 'id': value 'oops'") as info:
        read(put(tmp_path, "p.parquet", parquet_bytes(table)), schema={"id": "int64"})
    assert info.value.row == 701


@pytest.mark.parametrize(
    ("ext", "encode"), [(".csv", csv_bytes), (".jsonl", jsonl_bytes), (".parquet", parquet_bytes)]
)
def test_decompression_errors_reach_the_reader(tmp_path: Path, ext: str, encode) -> None:
    data = zstandard.ZstdCompressor().compress(encode())
    url = put(tmp_path, f"cut{ext}.zst", data[: len(data) - 20])
    with pytest.raises(DecompressionError, match="truncated") as info:
        read(url)
    assert info.value.url == url


def _pyarrow_streamed(data: bytes) -> pa.Table:
    """What pyarrow's own streaming reader makes of ``data`` in the tests' blocks."""
    import pyarrow.csv as pacsv

    options = pacsv.ReadOptions(block_size=LIMITS["max_row_bytes"], use_threads=False)
    return pacsv.open_csv(io.BytesIO(data), read_options=options).read_all()


@pytest.mark.parametrize("codec", list(CODECS))
def test_csv_reads_as_pyarrow_streams_it(tmp_path: Path, codec: str) -> None:
    """The rest of a file is read with the types of its first block (pyarrow converts
    later blocks twice while it infers); the table is the one pyarrow's reader makes."""
    lines = [b"id,name,v,when,note"]
    for i in range(N):
        note = b'"a, quoted\r\nvalue"' if i % 997 == 0 else (b"" if i % 7 else b"n%d" % i)
        v = b"" if i % 11 == 0 else b"%d.5" % i
        lines.append(b"%d,n%d,%s,2024-01-%02dT00:00:00Z,%s" % (i, i, v, i % 28 + 1, note))
        if i % 1000 == 0:
            lines.append(b"")  # blank lines are skipped, and not counted
    data = b"\r\n".join(lines) + b"\r\n"
    table = read(put(tmp_path, f"d.csv{codec}", CODECS[codec](data)))
    assert table.equals(_pyarrow_streamed(data).combine_chunks().cast(table.schema))
    assert table.schema == _pyarrow_streamed(data).schema


def test_csv_later_blocks_keep_the_first_blocks_types(tmp_path: Path) -> None:
    """``v`` holds integers in the first block, so a fraction in a later block fails,
    as it does in pyarrow's reader, with the row and line of the whole file."""
    rows = [{"id": i, "name": f"n{i}", "v": i} for i in range(N)]
    rows[20_000]["v"] = 0.25  # type: ignore[assignment]
    data = csv_bytes(rows)
    with pytest.raises(pa.ArrowInvalid, match="Row #20002"):
        _pyarrow_streamed(data)
    with pytest.raises(SchemaError, match=r"column 'v': value '0\.25' does not convert") as info:
        read(put(tmp_path, "late.csv", data))
    assert (info.value.row, info.value.line) == (20_001, 20_002)


def test_csv_malformed_row_in_a_later_block_is_numbered_in_the_whole_file(
    tmp_path: Path,
) -> None:
    data = csv_bytes().replace(b"\n22222,n22222,", b"\n22222,")
    with pytest.raises(ParseError, match="expected 3 columns, got 2") as info:
        read(put(tmp_path, "bad.csv", data))
    assert (info.value.row, info.value.line) == (22_223, 22_224)


def test_csv_whose_first_block_holds_only_the_header(tmp_path: Path) -> None:
    """A first row that does not fit beside the header in a block: the types come from
    the next block instead of from no rows at all."""
    long = {"id": 0, "name": "x" * 65_000, "v": 0.5}
    table = read(put(tmp_path, "wide.csv", csv_bytes([long, *ROWS[1:]])))
    assert table.num_rows == N and table.schema.field("id").type == pa.int64()
    assert table.column("name")[0].as_py() == "x" * 65_000


def test_csv_of_exactly_one_block(tmp_path: Path) -> None:
    """A file that ends where the first block does leaves nothing for the second reader."""
    data = b"id,name\n" + b"".join(b"%d,n%d\n" % (i, i) for i in range(10))
    data += b"10," + b"x" * (LIMITS["max_row_bytes"] - len(data) - 4) + b"\n"
    assert len(data) == LIMITS["max_row_bytes"]
    table = read(put(tmp_path, "one.csv", data))
    assert table.column("id").to_pylist() == list(range(11))
