"""Two beat processes at once: each scheduled slot runs once.

Beat has no lock, so two beats send every due entry twice. Each send carries its slot (the
epoch-aligned start of its period); the first start of a slot claims it and the second is
skipped before it does anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._data import write_landing
from tests._stack import VENV_BIN, Proc, wait_for
from tests.faults._faultstack import FaultStack, exactly_once
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]

EVERY = 3  # s between slots
SLOTS = 6  # slots both beats must have sent


def _sent(beat: Proc, entry: str) -> int:
    return len(re.findall(rf"Sending due task {re.escape(entry)} ", beat.log.read_text()))


def test_two_beats_run_each_slot_once(fault_stack: FaultStack, flights_df, tmp_path: Path):
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df.iloc[:6_000], landing, 2)
    # Committed first, so each slot's run is quick (no Ray work): this test is about slots.
    fault_stack.add_pipeline("twobeats", landing, sink)
    fault_stack.settle("twobeats", timeout=300)
    fault_stack.add_pipeline("twobeats", landing, sink, schedule=str(EVERY))
    beats = [
        Proc([str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-l", "INFO",
              "-s", str(tmp_path / f"beat-{i}-schedule")],
             env={**fault_stack.env, "CELERAY_RECONCILE_INTERVAL": "0"},
             log=tmp_path / f"beat-{i}.log", cwd=tmp_path)
        for i in range(2)
    ]
    try:
        wait_for(lambda: all(_sent(b, "celeray:twobeats") >= SLOTS for b in beats), 60,
                 f"both beats sending {SLOTS} slots", interval=0.5)
    finally:
        for b in beats:
            b.stop()
    sends = sum(_sent(b, "celeray:twobeats") for b in beats)

    store = fault_stack.store
    slots = sorted(int(k.rsplit(":", 1)[1]) for k in store.r.keys("celeray:slot:twobeats:*"))

    def accounted() -> list:
        """The slot of every ended run; complete once each slot has ended or was skipped
        because the previous slot's run still held the lock (a run per slot at most)."""
        runs = [store.get(r) or {} for r in store.recent("twobeats", limit=100)]
        ended = [int(r["slot"]) for r in runs
                 if r.get("state") in ("SUCCESS", "FAILURE") and "slot" in r]
        busy = fault_stack.log("worker-io").count(" of twobeats skipped: run ")
        return ended if len(ended) + busy >= len(slots) else []

    ended = wait_for(accounted, 120, "every slot run or skipped for a running one")
    per_slot = {s: ended.count(s) for s in set(ended)}
    assert len(slots) >= SLOTS and sends >= 2 * SLOTS
    assert set(per_slot) <= set(slots)
    assert all(n == 1 for n in per_slot.values()), per_slot  # no slot ran twice
    found = exactly_once(sink, files)
    record("two beats at once", trials=1, **found, slots=len(slots), sends=sends)
    assert (found["duplicates"], found["losses"]) == (0, 0), found
