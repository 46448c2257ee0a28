"""Redis restarted empty in the middle of a run: workers consume again, nothing is redone or lost.

A Redis without persistence that restarts forgets every queued message, every run record
and every lock. The ledger in the sink still knows what was committed; beat's
reconciliation pass finds the listed-but-uncommitted files and starts a run for them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests._data import write_drifting_landing
from tests._stack import wait_for
from tests.faults._faultstack import FaultStack, exactly_once
from tests.faults.conftest import record

pytestmark = [
    pytest.mark.stack, pytest.mark.faults,
    pytest.mark.skipif(os.environ.get("CELERAY_TEST_FAULT_BROKER") == "amqp",
                       reason="Redis as the broker restarted empty: with RabbitMQ as the broker "
                       "see test_rabbitmq_restart.py"),
]

RECONNECT_BOUND = 60  # s: workers must be consuming again within this after Redis is back


def _entries(sink: Path) -> dict[str, dict]:
    folder = sink / "_celeray" / "ledger"
    return {p.name: json.loads(p.read_text()) for p in folder.glob("[!.]*.json")} \
        if folder.exists() else {}


def test_redis_restarted_empty_mid_run(fault_stack: FaultStack, flights_df, tmp_path: Path):
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_drifting_landing(flights_df.iloc[:160_000], landing, 32)
    fault_stack.add_pipeline("redis_lost", landing, sink)
    run_id = fault_stack.trigger("redis_lost")

    # Mid-run: some batches committed, others still to come.
    wait_for(lambda: len(_entries(sink)) >= 2 and fault_stack.store.pending(run_id), 120,
             "the first commits", interval=0.05)
    before = _entries(sink)
    fault_stack.redis.restart_empty()
    restarted = time.monotonic()

    # Both workers answer again, and a fresh run is consumed end to end within the bound.
    wait_for(lambda: len(fault_stack.client.control.ping(timeout=1.0)) >= 2, RECONNECT_BOUND,
             "both workers answering after the restart")
    probe_landing, probe_sink = tmp_path / "probe", tmp_path / "probe-lake"
    probe_files = write_drifting_landing(flights_df.iloc[:5_000], probe_landing, 2)
    fault_stack.add_pipeline("after_restart", probe_landing, probe_sink)
    probe = fault_stack.client.AsyncResult(fault_stack.trigger("after_restart"))
    wait_for(lambda: probe.state == "SUCCESS", RECONNECT_BOUND, "a run after the restart")
    consumed_after = time.monotonic() - restarted

    # Nobody triggers redis_lost again: beat's reconciliation pass must find what is left.
    def reconciled() -> bool:
        runs = [fault_stack.store.get(r) or {} for r in fault_stack.store.recent("redis_lost")]
        return any(r.get("trigger") == "reconcile" and r.get("state") == "SUCCESS"
                   for r in runs) and not fault_stack.store.holder("redis_lost")

    wait_for(reconciled, 120, "a reconciliation run of redis_lost", interval=1.0)
    fault_stack.settle("redis_lost")

    after = _entries(sink)
    for name, entry in before.items():  # nothing committed was redone
        assert after[name]["committed_at"] == entry["committed_at"], name
    inputs = [f["url"] for e in after.values() for f in e["inputs"]]
    assert len(inputs) == len(set(inputs)) == len(files)  # each file in exactly one entry
    found = exactly_once(sink, files)
    record("Redis restarted empty mid-run", **found)
    assert (found["duplicates"], found["losses"]) == (0, 0), found
    assert found["expected"] == found["found"] and found["checksum_ok"], found
    assert exactly_once(probe_sink, probe_files)["losses"] == 0
    assert consumed_after < RECONNECT_BOUND
