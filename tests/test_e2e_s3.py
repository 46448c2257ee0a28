"""End to end on object storage: s3://landing -> s3://lake through the real stack.

moto's S3 server runs on loopback (the session's ``s3_server``); the Celery workers, the Ray
head and its workers reach it over HTTP with the endpoint and credentials from their own
environment. The sink is read back through s3fs and pyarrow and compared with DuckDB over
the raw landing files, so every row must be there exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from ray_jobs.writer import arrow_filesystem
from tests._data import SQL, assert_rows_match, write_landing
from tests._s3 import S3Server
from tests._stack import Stack, wait_for

pytestmark = pytest.mark.stack



def _upload(s3: S3Server, files: list[Path], prefix: str) -> None:
    s3.filesystem().put([str(p) for p in files], f"landing/{prefix}/flights/")


def _sink_table(s3: S3Server, sink_key: str):  # type: ignore[no-untyped-def]
    fs = s3.filesystem()
    return ds.dataset(
        sink_key, format="parquet", partitioning="hive", filesystem=arrow_filesystem(fs)
    ).to_table()


def _assert_sink_matches(s3: S3Server, sink_key: str, landing: list[Path]) -> int:
    """The sink holds exactly the rows DuckDB computes from the raw files: no more, no less."""
    return assert_rows_match(_sink_table(s3, sink_key), landing)


def _run(stack: Stack, name: str) -> tuple[str, dict]:
    out = stack.celeray("run", name, "--wait", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return run_id, dict(result.result)


def test_s3_landing_to_s3_lake_exactly_once(
    stack: Stack, s3_server: S3Server, flights_df, tmp_path: Path
):
    s3 = s3_server
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    files = write_landing(flights_df.iloc[:120_000], tmp_path / "landing", 12)
    _upload(s3, files, prefix)
    sink_key = f"lake/{prefix}/flights"
    stack.add_pipeline(
        "s3flights",
        "\n".join([
            f'source = "s3://landing/{prefix}/flights/*"',
            f'sink = "s3://{sink_key}"',
            f'sql = "{SQL}"',
            'partition_by = ["year", "month"]',
            'batch_bytes = "2MiB"',
            "[pipelines.s3flights.schema]",
            'time_hour = "timestamp[s, tz=UTC]"',
        ]),
    )  # fmt: skip

    run_id, first = _run(stack, "s3flights")
    assert (first["files_committed"], first["files_quarantined"]) == (12, 0)
    assert first["batches_total"] > 1  # several ledger entries, several commits
    rows = _assert_sink_matches(s3, sink_key, files)
    assert first["rows_out"] == rows and first["rows_in"] == 120_000
    fs = s3.filesystem()
    entries = fs.ls(f"{sink_key}/_celeray/ledger")
    assert len(entries) == first["batches_total"]
    assert not fs.exists(f"{sink_key}/_celeray/staging")  # every batch rolled forward

    _, second = _run(stack, "s3flights")
    assert (second["files_committed"], second["files_skipped"], second["rows_out"]) == (0, 12, 0)
    assert _sink_table(s3, sink_key).num_rows == rows

    added = write_landing(flights_df.iloc[120_000:150_000], tmp_path / "landing", 2, start=12)
    _upload(s3, added, prefix)
    _, third = _run(stack, "s3flights")
    assert (third["files_committed"], third["files_skipped"]) == (2, 12)
    _assert_sink_matches(s3, sink_key, files + added)

    # Credentials came from the environment only: never in a message, a plan or a log.
    # A message names its inputs and nothing else: no plan, no sink, no storage options.
    jobs = json.dumps(stack.store.load_jobs(run_id))
    assert "s3://landing/" in jobs and "storage_options" not in jobs and sink_key not in jobs
    logs = "".join(p.read_text(errors="replace") for p in stack.root.glob("*.log"))
    for where, text in (("the saved jobs", jobs), ("the run summary", json.dumps(first)),
                        ("the stack's logs", logs)):  # fmt: skip
        assert s3.secret not in text, f"the S3 secret leaked into {where}"


def test_http_source_staged_on_s3(stack: Stack, s3_server: S3Server, flights_df, tmp_path: Path):
    """With ``CELERAY_STAGING_URL=s3://...`` the io worker copies http inputs into S3, Ray
    reads them there, and the commit removes them: nothing assumes a local disk."""
    import os
    import sys

    from tests._stack import Proc, free_port, wait_for

    s3 = s3_server
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    landing = tmp_path / "landing"
    files = [p for p in write_landing(flights_df.iloc[:40_000], landing, 8) if ".csv" in p.name]
    port = free_port()
    server = Proc([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                  env=dict(os.environ), log=tmp_path / "http.log", cwd=landing)  # fmt: skip
    sink_key = f"lake/{prefix}/overhttp"
    stack.add_pipeline(
        "overhttps3",
        "\n".join([
            f'source = "http://127.0.0.1:{port}/flights-*.csv*"',
            f'sink = "s3://{sink_key}"',
            f'sql = "{SQL}"',
            'partition_by = ["year", "month"]',
            'batch_bytes = "1MiB"',
            "[pipelines.overhttps3.schema]",
            'time_hour = "timestamp[s, tz=UTC]"',
        ]),
    )  # fmt: skip
    # Both workers derive the staging folder from their own settings (a message names no
    # folder): the io worker stages there, the ray worker's Ray tasks read from there.
    staging = {"CELERAY_STAGING_URL": f"s3://lake/{prefix}/_staging"}
    stack.io.stop()
    stack.rayw.stop()
    stack.io = stack.start_worker("io", suffix="-s3", env=staging)
    stack.rayw = stack.start_worker("ray", suffix="-s3", env=staging)
    try:
        wait_for(lambda: "Serving HTTP" in (tmp_path / "http.log").read_text(), 30, "http.server")
        _, summary = _run(stack, "overhttps3")
    finally:
        server.stop()
        stack.io.stop()
        stack.rayw.stop()
        stack.io = stack.start_worker("io")
        stack.rayw = stack.start_worker("ray")
    assert summary["files_committed"] == len(files) == 6
    _assert_sink_matches(s3, sink_key, files)
    moto_log = (s3.proc.log).read_text(errors="replace")
    assert f"PUT /lake/{prefix}/_staging/overhttps3/" in moto_log  # staged on S3
    assert not s3.filesystem().find(f"lake/{prefix}/_staging")  # and cleaned after commit


def test_sigkill_of_an_io_child_mid_commit_loses_nothing(
    stack: Stack, s3_server: S3Server, flights_df, tmp_path: Path
):
    """An object store's batches are committed by commit_batch on the io queue: a pool
    child killed in the middle of one is replaced, its message given back, and the commit
    (conditional PUT, then the copies) is done again from where it stopped."""
    s3 = s3_server
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    files = write_landing(flights_df.iloc[:90_000], tmp_path / "landing", 18)
    _upload(s3, files, prefix)
    sink_key = f"lake/{prefix}/flights"
    stack.add_pipeline("s3killed", "\n".join([
        f'source = "s3://landing/{prefix}/flights/*"',
        f'sink = "s3://{sink_key}"',
        f'sql = "{SQL}"',
        'partition_by = ["year", "month"]',
        'batch_bytes = "1MiB"',
        "[pipelines.s3killed.schema]",
        'time_hour = "timestamp[s, tz=UTC]"',
    ]))  # fmt: skip
    run = stack.celeray("run", "s3killed")
    assert run.returncode == 0, run.stderr
    run_id = run.stdout.split("run ", 1)[1].split()[0]

    inspect = stack.client.control.inspect([stack.io.name], timeout=0.5, limit=1)

    def committing() -> int | None:
        for info in (inspect.active() or {}).get(stack.io.name, []):
            if info["name"] == "tasks.commit_batch":
                return int(info["worker_pid"])
        return None

    child = wait_for(committing, 120, "a commit_batch running on the io worker", interval=0.05)
    os.kill(child, signal.SIGKILL)
    assert stack.io.proc.alive() and child != stack.io.proc.pid  # the pool replaces it

    result = stack.wait_run(run_id, timeout=240)
    assert result.state == "SUCCESS", result.result
    assert result.result["files_committed"] == 18
    _assert_sink_matches(s3, sink_key, files)
