"""SIGKILL of the worker moving a committed batch's inputs (``after_commit = "move:..."``).

The committing process (the ray worker: a local sink's batch is committed by its
``transform_batch``) kills itself after the first input of a batch is moved and before the
others (:data:`celeray.kill_points.DURING_ARCHIVE`); supervisor restarts it. The batch is
committed (its ledger entry and Delta commit came first), so nothing may be read again:
every row must be in the table exactly once, and once the next run's start has finished
the moves, every committed input must be in the archive and none left in the landing
folder, while the quarantined input stays where it landed.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from celeray import kill_points, reading
from celeray.ledger import Ledger
from tests._stack import wait_for
from tests.faults._faultstack import FaultStack
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]

FILES = 12  # in batches of about 4: the killed batch has inputs left to move


def _ended(stack: FaultStack, run_id: str) -> bool:
    return (stack.store.get(run_id) or {}).get("state") in ("SUCCESS", "FAILURE")


def test_kill_during_the_moves_loses_none_and_commits_none_twice(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    landing, sink, archive = tmp_path / "landing", tmp_path / "lake", tmp_path / "archive"
    landing.mkdir()
    for i in range(FILES):
        (landing / f"{i:02d}.csv").write_text(f"id,x\n{i},a\n{100 + i},b\n")
    (landing / "bad.csv").write_text("id,x\nnot-a-number,c\n")
    name = "archive_kill"
    fault_stack._pipelines[name] = "\n".join([
        f"[pipelines.{name}]", f'source = "{landing.as_uri()}/*.csv"',
        f'sink = "{sink.as_uri()}"', f'after_commit = "move:{archive.as_uri()}"',
        'batch_bytes = "60B"', f"[pipelines.{name}.schema]", 'id = "int64"', "",
    ])  # fmt: skip
    fault_stack.pipelines_file.write_text("\n".join(fault_stack._pipelines.values()))
    fired = Path(f"{fault_stack.kill_file}.fired")
    fired.unlink(missing_ok=True)
    fault_stack.kill_file.write_text(f"{kill_points.DURING_ARCHIVE} *")

    fault_stack.trigger(name)
    wait_for(fired.exists, 180, "a kill during the moves", interval=0.05)
    _point, _which, batch_id, pid = fired.read_text().split()
    wait_for(lambda: not psutil.pid_exists(int(pid)), 30, f"pid {pid} gone")
    entry = Ledger(sink.as_uri()).entry(batch_id)
    inputs = sorted(f["url"] for f in entry["inputs"])
    assert len(inputs) > 1
    left = [u for u in inputs if Path(u.removeprefix("file://")).exists()]
    assert 0 < len(left) < len(inputs), "the kill came between the moves"
    fault_stack.wait_running("ray-head", "worker-io", "worker-ray")
    fault_stack.settle(name, timeout=300)
    # The next run's start finishes the moves the kill left (if a redelivery did not).
    again = fault_stack.trigger(name)
    wait_for(lambda: _ended(fault_stack, again), 300, f"run {again} ended")

    ids = reading.dataset(sink.as_uri()).to_table().column("id").to_pylist()
    expected = sorted([*range(FILES), *range(100, 100 + FILES)])
    moved = sorted(p.name for p in archive.iterdir())
    found = {"expected": len(expected), "found": len(ids),
             "duplicates": len(ids) - len(set(ids)),
             "losses": len(set(expected) - set(ids))}  # fmt: skip
    repair = (fault_stack.store.get(again) or {}).get("ledger_repair") or {}
    record("SIGKILL during the archive moves", killed_pid=int(pid), batch=batch_id,
           left_by_kill=len(left), archived=len(moved),
           finished_by_next_start=repair.get("archived"), **found)  # fmt: skip
    assert sorted(ids) == expected, found  # every row, exactly once
    assert moved == [f"{i:02d}.csv" for i in range(FILES)]
    assert sorted(p.name for p in landing.iterdir()) == ["bad.csv"]
    assert all((archive / f"{i:02d}.csv").read_text() == f"id,x\n{i},a\n{100 + i},b\n"
               for i in range(FILES))  # fmt: skip
    status = fault_stack.celeray("status")
    assert f"{name}: backlog 0 file(s)" in status.stdout, status.stdout + status.stderr
    committed = [f["url"] for e in Ledger(sink.as_uri()).entries() for f in e["inputs"]]
    assert len(committed) == len(set(committed)) == FILES  # no input committed twice
