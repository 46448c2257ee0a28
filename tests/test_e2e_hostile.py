"""End to end: a landing folder of good files and one of each hostile kind.

Through the real stack (Redis, Celery io and ray workers, a Ray head): the run ends
SUCCESS, the good rows are committed exactly once, every hostile file has a quarantine
record of the expected kind, and no Celery worker process died on the way. Parquet files
that lack a column or bring one are read into the table schema the first run pins; a
second run shows that schema holding a later file to its types.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard

from celeray import reading
from celeray.schema_log import SchemaLog
from tests._hostile import (
    GiB,
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
from tests._stack import Stack

pytestmark = pytest.mark.stack

PER_FILE = 10_000


def _table(start: int, n: int = PER_FILE) -> pa.Table:
    ids = range(start, start + n)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": [f"n{i}" for i in ids],
            "v": [i * 0.5 for i in ids],
        }
    )


def _csv(t: pa.Table) -> bytes:
    rows = zip(t["id"].to_pylist(), t["name"].to_pylist(), t["v"].to_pylist(), strict=True)
    return ("id,name,v\n" + "".join(f"{i},{n},{v}\n" for i, n, v in rows)).encode()


def _jsonl(t: pa.Table) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in t.to_pylist()).encode()


def _good(landing: Path) -> list[str]:
    """Five good files of every format and codec, ids 0..49,999; return their names."""
    zst = zstandard.ZstdCompressor().compress
    files = {
        "a-good-1.csv": _csv(_table(0)),
        "a-good-2.csv.zst": zst(_csv(_table(10_000))),
        "a-good-3.jsonl.gz": gzip.compress(_jsonl(_table(20_000))),
        "a-good-4.parquet": parquet_bytes(_table(30_000)),
        "a-good-5.parquet": parquet_bytes(  # int32 ids widen to the table's int64
            _table(40_000).set_column(0, "id", _table(40_000)["id"].cast(pa.int32()))
        ),
    }
    for name, data in files.items():
        (landing / name).write_bytes(data)
    return list(files)


def _hostile(landing: Path) -> dict[str, str]:
    """One file of each hostile kind; return name -> the quarantine kind expected."""
    files = {
        "h-bomb.csv.zst": (zstd_bomb(10 * GiB, head=b"id,name,v\n1,x,1.0\n"), "too_large"),
        "h-bomb.jsonl.gz": (gzip_bomb(1 * GiB, head=b'{"id": 1}\n'), "too_large"),
        "h-forged.csv.zst": (forged_zstd(), "too_large"),
        "h-window.csv.zst": (wide_window_zstd(), "too_large"),
        "h-wide.csv": (wide_csv(1_000_000), "too_large"),
        "h-truncated.parquet": (truncated(parquet_bytes(_table(0))), "parse"),
        "h-random.jsonl.zst": (random_bytes(4096), "decompression"),
        "h-random.csv": (random_bytes(4096), "encoding"),
        "h-latin1.csv": ("id,name,v\n1,José,1.0\n".encode("latin-1"), "encoding"),
        "h-utf16.jsonl": ('{"id": 1, "name": "x"}\n'.encode("utf-16"), "encoding"),
    }
    for name, (data, _) in files.items():
        (landing / name).write_bytes(data)
    long_line_zst(landing / "h-long-line.csv.zst", 1 * GiB, head=b"id,name,v\n1,")
    return {"h-long-line.csv.zst": "too_large", **{n: k for n, (_, k) in files.items()}}


def _drifting(landing: Path) -> list[str]:
    """Parquet files whose columns differ from the good ones': one lacks v, one brings w."""
    odd = _table(90_000, 100)
    (landing / "p-missing.parquet").write_bytes(parquet_bytes(odd.drop_columns(["v"])))
    (landing / "p-extra.parquet").write_bytes(parquet_bytes(odd.append_column("w", odd["id"])))
    return ["p-missing.parquet", "p-extra.parquet"]


def _pids(stack: Stack) -> tuple[int, int, frozenset[int]]:
    return stack.io.proc.pid, stack.rayw.proc.pid, frozenset(stack.io.proc.children())


def _ids(sink: Path) -> list[int]:
    table = reading.dataset(sink.as_uri()).to_table(columns=["id"])
    return sorted(table["id"].to_pylist())


def _quarantine(sink: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (sink / "_celeray/quarantine").glob("[!.]*.json")]
    return {Path(r["url"]).name: r for r in records}


def _run(stack: Stack, name: str) -> dict:
    out = stack.celeray("run", name, "--wait", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return dict(result.result)


def test_hostile_landing_commits_the_good_and_quarantines_the_rest(
    stack: Stack, tmp_path: Path
) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    good = _good(landing) + _drifting(landing)
    hostile = _hostile(landing)
    stack.add_pipeline(
        "hostile",
        f'source = "{landing.as_uri()}/*"\nsink = "{sink.as_uri()}"\nbatch_bytes = "16MiB"',
    )
    pids = _pids(stack)
    started = time.monotonic()

    s = _run(stack, "hostile")
    assert (s["files_committed"], s["files_quarantined"]) == (len(good), len(hostile))
    assert s["rows_in"] == 5 * PER_FILE + 200
    odd_ids = list(range(90_000, 90_100)) * 2
    assert _ids(sink) == sorted(list(range(5 * PER_FILE)) + odd_ids)  # every row, once
    records = _quarantine(sink)
    assert {n: r["kind"] for n, r in records.items()} == hostile
    for name, r in records.items():
        assert r["error"] and r["url"].endswith(name), r
    assert "1,000,000 columns" in records["h-wide.csv"]["error"]
    assert records["h-latin1.csv"]["line"] == 2 and "not UTF-8" in records["h-latin1.csv"]["error"]
    assert "UTF-16" in records["h-utf16.jsonl"]["error"]
    assert "declares 100.0 GiB" in records["h-forged.csv.zst"]["error"]
    assert "max_row_bytes" in records["h-long-line.csv.zst"]["error"]
    assert _pids(stack) == pids, "a Celery worker process died"
    pinned = SchemaLog(sink.as_uri()).current()
    assert pinned is not None
    assert [(f.name, str(f.type)) for f in pinned.table] == [
        ("id", "int64"), ("name", "string"), ("v", "double"), ("w", "int64"),
    ]
    table = reading.dataset(sink.as_uri()).to_table()
    assert table.filter(pc.field("id") >= 90_000)["v"].null_count == 100

    # The pinned schema now holds a later file to its types, whatever its name's order.
    bad = _table(50_000).set_column(2, "v", pa.array([f"v{i}" for i in range(PER_FILE)]))
    pq.write_table(bad, landing / "0.parquet")
    pq.write_table(_table(60_000), landing / "a-good-6.parquet")
    s2 = _run(stack, "hostile")
    assert (s2["files_committed"], s2["files_quarantined"]) == (1, 1)
    first = _quarantine(sink)["0.parquet"]
    assert first["kind"] == "schema" and first["row"] == 1
    assert "column 'v': value 'v0' does not convert to double" in first["error"]
    assert _ids(sink) == sorted(list(range(5 * PER_FILE)) + odd_ids + list(range(60_000, 70_000)))
    assert _pids(stack) == pids
    assert time.monotonic() - started < 60
