"""End to end into Delta tables: landing files -> one Delta commit per batch, local and on S3.

The real stack (Redis, Celery workers, Ray) runs the mixed-format flights set into a Delta
table; the table is read back with deltalake, Polars and DuckDB (over deltalake's pyarrow
dataset: DuckDB's own delta extension is downloaded at run time, which this test machine
cannot) and must equal DuckDB's reading of the raw files with the same SQL. A reader
snapshots the table every ~50 ms during a run of many batches: each snapshot must hold
exactly the batches its version published, never part of one.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from celeray import delta_table
from celeray.ledger import Ledger
from tests._data import SQL, assert_rows_match, write_landing
from tests._stack import Stack

pytestmark = pytest.mark.stack


def _pipeline(stack: Stack, name: str, source: str, sink: str, batch_bytes: str = "2MiB",
              *extra: str) -> None:  # fmt: skip
    stack.add_pipeline(name, "\n".join([
        f'source = "{source}"',
        f'sink = "{sink}"',
        f'sql = "{SQL}"',
        'partition_by = ["year", "month"]',
        f'batch_bytes = "{batch_bytes}"',
        *extra,
        f"[pipelines.{name}.schema]",
        'time_hour = "timestamp[s, tz=UTC]"',
    ]))  # fmt: skip


def _run(stack: Stack, name: str) -> dict[str, Any]:
    out = stack.celeray("run", name, "--wait", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return dict(result.result)


def _assert_table_matches(sink: str, landing: list[Path]) -> int:
    """The Delta table, read by deltalake, Polars and DuckDB, holds exactly the rows DuckDB
    computes from the raw files."""
    import duckdb
    import polars as pl

    table = delta_table.open_table(sink)
    rows = assert_rows_match(pa.table(table.to_pyarrow_table()), landing)
    options = delta_table.storage_options(sink) or None
    polars = pl.read_delta(delta_table.delta_uri(sink), storage_options=options).to_arrow()
    assert assert_rows_match(polars, landing) == rows
    dataset = table.to_pyarrow_dataset()  # noqa: F841 - DuckDB finds it by name
    via_duckdb = duckdb.sql("SELECT * FROM dataset").arrow()
    assert assert_rows_match(pa.table(via_duckdb), landing) == rows
    return rows


def _exactly_once_then_new_files(stack: Stack, name: str, flights_df: Any, landing: Path,
                                 sink: str, put: Any, source: str) -> None:  # fmt: skip
    files = write_landing(flights_df.iloc[:120_000], landing, 12)
    put(files)
    _pipeline(stack, name, source, sink)

    first = _run(stack, name)
    assert (first["files_committed"], first["files_quarantined"]) == (12, 0)
    assert first["batches_total"] > 1
    rows = _assert_table_matches(sink, files)
    assert first["rows_out"] == rows
    # one Delta commit per batch, each version in the summary and beside its ledger entry
    versions = first["delta_versions"]  # new columns come in their batch's own version
    assert sorted(versions.values()) == list(range(first["batches_total"]))
    assert first["delta_version"] == max(versions.values())
    entries = Ledger(sink).entries()
    assert {e["batch_id"]: e["delta_version"] for e in entries} == versions
    assert delta_table.open_table(sink).version() == first["delta_version"]

    second = _run(stack, name)  # commits nothing
    assert (second["files_committed"], second["files_skipped"]) == (0, 12)
    assert "delta_versions" not in second
    assert delta_table.open_table(sink).version() == first["delta_version"]

    added = write_landing(flights_df.iloc[120_000:150_000], landing, 3, start=12)
    put(added)
    third = _run(stack, name)  # the three new files commit alone
    assert (third["files_committed"], third["files_skipped"]) == (3, 12)
    assert min(third["delta_versions"].values()) == first["delta_version"] + 1
    _assert_table_matches(sink, files + added)
    # time travel: the version before the third run's first batch holds the first run's rows
    before = min(third["delta_versions"].values()) - 1
    import polars as pl

    options = delta_table.storage_options(sink) or None
    assert pl.read_delta(delta_table.delta_uri(sink), version=before,
                         storage_options=options).height == rows  # fmt: skip


def test_flights_into_a_local_delta_table(stack: Stack, flights_df: Any, tmp_path: Path):
    landing, sink = tmp_path / "landing", (tmp_path / "lake").as_uri()
    _exactly_once_then_new_files(stack, "deltaflights", flights_df, landing, sink,
                                 lambda files: None, f"{landing.as_uri()}/*")  # fmt: skip
    assert (tmp_path / "lake" / "_delta_log").is_dir()
    staged = tmp_path / "lake" / "_celeray" / "staging"
    assert not staged.exists() or not any(staged.iterdir())  # nothing staged, nothing moved


def test_flights_into_a_delta_table_on_s3(stack: Stack, s3: Any, flights_df: Any,
                                          tmp_path: Path):  # fmt: skip
    prefix = f"delta-{uuid.uuid4().hex[:8]}"
    fs = s3.filesystem()

    def put(files: list[Path]) -> None:
        fs.put([str(p) for p in files], f"landing/{prefix}/flights/")

    sink = f"s3://lake/{prefix}/flights"
    _exactly_once_then_new_files(stack, "s3delta", flights_df, tmp_path / "landing", sink,
                                 put, f"s3://landing/{prefix}/flights/*")  # fmt: skip
    assert fs.exists(f"lake/{prefix}/flights/_delta_log/00000000000000000000.json")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_readers_see_whole_batches_only(stack: Stack, s3: Any, flights_df: Any, tmp_path: Path,
                                        where: str):  # fmt: skip
    """A reader polls the table every ~50 ms while a run commits many batches: at each
    version it sees exactly the rows of the batches published by then, on a local disk and
    on S3 (where a version is one conditionally created object)."""
    landing = tmp_path / "landing"
    files = write_landing(flights_df.iloc[:60_000], landing, 20)
    if where == "local":
        source, sink = f"{landing.as_uri()}/*", (tmp_path / "lake").as_uri()
    else:
        prefix = f"visible-{uuid.uuid4().hex[:8]}"
        s3.filesystem().put([str(p) for p in files], f"landing/{prefix}/flights/")
        source, sink = f"s3://landing/{prefix}/flights/*", f"s3://lake/{prefix}/flights"
    name = f"deltavisible{where}"
    _pipeline(stack, name, source, sink, "1")  # a batch per file
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            table = delta_table.open_table(sink)
            if table is not None:
                seen.append((table.version(), table.to_pyarrow_dataset().count_rows()))
            time.sleep(0.05)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        summary = _run(stack, name)
    finally:
        stop.set()
        reader.join()
    assert summary["batches_total"] == 20
    # One version per batch, new columns included: versions 0..19, each a whole batch.
    rows_of = {e["delta_version"]: e["rows_out"] for e in Ledger(sink).entries()}
    assert sorted(rows_of) == list(range(20)), rows_of
    assert len({v for v, _ in seen}) > 3, seen  # the reader saw the table grow
    for version, count in seen:
        assert count == sum(n for v, n in rows_of.items() if v <= version), (version, count)
    _assert_table_matches(sink, files)
