"""SIGKILL, at seeded random moments, of each part of a running stack; nothing lost, nothing twice.

Each trial (on a Delta sink or a plain Parquet one, alternately) lands its own files
(whose columns drift: some lack one, some bring one, so the table schema evolves while
batches commit at once) for a pipeline of its own, triggers a run, waits for a seeded
moment (after 0-4 of the run's ~6 batches committed, plus 0-0.3 s) and kills one part
with SIGKILL. supervisor restarts what died. The trial then waits until the pipeline has
settled (every listed file committed or quarantined, no run holding its lock; triggering a
new run if the killed one was lost, as a user would) and compares the sink with the inputs
row by row.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path

import psutil
import pytest

from tests._data import write_drifting_landing
from tests._stack import wait_for
from tests.faults._faultstack import FaultStack, exactly_once, wait_seconds
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]

PROGRAMS = ("ray-head", "worker-io", "worker-ray")
TARGETS = ("io-child", "io-main", "ray-worker", "ray-process", "ray-head")
TRIALS = 4  # per target: 20 seeded trials in all
TABLE_FORMATS = ("delta", "parquet")  # alternating: two trials of each per target


def _victim(stack: FaultStack, target: str, rng: random.Random) -> int:
    """The pid to kill for ``target`` now, or 0 when there is none at this moment."""
    if target == "io-main":
        return stack.program_pid("worker-io")
    if target == "ray-worker":
        return stack.program_pid("worker-ray")
    if target == "io-child":
        children = psutil.Process(stack.program_pid("worker-io")).children()
        return rng.choice(children).pid if children else 0
    if target == "ray-process":
        # Ray's own agents are titled ray::DashboardAgent / ray::RuntimeEnvAgent: killing one
        # stops the raylet and so the whole head (celeray ray-head restarts it), which is
        # not this target: tests/test_head_recovery.py covers it.
        procs = [p for p in stack.ray_processes() if "Agent" not in " ".join(p.cmdline())]
        busy = [p for p in procs if "process_unit" in " ".join(p.cmdline())]
        pool = busy or procs
        return rng.choice(pool).pid if pool else 0
    if target == "ray-head":  # the head's GCS: `ray start --block` stops, supervisor restarts
        head = psutil.Process(stack.program_pid("ray-head"))
        gcs = [p for p in head.children(recursive=True) if p.name().startswith("gcs_server")]
        return gcs[0].pid if gcs else 0
    raise ValueError(target)


@pytest.mark.parametrize(("target", "trial"), [(t, i) for t in TARGETS for i in range(TRIALS)])
def test_sigkill_at_a_random_moment(
    fault_stack: FaultStack, flights_df, tmp_path: Path, target: str, trial: int
) -> None:
    rng = random.Random(f"{target}/{trial}")
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    start = rng.randrange(0, len(flights_df) - 60_000)
    files = write_drifting_landing(flights_df.iloc[start : start + 60_000], landing, 12)
    name = f"kill_{target.replace('-', '_')}_{trial}"
    # Each target is tried on both table formats: a Delta sink's commit has one more step
    # (the Delta commit after the ledger entry) for a kill to fall between.
    table_format = TABLE_FORMATS[trial % len(TABLE_FORMATS)]
    fault_stack.add_pipeline(name, landing, sink, table_format=f'"{table_format}"')

    # The moment: after a seeded number of the run's ~6 batches committed (0: while it
    # plans or transforms its first), plus a seeded jitter.
    commits = rng.randrange(0, 5)
    delay = rng.uniform(0.0, 0.3)
    run_id = fault_stack.trigger(name)
    ledger = sink / "_celeray" / "ledger"
    with contextlib.suppress(TimeoutError):  # a slow run is killed all the same, later on
        wait_for(lambda: commits == 0 or len(list(ledger.glob("[!.]*.json"))) >= commits, 90,
                 f"{commits} commits", interval=0.02)
    wait_seconds(delay)
    state = (fault_stack.store.get(run_id) or {}).get("state")
    mid_run = state not in ("SUCCESS", "FAILURE")  # the run had not ended yet
    victim = _victim(fault_stack, target, rng)
    if victim:
        os.kill(victim, signal.SIGKILL)
    fault_stack.wait_running(*PROGRAMS)
    # A Ray driver SIGKILLed can leave the head refusing new drivers for a while (Ray's
    # ray.init waits 60 s, then the ray worker restarts and connects): settling is bounded
    # by a few minutes, not seconds.
    fault_stack.settle(name, timeout=300)

    found = exactly_once(sink, files)
    if table_format == "delta":  # the table's own readers: each batch's rows exactly once
        from celeray import delta_table

        found["delta_rows"] = delta_table.open_table(sink.as_uri()).to_pyarrow_dataset(
            ).count_rows()
        assert found["delta_rows"] == found["found"], found
    record(f"SIGKILL {target}", trial=trial, after_commits=commits, delay=round(delay, 3),
           killed=bool(victim), table_format=table_format,
           mid_run=mid_run, **found)
    assert (found["duplicates"], found["losses"]) == (0, 0), found
    assert found["expected"] == found["found"] and found["checksum_ok"], found
