"""Inputs that kill their worker every time, batches past the time limit, a full sink disk.

Each test gives its pipeline a transform module of its own (in the stack's PYTHONPATH, which
the Ray workers inherit), the way a user's pipeline names ``package.module:function``.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from celeray import reading
from tests._data import write_landing
from tests._stack import wait_for
from tests.faults._faultstack import TIME_LIMIT, VISIBILITY, FaultStack, exactly_once
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]


def _module(stack: FaultStack, name: str, body: str) -> str:
    (stack.mods / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def _wait_end(stack: FaultStack, run_id: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (r := stack.store.get(run_id)) and r.get("state") in
                    ("SUCCESS", "FAILURE") and r, timeout, f"run {run_id} to end")


def test_an_input_that_kills_its_ray_worker_every_time_is_quarantined(
    fault_stack: FaultStack, flights_df, tmp_path: Path
):
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    good = write_landing(flights_df.iloc[:30_000], landing, 6)
    poison = landing / "flights-poison.csv"
    flights_df.iloc[:500].assign(carrier="XX").to_csv(poison, index=False)
    mod = _module(fault_stack, "poisonous", """
        import os
        import pyarrow.compute as pc

        def kill_on_xx(table):
            if pc.any(pc.equal(table["carrier"], "XX")).as_py():
                os._exit(1)  # the worker dies: no exception, nothing to catch
            return table
    """)
    fault_stack.add_pipeline("poison", landing, sink, batch_bytes='"64MiB"',
                             transform=f'"{mod}:kill_on_xx"')
    ray_worker = fault_stack.program_pid("worker-ray")
    started = time.monotonic()
    record_ = _wait_end(fault_stack, fault_stack.trigger("poison"), timeout=180)
    took = time.monotonic() - started

    assert record_["state"] == "SUCCESS", record_
    assert (record_["files_committed"], record_["files_quarantined"]) == (len(good), 1)
    [q] = record_["quarantined"]
    assert q["url"].endswith("flights-poison.csv") and q["kind"] == "poison", q
    assert "died every time" in q["error"]
    assert fault_stack.program_pid("worker-ray") == ray_worker  # the Celery worker lived on
    found = exactly_once(sink, good)
    record("poison input (kills its Ray worker)", **found, seconds=round(took, 1))
    assert (found["duplicates"], found["losses"]) == (0, 0), found


def test_a_batch_past_the_time_limit_is_stopped_and_never_runs_twice_at_once(
    fault_stack: FaultStack, flights_df, tmp_path: Path
):
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    files = write_landing(flights_df.iloc[:1_500], landing, 1)  # one file, one Ray task
    starts = tmp_path / "starts.log"
    mod = _module(fault_stack, "sleepy", f"""
        import os, time
        import psutil

        def sleep_long(table):
            log = {str(starts)!r}
            earlier = open(log).read().split() if os.path.exists(log) else []
            alive = [p for p in earlier if psutil.pid_exists(int(p))]
            with open(log, "a") as f:
                f.write(("OVERLAP " if alive else "") + str(os.getpid()) + "\\n")
            time.sleep(600)
            return table
    """)
    fault_stack.add_pipeline("slow", landing, sink, batch_bytes='"64MiB"',
                             transform=f'"{mod}:sleep_long"')
    started = time.monotonic()
    run = _wait_end(fault_stack, fault_stack.trigger("slow"), timeout=60)
    took = time.monotonic() - started

    assert run["state"] == "FAILURE"
    assert any("exceeded the time limit" in e["error"] for e in run["errors"]), run["errors"]
    assert took < TIME_LIMIT + VISIBILITY  # stopped by the deadline, before any redelivery
    first = [line for line in starts.read_text().split("\n") if line]
    wait_for(lambda: not any(psutil.pid_exists(int(p.split()[-1])) for p in first), 30,
             "the sleeping Ray worker killed")
    # Past the visibility timeout nothing came back on its own while it ran: the next
    # start (beat's reconciliation) only came after the first was stopped.
    time.sleep(VISIBILITY - min(took, VISIBILITY) + 1)
    assert not any(line.startswith("OVERLAP") for line in starts.read_text().split("\n"))
    assert not (sink / "_celeray" / "ledger").exists() or \
        not list((sink / "_celeray" / "ledger").glob("[!.]*.json"))

    fault_stack.add_pipeline("slow", landing, sink, batch_bytes='"64MiB"')  # fixed
    fault_stack.settle("slow")
    found = exactly_once(sink, files)
    record("batch past the time limit", **found, starts=len(first))
    assert (found["duplicates"], found["losses"]) == (0, 0), found


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs for the sink, unmounted afterwards (needs root, as CI here has)."""
    mount = tmp_path / "smalldisk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_sink_disk_fails_cleanly_and_the_run_resumes_with_space(
    fault_stack: FaultStack, flights_df, tmp_path: Path, small_disk: Path
):
    landing, sink = tmp_path / "landing", small_disk / "lake"
    files = write_landing(flights_df.iloc[:150_000], landing, 12)
    fault_stack.add_pipeline("diskfull", landing, sink, batch_bytes='"2MiB"')
    run = _wait_end(fault_stack, fault_stack.trigger("diskfull"))

    assert run["state"] == "FAILURE"
    assert any("No space left on device" in e["error"] for e in run["errors"]), run["errors"]
    # No partial batch visible: every Parquet file outside _celeray belongs to a committed
    # entry, and the visible rows are exactly those of the committed files.
    entries = [json.loads(p.read_text()) for p in (sink / "_celeray/ledger").glob("[!.]*.json")] \
        if (sink / "_celeray/ledger").exists() else []
    listed = {o["path"] for e in entries for o in e["outputs"]}
    if (sink / "_delta_log").exists():  # a Delta sink (the default): readers see its log's
        # files; a failed attempt's finished units stay in the folders, in no version
        from celeray import delta_table

        table = delta_table.open_table(sink.as_uri())
        visible = {str(Path(u.removeprefix("file://")).relative_to(sink))
                   for u in table.file_uris()}  # fmt: skip
    else:
        visible = {str(p.relative_to(sink)) for p in sink.rglob("*.parquet")
                   if not str(p.relative_to(sink)).startswith("_")}
    assert visible <= listed, visible - listed
    committed = {f["url"] for e in entries for f in e["inputs"]}
    partial = [p for p in files if p.as_uri() in committed]
    if partial:
        assert exactly_once(sink, partial)["losses"] == 0
    else:
        assert not visible

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    fault_stack.settle("diskfull")
    found = exactly_once(sink, files)
    record("sink disk full, then space back", **found, committed_while_full=len(partial))
    assert (found["duplicates"], found["losses"]) == (0, 0), found
    assert reading.dataset(sink.as_uri()).count_rows() == found["expected"]


def test_an_input_that_kills_its_celery_worker_every_time_is_quarantined(
    fault_stack: FaultStack, flights_df, tmp_path: Path
):
    """The worker that dies is the Celery ray worker itself (supervisor restarts it); the
    batch comes back after the visibility timeout, and once its starts have died
    CELERAY_MAX_DELIVERIES times it is quarantined; then the queue moves on."""
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    poison = landing / "zz-poison.csv"
    flights_df.iloc[:300].assign(carrier="XX").to_csv(poison, index=False)
    mod = _module(fault_stack, "driverkiller", f"""
        import os, signal
        import psutil
        import pyarrow.compute as pc

        def kill_driver_on_xx(table):
            if pc.any(pc.equal(table["carrier"], "XX")).as_py():
                for p in psutil.process_iter(["cmdline"]):
                    cmd = " ".join(p.info["cmdline"] or [])
                    try:
                        ours = p.environ().get("CELERAY_HOME") == {str(fault_stack.home)!r}
                    except psutil.Error:
                        continue
                    if ours and "worker -Q ray" in cmd:
                        os.kill(p.pid, signal.SIGKILL)  # the Celery worker driving Ray
            return table
    """)
    fault_stack.add_pipeline("driverpoison", landing, sink, batch_bytes='"256KiB"',
                             transform=f'"{mod}:kill_driver_on_xx"')
    started = time.monotonic()
    fault_stack.trigger("driverpoison")
    fault_stack.settle("driverpoison", timeout=300)  # every listed file committed or not
    took = time.monotonic() - started

    records = [json.loads(p.read_text()) for p in (sink / "_celeray/quarantine").glob("[!.]*.json")]
    assert len(records) == 1, records
    [q] = records
    assert q["url"].endswith("zz-poison.csv") and q["kind"] == "poison", q
    assert "died 3 times" in q["error"], q
    entries = [json.loads(p.read_text()) for p in (sink / "_celeray/ledger").glob("[!.]*.json")]
    assert [e["inputs"] for e in entries] == [[]]  # one entry, committing no file

    # The queue moves on: the next pipeline's run goes through the restarted worker.
    fault_stack.wait_running("worker-ray")
    after, after_sink = tmp_path / "after", tmp_path / "after-lake"
    good = write_landing(flights_df.iloc[:9_000], after, 3)
    fault_stack.add_pipeline("afterpoison", after, after_sink)
    assert _wait_end(fault_stack, fault_stack.trigger("afterpoison"))["state"] == "SUCCESS"
    found = exactly_once(after_sink, good)
    record("poison input (kills its Celery worker)", **found, seconds=round(took, 1))
    assert (found["duplicates"], found["losses"]) == (0, 0), found
