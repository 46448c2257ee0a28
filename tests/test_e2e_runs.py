"""End to end: landing files -> committed Parquet through real Redis, Celery workers and Ray.

The stack (a Ray head, an io worker with a prefork pool, a ray worker with a threads pool)
is started once per session by the ``stack`` fixture; each test has its own pipeline. The
core cases run on both brokers (``any_stack``): Redis, and RabbitMQ in a vhost of the
session's own (results and run state on Redis either way); the two that wait out a time
limit or a dead Ray worker run on RabbitMQ with the fault suite (``-m faults``).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from celeray import reading
from tests._data import SQL, assert_rows_match, write_landing
from tests._stack import Stack, wait_for

pytestmark = pytest.mark.stack



def _pipeline(stack: Stack, name: str, landing: Path, sink: Path, **extra: str) -> None:
    lines = [
        f'source = "{landing.as_uri()}/*"',
        f'sink = "{sink.as_uri()}"',
        f'sql = "{SQL}"',
        'partition_by = ["year", "month"]',
        f'batch_bytes = "{extra.pop("batch_bytes", "2MiB")}"',
        *[f"{k} = {v}" for k, v in extra.items()],
        f"[pipelines.{name}.schema]",
        'time_hour = "timestamp[s, tz=UTC]"',
    ]
    stack.add_pipeline(name, "\n".join(lines))


def _sink_rows(sink: Path) -> int:
    """Rows in the sink as its documented reader sees them: a Delta sink's log (a killed
    attempt's files lie in its folders until vacuum), a Parquet sink's hive partitions."""
    return reading.dataset(sink.as_uri()).count_rows()


def _assert_sink_matches(sink: Path, landing: list[Path]) -> int:
    """The sink holds exactly the rows DuckDB computes from the raw files: no more, no less."""
    table = reading.dataset(sink.as_uri()).to_table()
    return assert_rows_match(table, landing)


def _queued(stack: Stack, queue: str) -> int:
    """Messages waiting in ``queue`` on the stack's broker."""
    from celeray.broker import amqp_queue_depths, is_amqp

    if is_amqp(stack.settings.broker_url):
        return amqp_queue_depths(stack.settings, (queue,))[queue]
    return int(_redis_broker(stack).llen(queue))


def _drop_queued(stack: Stack, queue: str) -> int:
    """Throw away every message waiting in ``queue``: on Redis its list, on RabbitMQ a purge;
    how many went (on Redis: 1, the list)."""
    from kombu import Connection

    from celeray.broker import is_amqp

    if is_amqp(stack.settings.broker_url):
        with Connection(stack.settings.broker_url) as conn:
            return int(conn.default_channel.queue_purge(queue) or 0)
    return int(_redis_broker(stack).delete(queue))


def _redis_broker(stack: Stack):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(stack.settings.broker_url)


def _summary(stack: Stack, out: str) -> dict:
    run_id = out.split("run ", 1)[1].split()[0]
    result = stack.client.AsyncResult(run_id)
    assert result.state == "SUCCESS", (result.state, result.result)
    return dict(result.result)


def test_flights_exactly_once_then_only_new_files(any_stack: Stack, flights_df, tmp_path: Path):
    stack = any_stack
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df, landing, 24)
    _pipeline(stack, "flights", landing, sink)

    first = stack.celeray("run", "flights", "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    s1 = _summary(stack, first.stdout)
    assert s1["files_committed"] == 24 and s1["files_quarantined"] == 0
    rows = _assert_sink_matches(sink, files)
    assert s1["rows_out"] == rows and s1["rows_in"] == len(flights_df)
    assert "committed" in first.stdout and "rows" in first.stdout

    second = stack.celeray("run", "flights", "--wait")
    assert second.returncode == 0, second.stdout + second.stderr
    s2 = _summary(stack, second.stdout)
    assert (s2["files_committed"], s2["files_skipped"], s2["rows_out"]) == (0, 24, 0)
    assert _sink_rows(sink) == rows

    added = write_landing(flights_df.iloc[:30_000], landing, 3, start=24)
    third = stack.celeray("run", "flights", "--wait")
    assert third.returncode == 0, third.stdout + third.stderr
    s3 = _summary(stack, third.stdout)
    assert (s3["files_committed"], s3["files_skipped"]) == (3, 24)
    _assert_sink_matches(sink, files + added)

    runs = stack.celeray("runs", "flights")
    assert runs.returncode == 0 and runs.stdout.count("SUCCESS") >= 3


def test_corrupt_files_are_quarantined_and_the_rest_committed(
    any_stack: Stack, flights_df, tmp_path: Path
):
    stack = any_stack
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    good = write_landing(flights_df.iloc[:40_000], landing, 4)
    (landing / "broken-000.csv.zst").write_bytes(os.urandom(2048))
    truncated = gzip.compress(flights_df.iloc[:5000].to_csv(index=False).encode())
    (landing / "broken-001.csv.gz").write_bytes(truncated[: len(truncated) // 2])
    _pipeline(stack, "corrupt", landing, sink, batch_bytes="64MiB")

    run = stack.celeray("run", "corrupt", "--wait")
    assert run.returncode == 0, run.stdout + run.stderr
    s = _summary(stack, run.stdout)
    assert (s["files_committed"], s["files_quarantined"]) == (4, 2)
    _assert_sink_matches(sink, good)
    reasons = {Path(q["url"]).name: q for q in s["quarantined"]}
    assert set(reasons) == {"broken-000.csv.zst", "broken-001.csv.gz"}
    assert all(q["error"] for q in reasons.values())
    assert "quarantined" in run.stdout
    records = [json.loads(p.read_text()) for p in (sink / "_celeray/quarantine").glob("[!.]*.json")]
    assert {Path(r["url"]).name for r in records} == set(reasons)

    again = stack.celeray("run", "corrupt", "--wait")
    s2 = _summary(stack, again.stdout)
    assert (s2["files_committed"], s2["files_quarantined"], s2["files_skipped"]) == (0, 0, 6)


def _kill_when_active(stack: Stack, worker_name: str, task: str) -> int:
    """SIGKILL the process running ``task`` on ``worker_name`` (a pool child, or the main
    process of a threads pool) and return its pid."""
    inspect = stack.client.control.inspect([worker_name], timeout=0.5, limit=1)

    def running() -> int | None:
        for info in (inspect.active() or {}).get(worker_name, []):
            if info["name"] == task:
                return int(info["worker_pid"])
        return None

    pid = wait_for(running, 60, f"{task} running on {worker_name}", interval=0.05)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_sigkill_of_the_ray_worker_mid_transform_loses_nothing(
    any_stack_amqp_in_faults: Stack, flights_df, tmp_path: Path
):
    """A local sink: transform_batch commits its batch itself, so the kill may land in a
    Ray fan-out or in a commit; an io child mid-commit (object stores) is killed in
    tests/test_e2e_s3.py."""
    stack = any_stack_amqp_in_faults
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df, landing, 24)
    _pipeline(stack, "killed", landing, sink, batch_bytes="1MiB")
    run = stack.celeray("run", "killed")
    assert run.returncode == 0, run.stderr
    run_id = run.stdout.split("run ", 1)[1].split()[0]

    # The ray worker first: its transforms take long enough to be caught, and the run cannot
    # finish without it. Its unacked message comes back after the visibility timeout.
    ray_pid = stack.rayw.proc.pid
    assert _kill_when_active(stack, stack.rayw.name, "tasks.transform_batch") == ray_pid
    stack.rayw.proc.popen.wait(10)
    stack.rayw = stack.start_worker("ray", suffix="b")  # what supervisor would do

    result = stack.wait_run(run_id, timeout=240)
    assert result.state == "SUCCESS", result.result
    _assert_sink_matches(sink, files)
    assert result.result["files_committed"] == 24


def test_ten_concurrent_triggers_start_one_run(any_stack: Stack, flights_df, tmp_path: Path):
    stack = any_stack
    from celeray.errors import RunActiveError
    from celeray.runs import trigger_run

    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df.iloc[:60_000], landing, 8)
    _pipeline(stack, "busy", landing, sink)
    gate = threading.Barrier(10)
    outcomes: list = [None] * 10

    def trigger(i: int) -> None:  # what `celeray run busy` and the API do
        gate.wait()
        try:
            outcomes[i] = ("started", trigger_run("busy", stack.store, stack.client, trigger="t"))
        except RunActiveError as exc:
            outcomes[i] = ("busy", exc.run_id)

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [run for kind, run in outcomes if kind == "started"]
    assert len(started) == 1, outcomes
    assert all(run == started[0] for _, run in outcomes)
    assert stack.wait_run(started[0]).state == "SUCCESS"
    # While a run holds the lock, the CLI names it and exits 3 instead of starting another.
    assert stack.store.acquire("busy", "run-in-progress") == "run-in-progress"
    try:
        busy = stack.celeray("run", "busy")
    finally:
        stack.store.release("busy", "run-in-progress")
    assert busy.returncode == 3 and "run-in-progress" in busy.stdout, busy.stdout + busy.stderr

    # Beat-style triggers send the task without reserving: still only one does the work.
    ids = [stack.client.send_task("tasks.start_run", args=["busy"]).id for _ in range(10)]
    results = [stack.wait_run(i) for i in ids]
    assert all(r.state == "SUCCESS" for r in results)
    _assert_sink_matches(sink, files)
    entries = list((sink / "_celeray/ledger").glob("[!.]*.json"))
    assert sum(len(json.loads(e.read_text())["inputs"]) for e in entries) == 8


def test_validate_names_pipeline_and_key(stack: Stack, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f"""
[pipelines.a]
source = "{tmp_path.as_uri()}/in/*.csv"
sink = "{tmp_path.as_uri()}/in/out"
schedule = "*/5 * *"
format = "xml"
colour = "blue"
sql = "SELECT * FROM landing"
"""
    )
    out = stack.celeray("validate", str(bad))
    assert out.returncode == 1
    text = out.stdout + out.stderr
    for key in ("pipelines.a.schedule", "pipelines.a.format", "pipelines.a.colour",
                "pipelines.a.sql", "pipelines.a.sink"):
        assert key in text, text


def test_beat_fires_the_same_task_on_schedule(any_stack: Stack, flights_df, tmp_path: Path):
    stack = any_stack
    from tests._stack import VENV_BIN, Proc

    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df.iloc[:20_000], landing, 2)
    _pipeline(stack, "scheduled", landing, sink, schedule="2")
    beat = Proc([str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-l", "INFO"],
                env=stack.env, log=tmp_path / "beat.log", cwd=tmp_path)
    try:
        def finished_runs() -> list:
            ids = stack.store.recent("scheduled")
            done = [r for r in ids if (stack.store.get(r) or {}).get("state") == "SUCCESS"]
            return done if len(done) >= 2 else []

        runs = wait_for(finished_runs, 90, f"two scheduled runs\n{beat.tail()}")
    finally:
        beat.stop()
    assert all(stack.store.get(r)["trigger"] == "beat" for r in runs)
    _assert_sink_matches(sink, files)


def test_http_sources_are_staged_then_committed(stack: Stack, flights_df, tmp_path: Path):
    """Ray cannot read http:// in place: stage_batch copies the files into staging first."""
    import sys

    from tests._stack import Proc, free_port

    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = [p for p in write_landing(flights_df.iloc[:40_000], landing, 8) if ".csv" in p.name]
    port = free_port()
    server = Proc([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                  env=dict(os.environ), log=tmp_path / "http.log", cwd=landing)
    try:
        wait_for(lambda: "Serving HTTP" in (tmp_path / "http.log").read_text(), 30, "http.server")
        stack.add_pipeline(
            "overhttp",
            f"""
source = "http://127.0.0.1:{port}/flights-*.csv*"
sink = "{sink.as_uri()}"
sql = "{SQL}"
partition_by = ["year", "month"]
batch_bytes = "1MiB"
[pipelines.overhttp.schema]
time_hour = "timestamp[s, tz=UTC]"
""",
        )
        run = stack.celeray("run", "overhttp", "--wait")
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    s = _summary(stack, run.stdout)
    assert s["files_committed"] == len(files) == 6
    _assert_sink_matches(sink, files)
    staging = stack.root / "home" / "staging" / "overhttp"
    assert not staging.exists() or not any(staging.iterdir())  # staged copies are cleaned


def test_watchdog_resends_batches_whose_messages_were_lost(
    any_stack_amqp_in_faults: Stack, flights_df, tmp_path: Path
):
    """Celery on Redis can lose a message (a worker killed between taking it off the queue
    and recording it). Here the ray queue is emptied while no ray worker runs: the run's
    watchdog notices the silence and sends the batches again. On RabbitMQ (which loses no
    message this way) the queue is purged: the watchdog is as harmless, and as useful."""
    stack = any_stack_amqp_in_faults
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df.iloc[:50_000], landing, 6)
    _pipeline(stack, "lost", landing, sink)
    stack.rayw.stop()  # transforms now wait in the ray queue
    try:
        run = stack.celeray("run", "lost")
        assert run.returncode == 0, run.stderr
        run_id = run.stdout.split("run ", 1)[1].split()[0]
        wait_for(lambda: _queued(stack, "ray") >= 1 and stack.store.pending(run_id), 60,
                 "transforms queued")
        wait_for(lambda: (stack.store.get(run_id) or {}).get("state") == "RUNNING", 30, "plan")
        assert _drop_queued(stack, "ray") >= 1  # every queued transform message is gone
    finally:
        stack.rayw = stack.start_worker("ray", suffix="w")
    result = stack.wait_run(run_id, timeout=180)
    assert result.state == "SUCCESS", result.result
    _assert_sink_matches(sink, files)
    assert "silent for" in stack.io.proc.log.read_text()


def test_the_rabbitmq_password_is_in_no_log_or_output(rabbit_stack: Stack, flights_df,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """The broker URL holds a password (of a user made for the session's vhost): after the
    runs of the tests before it on this stack (quarantines, concurrent triggers, beat) and
    this one, no log of the stack and no CLI output holds it."""
    stack = rabbit_stack
    password = stack.vhost.password  # type: ignore[attr-defined]
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    write_landing(flights_df.iloc[:5_000], landing, 1)
    _pipeline(stack, "masked", landing, sink)
    outputs = [stack.celeray("run", "masked", "--wait"), stack.celeray("runs", "masked"),
               stack.celeray("status")]  # fmt: skip
    assert outputs[0].returncode == 0, outputs[0].stdout + outputs[0].stderr
    for out in outputs:
        assert password not in out.stdout + out.stderr
    logs = [p for p in stack.root.rglob("*") if p.is_file() and p.suffix in (".log", ".txt", "")]
    assert any(p.name.startswith("worker-") for p in logs)
    leaked = [str(p) for p in logs if password in p.read_text(errors="replace")]
    assert leaked == []
