"""RabbitMQ restarted in the middle of a run: its queued messages survive, the run ends with
every row once, and no reconciliation pass is needed (none runs: this stack has no beat).

The broker is a RabbitMQ node of the test's own (:class:`tests._rabbit.RabbitNode`, own node
name, ports and data folder), stopped and started by its pid; the machine's RabbitMQ is not
touched. The ray worker is stopped before the run so that the run's transforms wait in the
``ray`` queue while the broker restarts; the io worker stays connected through the restart
and must consume again after it (the run's watchdog countdown waits in RabbitMQ's delayed
delivery queues meanwhile).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from celeray.broker import amqp_queue_depths
from tests import _rabbit
from tests._data import write_drifting_landing
from tests._stack import Stack, wait_for
from tests.faults._faultstack import exactly_once
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]

DBS = (3, 4)  # Redis dbs of this test's stack (results, run state), apart from the others'


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    if shutil.which(_rabbit.SERVER) is None and not Path(_rabbit.SERVER).exists():
        pytest.skip(f"no rabbitmq-server here ({_rabbit.SERVER}; CELERAY_TEST_RABBITMQ_SERVER)")
    n = _rabbit.RabbitNode(tmp_path / "rabbit")
    try:
        yield n
    finally:
        n.stop()


def test_rabbitmq_restarted_mid_run(node: _rabbit.RabbitNode, flights_df, tmp_path: Path):
    limits = {"CELERAY_TASK_TIME_LIMIT": "40", "CELERAY_VISIBILITY_TIMEOUT": "45"}
    stack = Stack(tmp_path / "stack", broker_url=node.url(), dbs=DBS, extra_env=limits)
    try:
        landing, sink = tmp_path / "landing", tmp_path / "lake"
        files = write_drifting_landing(flights_df.iloc[:80_000], landing, 16)
        stack.add_pipeline("restarted", f'source = "{landing.as_uri()}/*"\n'
                           f'sink = "{sink.as_uri()}"\nbatch_bytes = "1MiB"\n'
                           "[pipelines.restarted.schema]\n"
                           'time_hour = "timestamp[s, tz=UTC]"')  # fmt: skip
        stack.rayw.stop()  # the run's transforms now wait in the ray queue
        run = stack.celeray("run", "restarted")
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = run.stdout.split("run ", 1)[1].split()[0]

        def queued() -> int:
            return amqp_queue_depths(stack.settings, ("ray",))["ray"]

        batches = wait_for(lambda: stack.store.pending(run_id) and
                           queued() == len(stack.store.pending(run_id)) and queued(),
                           60, "every transform queued")  # fmt: skip
        node.restart()  # SIGTERM by pid, then the same node on the same data and port
        assert queued() == batches  # the durable quorum queue kept every message

        # The io worker reconnects by itself; a new ray worker starts consuming.
        wait_for(lambda: stack.client.control.ping(destination=[stack.io.name], timeout=1.0),
                 60, "the io worker answering after the restart")
        stack.rayw = stack.start_worker("ray", suffix="r")
        result = stack.wait_run(run_id, timeout=300)
        assert result.state == "SUCCESS", result.result
        assert result.result["files_committed"] == len(files)

        runs = [stack.store.get(r) or {} for r in stack.store.recent("restarted")]
        assert [r.get("trigger") for r in runs] == ["cli"]  # one run: no reconciliation
        found = exactly_once(sink, files)
        record("RabbitMQ restarted mid-run", **found, queued_at_restart=batches)
        assert (found["duplicates"], found["losses"]) == (0, 0), found
        assert found["expected"] == found["found"] and found["checksum_ok"], found
    finally:
        stack.stop()


def test_rabbitmq_restarted_while_batches_run(node: _rabbit.RabbitNode, flights_df,
                                              tmp_path: Path) -> None:  # fmt: skip
    """The restart lands while the ray worker runs batches: their messages come back (the
    worker's channel died with the broker) while the first starts may still finish; the
    batch lease and the idempotent commit leave every row once, in the one run."""
    limits = {"CELERAY_TASK_TIME_LIMIT": "40", "CELERAY_VISIBILITY_TIMEOUT": "45"}
    stack = Stack(tmp_path / "stack", broker_url=node.url(), dbs=DBS, extra_env=limits)
    try:
        landing, sink = tmp_path / "landing", tmp_path / "lake"
        files = write_drifting_landing(flights_df.iloc[:80_000], landing, 16)
        stack.add_pipeline("running", f'source = "{landing.as_uri()}/*"\n'
                           f'sink = "{sink.as_uri()}"\nbatch_bytes = "1MiB"\n'
                           "[pipelines.running.schema]\n"
                           'time_hour = "timestamp[s, tz=UTC]"')  # fmt: skip
        run = stack.celeray("run", "running")
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = run.stdout.split("run ", 1)[1].split()[0]
        ledger = sink / "_celeray" / "ledger"
        wait_for(lambda: ledger.exists() and list(ledger.glob("[!.]*.json")), 120,
                 "the first commit", interval=0.05)
        mid_run = bool(stack.store.pending(run_id))
        node.restart()

        result = stack.wait_run(run_id, timeout=300)
        assert result.state == "SUCCESS", result.result
        assert result.result["files_committed"] == len(files)
        runs = [stack.store.get(r) or {} for r in stack.store.recent("running")]
        assert [r.get("trigger") for r in runs] == ["cli"]  # one run: no reconciliation
        found = exactly_once(sink, files)
        record("RabbitMQ restarted while batches run", **found, mid_run=mid_run)
        assert (found["duplicates"], found["losses"]) == (0, 0), found
        assert found["expected"] == found["found"] and found["checksum_ok"], found
    finally:
        stack.stop()
