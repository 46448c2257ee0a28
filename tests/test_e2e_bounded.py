"""On the real stack: a backlog drains in bounded runs, each started by the end of the one
before, every row once; ``after_commit`` moves exactly the committed inputs (local disk
and S3), and ``celeray files`` says where each went."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from celeray import reading
from tests._s3 import S3Server
from tests._stack import Stack, wait_for

pytestmark = pytest.mark.stack


def _run(stack: Stack, name: str) -> dict[str, Any]:
    out = stack.celeray("run", name, "--wait", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return {"run_id": run_id, **dict(result.result)}


def _files(stack: Stack, name: str) -> list[dict[str, Any]]:
    out = stack.celeray("files", name, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return list(json.loads(out.stdout))


def _ids(sink: Path) -> list[int]:
    return list(reading.dataset(sink.as_uri()).to_table().column("id").to_pylist())


def test_a_backlog_of_2000_files_drains_in_4_runs_every_row_once(
    stack: Stack, tmp_path: Path
) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    now = time.time()
    for i in range(2000):
        path = landing / f"f{i:04d}.csv"
        path.write_text(f"id,x\n{i},v{i}\n")
        os.utime(path, (now - i, now - i))  # the higher the number, the older the file
    stack.add_pipeline("backlog", "\n".join([
        f'source = "{landing.as_uri()}/*.csv"', f'sink = "{sink.as_uri()}"',
        "max_files_per_run = 500", "[pipelines.backlog.schema]", 'id = "int64"',
    ]))  # fmt: skip

    out = stack.celeray("run", "backlog")  # one trigger; the runs after it chain
    assert out.returncode == 0, out.stdout + out.stderr
    first = out.stdout.split("run ", 1)[1].split()[0]

    def drained() -> list[dict[str, Any]] | None:
        records = [stack.store.get(r) or {} for r in stack.store.recent("backlog", 10)]
        if stack.store.holder("backlog") or not records:
            return None
        newest = records[0]
        if newest.get("state") != "SUCCESS" or newest.get("backlog_files") != 0:
            return None
        return records

    records = list(reversed(wait_for(drained, 900, "the backlog drained", interval=1.0)))
    assert records[0]["run_id"] == first
    assert [r["files_total"] for r in records] == [500, 500, 500, 500]
    assert [r["backlog_files"] for r in records] == [1500, 1000, 500, 0]
    assert [r["trigger"] for r in records] == ["cli", "backlog", "backlog", "backlog"]
    assert all(r["state"] == "SUCCESS" for r in records)
    assert [r.get("chained") for r in records[:-1]] == [r["run_id"] for r in records[1:]]
    ids = _ids(sink)
    assert len(ids) == 2000 and sorted(ids) == list(range(2000))  # every row, once
    # The oldest first: the first run took the 500 oldest files (the highest numbers).
    first_run = {f["url"] for f in _files(stack, "backlog") if f["run_id"] == first}
    assert first_run == {(landing / f"f{i:04d}.csv").as_uri() for i in range(1500, 2000)}
    runs = stack.celeray("runs")
    assert runs.returncode == 0 and "backlog" in runs.stdout
    history = stack.celeray("runs", "backlog")
    assert "backlog 0 file(s)" in history.stdout, history.stdout


def test_move_after_commit_moves_exactly_the_committed_files(
    stack: Stack, tmp_path: Path
) -> None:
    landing, sink, archive = tmp_path / "landing", tmp_path / "lake", tmp_path / "archive"
    for day in ("d1", "d2"):
        (landing / day).mkdir(parents=True)
        for i in range(3):
            (landing / day / f"{i}.csv").write_text(f"id,x\n{day[1]}{i},a\n")
    (landing / "d2" / "bad.csv").write_text("id,x\nnot-a-number,b\n")
    stack.add_pipeline("archived", "\n".join([
        f'source = "{landing.as_uri()}/*/*.csv"', f'sink = "{sink.as_uri()}"',
        f'after_commit = "move:{archive.as_uri()}/"', 'batch_bytes = "40B"',
        "[pipelines.archived.schema]", 'id = "int64"',
    ]))  # fmt: skip
    first = _run(stack, "archived")
    assert (first["files_committed"], first["files_quarantined"]) == (6, 1)
    assert first["batches_total"] > 1
    moved = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    assert moved == [f"{d}/{i}.csv" for d in ("d1", "d2") for i in range(3)]
    assert [p.name for p in landing.rglob("*.csv")] == ["bad.csv"]  # quarantined: kept
    assert (archive / "d1" / "2.csv").read_text() == "id,x\n12,a\n"
    assert sorted(_ids(sink)) == [10, 11, 12, 20, 21, 22]
    for f in _files(stack, "archived"):
        if f["state"] == "committed":
            rel = f["url"].split("/landing/", 1)[1]
            assert f["archived"]["to"] == (archive / rel).as_uri()
        else:
            assert "archived" not in f
    second = _run(stack, "archived")
    assert (second["files_listed"], second["files_committed"]) == (1, 0)


def test_move_after_commit_on_s3(stack: Stack, s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"del-{uuid.uuid4().hex[:8]}"
    fs = s3_server.filesystem()
    for i in range(4):
        fs.pipe_file(f"landing/{prefix}/in/{i}.csv", f"id,x\n{i},a\n".encode())
    sink = tmp_path / "lake"
    stack.add_pipeline("s3moved", "\n".join([
        f'source = "s3://landing/{prefix}/in/*.csv"', f'sink = "{sink.as_uri()}"',
        f'after_commit = "move:s3://landing/{prefix}/done"', 'batch_bytes = "20B"',
    ]))  # fmt: skip
    first = _run(stack, "s3moved")
    assert first["files_committed"] == 4
    fs.invalidate_cache()
    assert fs.glob(f"landing/{prefix}/in/*") == []
    assert sorted(fs.glob(f"landing/{prefix}/done/*")) == [
        f"landing/{prefix}/done/{i}.csv" for i in range(4)]  # fmt: skip
    assert fs.cat_file(f"landing/{prefix}/done/3.csv") == b"id,x\n3,a\n"
    assert sorted(_ids(sink)) == [0, 1, 2, 3]
    assert _run(stack, "s3moved")["files_listed"] == 0
