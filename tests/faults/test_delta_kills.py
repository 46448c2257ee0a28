"""SIGKILL of the worker committing a Delta batch at the two Delta commit points.

Random kills (test_sigkill.py) seldom land exactly between a batch's ledger entry and its
Delta commit, or between the Delta commit and its version record. Here the committing
process kills itself there (:mod:`celeray.kill_points`, armed through a file the stack's
test-only variable names): the ray worker (a local sink's batch is committed by its
``transform_batch``) dies with SIGKILL, supervisor restarts it, and the batch's recovery
(the redelivered message, or the next run's start) must leave every row exactly once in the
Delta table and exactly one Delta commit per batch's app transaction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeray import delta_table, kill_points
from celeray.ledger import Ledger
from tests._data import write_drifting_landing
from tests._stack import wait_for
from tests.faults._faultstack import FaultStack, exactly_once
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]

PROGRAMS = ("ray-head", "worker-io", "worker-ray")


def _app_commits(sink: Path) -> dict[str, int]:
    """App transaction id -> how many Delta commits carry it, from the log itself."""
    counts: dict[str, int] = {}
    for log in sorted((sink / "_delta_log").glob("*.json")):
        for line in log.read_text().splitlines():
            txn = json.loads(line).get("txn")
            if txn:
                counts[txn["appId"]] = counts.get(txn["appId"], 0) + 1
    return counts


def _run_ended(stack: FaultStack, run_id: str) -> bool:
    return (stack.store.get(run_id) or {}).get("state") in ("SUCCESS", "FAILURE")


@pytest.mark.parametrize("point", kill_points.POINTS)
def test_kill_at_a_delta_commit_point(
    fault_stack: FaultStack, flights_df: Any, tmp_path: Path, point: str
) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_drifting_landing(flights_df.iloc[:40_000], landing, 8)
    name = f"kill_{point.replace('-', '_')}"
    fault_stack.add_pipeline(name, landing, sink, table_format='"delta"')
    fired = Path(f"{fault_stack.kill_file}.fired")
    fired.unlink(missing_ok=True)
    fault_stack.kill_file.write_text(f"{point} *")  # the first batch to reach the point
    victim_before = fault_stack.program_pid("worker-ray")

    fault_stack.trigger(name)
    wait_for(fired.exists, 120, f"a kill at {point}", interval=0.05)
    _point, _which, batch_id, pid = fired.read_text().split()
    wait_for(lambda: not psutil.pid_exists(int(pid)), 30, f"pid {pid} gone")
    assert Ledger(sink.as_uri()).is_committed(batch_id)  # both points lie after the entry
    fault_stack.wait_running(*PROGRAMS)
    fault_stack.settle(name, timeout=300)
    # The next run: its start publishes whatever a kill left unpublished (if the killed
    # batch's redelivery did not already).
    again = fault_stack.trigger(name)
    wait_for(lambda: _run_ended(fault_stack, again), 300, f"run {again} ended")

    entries = Ledger(sink.as_uri()).entries()
    batches = {e["batch_id"] for e in entries if e.get("delta_actions")}
    assert batch_id in batches
    assert all("delta_version" in e for e in entries), "a batch left unpublished"
    commits = _app_commits(sink)
    assert commits == {delta_table.app_id(b): 1 for b in batches}, commits
    found = exactly_once(sink, files)  # read through deltalake (celeray.reading)
    table = delta_table.open_table(sink.as_uri())
    found["delta_rows"] = table.to_pyarrow_dataset().count_rows()
    record(f"SIGKILL {point}", killed_pid=int(pid), ray_worker_was=victim_before,
           batches=len(batches), **found)  # fmt: skip
    assert (found["duplicates"], found["losses"]) == (0, 0), found
    assert found["expected"] == found["found"] == found["delta_rows"], found
    assert found["checksum_ok"], found
