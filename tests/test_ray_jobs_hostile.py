"""Hostile input at the ray_jobs level: each case a clear InputError, bounded memory and time.

Peak memory is measured in a fresh (spawned) process per case: its ``ru_maxrss`` after
the imports and after the reading, so what an earlier test allocated cannot hide it.
"""

from __future__ import annotations

import codecs
import gzip
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import zstandard

from celeray import settings
from celeray.errors import (
    DecompressionError,
    EncodingError,
    InputError,
    InputTooLargeError,
    ParseError,
)
from celeray.sizes import format_size
from celeray.table_schema import schema_from_json, schema_to_json, unify_first
from ray_jobs._text_guard import TextGuard
from ray_jobs.merge import merge_unit_results
from ray_jobs.process import process_unit
from ray_jobs.readers import read_batches
from tests._hostile import (
    GiB,
    MiB,
    forged_zstd,
    gzip_bomb,
    long_line_zst,
    parquet_bytes,
    random_bytes,
    truncated,
    wide_csv,
    wide_window_zstd,
    zstd_bomb,
)
from tests._plans import plan

# The default caps, but for max_decompressed_bytes: bombs stop sooner.
LIMITS = {
    "max_file_bytes": settings.DEFAULT_MAX_FILE_BYTES,
    "max_decompressed_bytes": 256 * MiB,
    "max_row_bytes": settings.DEFAULT_MAX_ROW_BYTES,
    "zstd_max_window_bytes": settings.DEFAULT_ZSTD_MAX_WINDOW,
    "max_columns": settings.DEFAULT_MAX_COLUMNS,
}
ROW_CAP = format_size(settings.DEFAULT_MAX_ROW_BYTES)
RSS_BOUND = 300 * MiB  # what reading any hostile file may add to a Ray worker's memory
TIME_BOUND = 20.0  # seconds; every case here takes well under 2 s alone


def read_all(url: str, limits: dict[str, int] = LIMITS, fmt: str | None = None) -> int:
    return sum(b.num_rows for b in read_batches(url, fmt=fmt, schema=None, limits=limits))


def _child(url: str, limits: dict[str, int], out: Any) -> None:
    import resource

    import ray_jobs.readers  # noqa: F401 - imported before the baseline is taken

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.monotonic()
    try:
        rows = read_all(url, limits)
        outcome: tuple[Any, ...] = ("ok", rows, None)
    except InputError as exc:
        outcome = (type(exc).__name__, str(exc), exc.record())
    except Exception as exc:  # a crash of the reader: reported, not hidden
        outcome = ("crash", f"{type(exc).__name__}: {exc}", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.put((*outcome, peak - before, time.monotonic() - started))
    out.close()
    out.join_thread()
    # Leave without finalizing the interpreter: pyarrow's C++ read-ahead of a failed reader
    # may still be winding down, and C++ threads alive at finalization abort the process
    # (a Ray worker lives on instead). Exit code 0 thus says the reading itself survived.
    os._exit(0)


def read_in_child(url: str, limits: dict[str, int] = LIMITS) -> tuple[str, str, Any, int, float]:
    """Read ``url`` in a fresh process: (error class, message, record, peak bytes, seconds)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(url, limits, out))
    child.start()
    try:
        result = out.get(timeout=120)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0, f"the reading process died with exit code {child.exitcode}"
    return result  # type: ignore[no-any-return]


def put(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return path.as_uri()


# -- bombs and forged headers: refused before allocation, memory bounded -------------------


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("zstd-bomb.csv.zst", lambda: zstd_bomb(10 * GiB), r"decompresses to more than .*256"),
        ("gzip-bomb.csv.gz", lambda: gzip_bomb(1 * GiB), r"decompresses to more than .*256"),
        (
            "zstd-rows-bomb.csv.zst",  # rows, the costliest to parse: read-ahead fills up
            lambda: zstd_bomb(10 * GiB, head=b"a,b,c\n", filler=b"12345,abcdef,1.5\n"),
            r"decompresses to more than .*256",
        ),
        ("zstd-line-bomb.csv.zst", lambda: zstd_bomb(10 * GiB, filler=b"x"), "max_row_bytes"),
        ("forged.csv.zst", forged_zstd, r"declares 100\.0 GiB of content"),
        ("window.csv.zst", wide_window_zstd, r"needs a 2\.0 GiB window"),
        ("wide.csv", lambda: wide_csv(1_000_000), r"1,000,000 columns, over the cap of 10,000"),
    ],
)
def test_bombs_are_refused_with_bounded_memory(
    tmp_path: Path, name: str, make: Any, expected: str
) -> None:
    data = make()
    assert len(data) < 16 * MiB  # small on disk (the header of a million columns is 9 MiB)
    url = put(tmp_path, name, data)
    kind, message, record, peak, seconds = read_in_child(url)
    assert kind == "InputTooLargeError", message
    assert re.search(expected, message), message
    assert record["url"] == url and record["kind"] == "too_large"
    assert peak < RSS_BOUND, f"reading {name} took {peak / MiB:.0f} MiB"
    assert seconds < TIME_BOUND


def test_one_gigabyte_line_in_a_small_zst_file(tmp_path: Path) -> None:
    path = long_line_zst(tmp_path / "long-line.csv.zst", 1 * GiB)
    assert path.stat().st_size < 1 * MiB
    kind, message, _, peak, _ = read_in_child(path.as_uri())
    assert kind == "InputTooLargeError", message
    assert "max_row_bytes" in message and ROW_CAP in message
    assert peak < RSS_BOUND, f"{peak / MiB:.0f} MiB"


def test_long_first_line_is_refused_before_it_is_handed_to_pyarrow(tmp_path: Path) -> None:
    path = long_line_zst(tmp_path / "long-header.csv.zst", 256 * MiB, head=b"")
    kind, message, record, peak, _ = read_in_child(path.as_uri())
    assert kind == "InputTooLargeError", message
    assert record["line"] == 1 and "first line is longer than" in message
    assert peak < RSS_BOUND


def test_plain_file_with_one_long_line(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    with open(path, "wb") as f:
        f.write(b"a,b\n1,2\n3,")
        f.write(b"y" * (24 * MiB))
        f.write(b"\n5,6\n")
    with pytest.raises(InputTooLargeError, match=r"max_row_bytes \(1\.0 MiB\)") as info:
        read_all(path.as_uri(), {**LIMITS, "max_row_bytes": 1 * MiB})
    assert info.value.url == path.as_uri()


def test_400_000_keys_in_a_json_object(tmp_path: Path) -> None:
    line = "{" + ",".join(f'"{i:x}":1' for i in range(400_000)) + "}\n"  # 3.9 MB
    url = put(tmp_path, "wide.jsonl.zst", zstandard.ZstdCompressor().compress(line.encode()))
    kind, message, _, peak, _ = read_in_child(url)
    assert kind == "InputTooLargeError", message
    assert "400,000 keys, over the cap of 10,000 (max_columns)" in message
    assert peak < RSS_BOUND


def test_colons_inside_json_values_are_not_keys(tmp_path: Path) -> None:
    # 30 colons per line but 2 keys: under a cap of 5 columns.
    line = '{"t": "' + "12:" * 28 + '", "u": "a:b"}\n'
    assert read_all(put(tmp_path, "t.jsonl", line.encode() * 3), {**LIMITS, "max_columns": 5}) == 3


def test_quoted_commas_in_a_csv_header_are_not_columns(tmp_path: Path) -> None:
    header = ",".join(f'"name, part {i}"' for i in range(4))
    data = (header + "\n" + "1,2,3,4\n").encode()
    assert read_all(put(tmp_path, "q.csv", data), {**LIMITS, "max_columns": 4}) == 1
    with pytest.raises(InputTooLargeError, match="4 columns, over the cap of 3"):
        read_all(put(tmp_path, "q3.csv", data), {**LIMITS, "max_columns": 3})


def test_parquet_with_too_many_columns(tmp_path: Path) -> None:
    table = pa.table({f"c{i}": [i] for i in range(50)})
    data = zstandard.ZstdCompressor().compress(parquet_bytes(table))
    url = put(tmp_path, "wide.parquet.zst", data)
    with pytest.raises(InputTooLargeError, match="50 columns, over the cap of 20"):
        read_all(url, {**LIMITS, "max_columns": 20})


# -- truncated and random files of each format and compression -----------------------------

ROWS = 30_000
CSV = b"id,name,v\n" + b"".join(b"%d,n%d,%d.5\n" % (i, i, i) for i in range(ROWS))
JSONL = b"".join(b'{"id": %d, "name": "n%d", "v": %d.5}\n' % (i, i, i) for i in range(ROWS))
PARQUET = parquet_bytes(
    pa.table({"id": list(range(ROWS)), "name": [f"n{i}" for i in range(ROWS)]})
)
CODECS = {
    "": lambda d: d,
    ".gz": gzip.compress,
    ".zst": lambda d: zstandard.ZstdCompressor().compress(d),
}
CONTENT = {"csv": CSV, "jsonl": JSONL, "parquet": PARQUET}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fmt", CONTENT)
def test_truncated_files(tmp_path: Path, fmt: str, codec: str) -> None:
    if fmt == "csv" and not codec:
        # A plain CSV cut inside its last column is indistinguishable from a shorter file;
        # cut inside a row ("20000,n200"), as a copy interrupted mid-file mostly does.
        cut = CSV[: CSV.index(b",n20000,") + 5]
    else:
        cut = truncated(CODECS[codec](CONTENT[fmt]), 0.6)
    url = put(tmp_path, f"cut.{fmt}{codec}", cut)
    with pytest.raises(InputError) as info:
        read_all(url)
    error = info.value
    assert error.url == url and error.message
    if codec:
        assert isinstance(error, DecompressionError) and "truncated" in error.message
    elif fmt == "parquet":
        assert isinstance(error, ParseError) and "Parquet" in error.message
    elif fmt == "csv":  # the cut falls inside a row: that row is named
        assert isinstance(error, ParseError) and error.line == 20_002
    else:
        assert isinstance(error, ParseError) and error.row is not None


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fmt", CONTENT)
@pytest.mark.parametrize("size", [64, 3 * MiB])
def test_random_bytes(tmp_path: Path, fmt: str, codec: str, size: int) -> None:
    url = put(tmp_path, f"random.{fmt}{codec}", random_bytes(size))
    with pytest.raises(InputError) as info:
        read_all(url)
    error = info.value
    assert error.url == url
    if codec:
        assert isinstance(error, DecompressionError) and "name says" in error.message
    elif fmt == "parquet":
        assert isinstance(error, ParseError)
    else:  # random bytes are not UTF-8: said so, with the byte, before any parsing
        assert isinstance(error, EncodingError) and "not UTF-8" in error.message
        assert error.line is not None


def test_random_bytes_in_a_valid_zstd_frame(tmp_path: Path) -> None:
    data = zstandard.ZstdCompressor().compress(CSV[:5000] + random_bytes(2000))
    with pytest.raises(EncodingError, match="not UTF-8") as info:
        read_all(put(tmp_path, "inner.csv.zst", data))
    assert info.value.line is not None and info.value.line > 100


# -- encodings ------------------------------------------------------------------------------

TEXT = "name,city\nJosé,Zürich\nRenée,Köln\n"


def test_latin1_csv_is_refused_naming_byte_and_line(tmp_path: Path) -> None:
    url = put(tmp_path, "latin1.csv", TEXT.encode("latin-1"))
    with pytest.raises(EncodingError) as info:
        read_all(url)
    error = info.value
    assert error.record()["kind"] == "encoding" and error.line == 2
    assert "invalid byte(s) e9 at byte 13" in error.message
    assert "Latin-1" in error.message and "convert it to UTF-8" in error.message


def test_latin1_far_into_a_compressed_csv_names_its_line(tmp_path: Path) -> None:
    data = CSV + "Ålesund,x,1.0\n".encode("latin-1")
    with pytest.raises(EncodingError) as info:
        read_all(put(tmp_path, "late.csv.zst", zstandard.ZstdCompressor().compress(data)))
    assert info.value.line == ROWS + 2
    assert f"at byte {len(CSV)}" in info.value.message


def test_latin1_jsonl_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EncodingError, match="not UTF-8") as info:
        read_all(put(tmp_path, "latin1.jsonl", '{"name": "José"}\n'.encode("latin-1")))
    assert info.value.line == 1


@pytest.mark.parametrize("name", ["utf16.csv", "utf16.jsonl.gz", "utf16be.csv", "utf32.jsonl"])
def test_utf16_and_utf32_with_bom(tmp_path: Path, name: str) -> None:
    codec = {"utf16be": "utf-16-be", "utf32": "utf-32"}.get(name.split(".")[0], "utf-16")
    text = TEXT if ".csv" in name else '{"name": "José"}\n'
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    if name.endswith(".gz"):
        data = gzip.compress(data)
    with pytest.raises(EncodingError, match=r"the file is UTF-(16|32) \(") as info:
        read_all(put(tmp_path, name, data))
    assert info.value.line == 1


def test_utf16_without_bom(tmp_path: Path) -> None:
    with pytest.raises(EncodingError, match="NUL byte at byte 1 of line 1"):
        read_all(put(tmp_path, "nobom.csv", TEXT.encode("utf-16-le")))


def test_utf8_with_and_without_bom_reads(tmp_path: Path) -> None:
    assert read_all(put(tmp_path, "bom.csv", TEXT.encode("utf-8-sig"))) == 2
    assert read_all(put(tmp_path, "plain.csv", TEXT.encode())) == 2


def test_guard_passes_multibyte_text_read_one_byte_at_a_time() -> None:
    import io

    text = ("a,b\n" + "".join(f"ü{i},€𝄞{i}\n" for i in range(200))).encode()
    guard = TextGuard(io.BytesIO(text), url="u", fmt="csv", max_row_bytes=1024, max_columns=5)
    out = b"".join(iter(lambda: guard.read(1), b""))
    assert out == text
    cut = TextGuard(
        io.BytesIO(text + "𝄞".encode()[:2]), url="u", fmt="csv", max_row_bytes=1024, max_columns=5
    )
    with pytest.raises(EncodingError, match="at byte"):  # ends inside a 4-byte character
        while cut.read(7):
            pass


# -- Parquet files whose schema differs from their neighbours' -----------------------------

N = 200
GOOD = pa.table(
    {
        "id": pa.array(range(N), pa.int64()),
        "name": [f"n{i}" for i in range(N)],
        "v": [i * 0.5 for i in range(N)],
    }
)
ODD = {
    "b-int32.parquet": (GOOD.set_column(0, "id", GOOD["id"].cast(pa.int32())), None),
    "c-reordered.parquet": (GOOD.select(["v", "name", "id"]), None),
    "d-missing.parquet": (GOOD.drop_columns(["v"]), None),  # v reads as nulls
    "e-extra.parquet": (GOOD.append_column("w", pa.array(range(N))), None),  # w is added
    "f-string-id.parquet": (
        GOOD.set_column(0, "id", pa.array([f"id-{i}" for i in range(N)])),
        "column 'id': value 'id-0' does not convert to int64 (the table's type; the file's "
        "is string)",
    ),
}


class Unit:
    """Files of one unit in tmp_path/in, output in tmp_path/out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "in").mkdir()

    def file(self, name: str, data: bytes) -> dict[str, Any]:
        path = self.root / "in" / name
        path.write_bytes(data)
        return {"url": path.as_uri(), "read_url": path.as_uri(), "size": len(data)}

    def run(self, files: list[dict[str, Any]], **plan_keys: Any) -> dict[str, Any]:
        unit = {"batch_id": "b", "unit": 0, "files": files, "out_url": (self.root / "out").as_uri()}
        return process_unit(plan(LIMITS, **plan_keys), unit)


def pinned(schema: pa.Schema) -> dict[str, Any]:
    """A plan's table_schema holding ``schema`` as both the input and the table schema."""
    return {"version": 0, "input": schema_to_json(schema), "table": schema_to_json(schema)}


def test_parquet_schema_drift_against_the_pinned_schema(tmp_path: Path) -> None:
    unit = Unit(tmp_path)
    files = [unit.file("a-good.parquet", parquet_bytes(GOOD))]
    files += [unit.file(name, parquet_bytes(t)) for name, (t, _) in ODD.items()]
    result = unit.run(files, table_schema=pinned(GOOD.schema))
    assert [Path(f["url"]).name for f in result["files"]] == [
        "a-good.parquet", "b-int32.parquet", "c-reordered.parquet", "d-missing.parquet",
        "e-extra.parquet",
    ]
    assert result["rows_out"] == 5 * N
    (q,) = result["quarantined"]
    assert Path(q["url"]).name == "f-string-id.parquet" and q["kind"] == "schema"
    assert ODD["f-string-id.parquet"][1] in q["error"] and q["row"] == 1
    # what the batch brings to the table: w, added; every file read into the table's types
    seen = [schema_from_json(s) for s in result["input_schemas"]]
    assert {str(s.field("id").type) for s in seen} == {"int64"}
    assert any("w" in s.names for s in seen)
    import pyarrow.dataset as ds

    out = ds.dataset(tmp_path / "out", schema=unify_first(seen)).to_table()
    assert out["id"].type == pa.int64()
    assert sorted(out["id"].to_pylist()) == sorted(list(range(N)) * 5)
    assert out["v"].null_count == N and out["w"].null_count == 4 * N


@pytest.mark.parametrize(
    ("mode", "kept", "reason"),
    [
        ("fail", ["a-good.parquet"], "column 'w' (int64) is not in the table schema"),
        ("none", ["a-good.parquet", "e-extra.parquet"], None),
        ("rescue", ["a-good.parquet", "e-extra.parquet"], None),
    ],
)
def test_parquet_extra_column_by_mode(
    tmp_path: Path, mode: str, kept: list[str], reason: str | None
) -> None:
    unit = Unit(tmp_path)
    files = [
        unit.file("a-good.parquet", parquet_bytes(GOOD)),
        unit.file("e-extra.parquet", parquet_bytes(ODD["e-extra.parquet"][0])),
    ]
    result = unit.run(files, table_schema=pinned(GOOD.schema), schema_evolution=mode)
    assert [Path(f["url"]).name for f in result["files"]] == kept
    if reason:
        (q,) = result["quarantined"]
        assert reason in q["error"] and 'schema_evolution = "fail"' in q["error"]
    counts = result["schema_counts"]
    assert counts["dropped"] == ({"w": N} if mode == "none" else {})
    assert counts["values_rescued"] == (N if mode == "rescue" else 0)


def test_declared_types_win_over_the_files(tmp_path: Path) -> None:
    unit = Unit(tmp_path)
    small = pa.int16()
    files = [
        unit.file("a.jsonl", b'{"id": 1, "name": "x"}\n'),
        unit.file("b.jsonl", b'{"id": 2}\n'),
    ]
    result = unit.run(files, schema={"id": "int32", "name": "string"})
    assert len(result["files"]) == 2 and not result["quarantined"]
    (seen,) = [schema_from_json(s) for s in result["input_schemas"]]
    assert seen.field("id").type == pa.int32() and seen.field("name").type == pa.string()
    assert small != seen.field("id").type


# -- one unit holding a good file and one of each hostile kind ----------------------------


def test_a_unit_of_hostile_files_commits_the_good_one(tmp_path: Path) -> None:
    unit = Unit(tmp_path)
    hostile = {
        "bomb.csv.zst": (zstd_bomb(2 * GiB), "too_large"),
        "bomb.jsonl.gz": (gzip_bomb(1 * GiB, head=b'{"a": 1}\n'), "too_large"),
        "forged.csv.zst": (forged_zstd(), "too_large"),
        "window.jsonl.zst": (wide_window_zstd(), "too_large"),
        "wide.csv": (wide_csv(200_000), "too_large"),
        "cut.parquet": (truncated(PARQUET), "parse"),
        "random.csv.gz": (random_bytes(5000), "decompression"),
        "latin1.csv": (TEXT.encode("latin-1"), "encoding"),
        "utf16.jsonl": ('{"a": 1}\n'.encode("utf-16"), "encoding"),
    }
    files = [unit.file("good.csv.zst", zstandard.ZstdCompressor().compress(CSV))]
    files += [unit.file(name, data) for name, (data, _) in hostile.items()]
    started = time.monotonic()
    result = unit.run(files)
    assert time.monotonic() - started < 30
    assert [Path(f["url"]).name for f in result["files"]] == ["good.csv.zst"]
    assert result["rows_out"] == ROWS
    kinds = {Path(q["url"]).name: q["kind"] for q in result["quarantined"]}
    assert kinds == {name: kind for name, (_, kind) in hostile.items()}
    assert all(q["error"] for q in result["quarantined"])


def _split_run(unit: Unit, name: str, data: bytes, pieces: int) -> dict[str, Any]:
    """Process ``data`` as a file split into ``pieces`` byte ranges, merged as Celery does."""
    file = unit.file(name, data)
    size = len(data)
    cuts = [size * i // pieces for i in range(pieces + 1)]
    results = [
        process_unit(
            plan(LIMITS),
            {
                "batch_id": "b",
                "unit": i,
                "files": [{**file, "range": [cuts[i], cuts[i + 1]]}],
                "out_url": (unit.root / "out").as_uri(),
            },
        )
        for i in range(pieces)
    ]
    return merge_unit_results(results, [])


def test_split_files_are_refused_like_whole_ones(tmp_path: Path) -> None:
    unit = Unit(tmp_path)
    wide = wide_csv(200_000) + b"2\n" * 100_000  # header 1.5 MiB: no range may parse it
    result = _split_run(unit, "wide.csv", wide, 4)
    (q,) = result["quarantined"]
    assert q["kind"] == "too_large" and "200,000 columns" in q["error"] and q["line"] == 1
    assert not result["files"] and not result["outputs"]

    late = CSV + "Ålesund,x,1.0\n".encode("latin-1") + CSV.split(b"\n", 1)[1]
    result = _split_run(unit, "late.csv", late, 3)
    (q,) = result["quarantined"]
    assert q["kind"] == "encoding" and q["line"] == ROWS + 2 and "c5 at byte" in q["error"]


def _stream_child(url: str, row_bytes: int, out: Any) -> None:
    import ray_jobs.process as process

    process.SMALL_FILE_BYTES = 1 * MiB  # stream the file through the writer
    unit = {
        "batch_id": "b",
        "unit": 0,
        "files": [{"url": url, "read_url": url, "size": os.path.getsize(url[len("file://") :])}],
        "out_url": url.rsplit("/", 1)[0] + "/out",
    }
    result = process.process_unit(plan({**LIMITS, "max_row_bytes": row_bytes}, threads=1), unit)
    out.put((result["rows_in"], result["quarantined"]))
    out.close()
    out.join_thread()
    os._exit(0)


def test_long_compressed_csv_streams_without_deadlock(tmp_path: Path) -> None:
    # Past pyarrow's read-ahead (32 blocks of max_row_bytes) with one CPU thread: this hung
    # forever when the task also had one I/O thread.
    rows = 1_500_000
    data = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i % 7) for i in range(rows))  # ~13 MiB
    url = put(tmp_path, "long.csv.zst", zstandard.ZstdCompressor(level=1).compress(data))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_stream_child, args=(url, 64 * 1024, out))
    child.start()
    try:
        assert out.get(timeout=90) == (rows, [])
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()


def test_keys_appearing_late_are_counted_before_the_whole_file_is_read(tmp_path: Path) -> None:
    # The first block (64 KiB) shows one key; later lines bring 20,000 more. The streaming
    # reader stops at the first new key and the file is read again whole, which would
    # build a column for every key of the file: they are counted first.
    head = b'{"a": 1}\n' * 10_000
    tail = "".join(f'{{"k{i}": 1, "a": 2}}\n' for i in range(20_000)).encode()
    url = put(tmp_path, "late-keys.jsonl", head + tail)
    with pytest.raises(InputTooLargeError, match="20,001 distinct keys, over the cap of 10,000"):
        read_all(url, {**LIMITS, "max_row_bytes": 64 * 1024})
