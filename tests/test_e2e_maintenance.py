"""``celeray compact NAME`` and ``celeray vacuum NAME`` as a user runs them, on the real stack.

The command sends the task by name; the stack's ``ray`` worker runs it as Ray tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tests._maint_tables import data_files, read_rows, rows_of
from tests._stack import Stack

pytestmark = pytest.mark.stack


def test_compact_a_parquet_sink_after_runs(stack: Stack, tmp_path: Path) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    for i in range(8):
        ids = range(i * 20, i * 20 + 20)
        (landing / f"f{i:02d}.csv").write_text(
            "id,name,k\n" + "".join(f"{j},row-{j},{j % 2}\n" for j in ids))
    stack.add_pipeline("maintparquet", f'''
source = "{landing.as_uri()}/*.csv"
sink = "{sink.as_uri()}"
table_format = "parquet"
partition_by = ["k"]
batch_bytes = "1"
maintenance = {{ target_file_size = "1MiB" }}
''')  # every file its own batch: 8 small files per partition
    run = stack.celeray("run", "maintparquet", "--wait")
    assert run.returncode == 0, run.stdout + run.stderr
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 8, "k=1": 8}
    before = read_rows(sink)
    assert len(before) == 160

    out = stack.celeray("compact", "maintparquet", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert (report["format"], report["files_removed"], report["files_added"]) == ("parquet", 16, 2)
    assert {k: len(v) for k, v in data_files(sink).items()} == {"k=0": 1, "k=1": 1}
    assert read_rows(sink) == before
    # a later run sees its inputs as done: nothing commits twice
    again = stack.celeray("run", "maintparquet", "--wait")
    assert again.returncode == 0 and read_rows(sink) == before


def test_compact_and_vacuum_a_delta_table(stack: Stack, tmp_path: Path) -> None:
    sink = tmp_path / "delta"
    for i in range(12):
        write_deltalake(str(sink), pa.table({"id": [i * 2, i * 2 + 1], "name": ["a", "b"],
                                             "k": [0, 1]}), mode="append", partition_by=["k"])
    before = rows_of(DeltaTable(str(sink)).to_pyarrow_table())
    version = DeltaTable(str(sink)).version()
    stack.add_pipeline("maintdelta", f'''
source = "{(tmp_path / 'nothing').as_uri()}/*.csv"
sink = "{sink.as_uri()}"
partition_by = ["k"]
''')
    out = stack.celeray("compact", "maintdelta")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "files_removed=24" in out.stdout and "format=delta" in out.stdout
    table = DeltaTable(str(sink))
    assert len(table.file_uris()) == 2
    assert rows_of(table.to_pyarrow_table()) == before
    assert rows_of(DeltaTable(str(sink), version=version).to_pyarrow_table()) == before

    refused = stack.celeray("vacuum", "maintdelta", "--retention", "5s")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "CELERAY_TASK_TIME_LIMIT" in refused.stderr
    out = stack.celeray("vacuum", "maintdelta", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["files_deleted"] == 0 and report["retention_seconds"] == 7 * 86400
    assert rows_of(DeltaTable(str(sink), version=version).to_pyarrow_table()) == before
