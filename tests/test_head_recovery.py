"""The head's raylet dies while ``ray start --block`` lives on: the stack repairs itself.

SIGKILL of the head's ``ray::DashboardAgent`` makes its raylet stop itself with exit code 0,
which ``ray start --block`` takes for a graceful stop. ``celeray ray-head`` (the ray-head
program) notices the raylet is gone, stops the head's processes and exits; supervisor starts
the head again; the ray worker connects to the new head; a run of new files commits every
row exactly once; `celeray down` then leaves no Ray process behind. The agent is found as a
descendant of the ray-head program's pid. The stack is the fault suite's (short limits, a
Redis of its own), but the test takes 43-60 s, so it is part of the default suite.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeray import credentials
from tests._data import write_landing
from tests._stack import alive, wait_for
from tests.faults._faultstack import FaultStack, exactly_once

pytestmark = pytest.mark.stack

RESTART_WITHIN = 60  # s: notice (2 s) + ray start's drain + a cold head + startsecs (10 s)
# s: the ray worker sees its raylet gone (~10 s), stops warm (<= 30 s), starts and connects;
# health asks Ray through it
RAY_OK_WITHIN = 120


def _health(stack: FaultStack) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{stack.api}/api/v1/health",
        headers={"Authorization": f"Bearer {credentials.api_token(stack.settings)}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:  # 503: some part is down, the body says which
        return dict(json.loads(exc.read()))


def test_dead_head_agent_restarts_the_head(flights_df, tmp_path: Path) -> None:
    # Ray's own wait for a lost GCS as under the default settings (the fault stack bounds it
    # to 5 s): the new head is back well within it, so Ray never ends the stale driver
    # itself, and the ray worker's watch of its raylet must. No batch is in flight at the
    # kill, so a wait longer than the visibility timeout's margin does no harm here.
    fault_stack = FaultStack(tmp_path / "stack", RAY_gcs_rpc_server_reconnect_timeout_s="60")
    try:
        _break_and_recover(fault_stack, flights_df, tmp_path)
        survivors = psutil.Process(fault_stack.program_pid("ray-head")).children(recursive=True)
    finally:
        fault_stack.down()
    assert not alive(survivors), f"celeray down left {alive(survivors)}"


def _break_and_recover(fault_stack: FaultStack, flights_df: Any, tmp_path: Path) -> None:
    landing, sink = tmp_path / "landing", tmp_path / "lake"
    name = "head_agent_killed"
    fault_stack.add_pipeline(name, landing, sink)
    first = write_landing(flights_df.iloc[:30_000], landing, 6)
    fault_stack.trigger(name)
    fault_stack.settle(name)
    assert exactly_once(sink, first)["duplicates"] == 0

    ray_worker = fault_stack.program_pid("worker-ray")
    wrapper = psutil.Process(fault_stack.program_pid("ray-head"))
    head_procs = wrapper.children(recursive=True)
    agents = [p for p in head_procs if p.cmdline()[:1] == ["ray::DashboardAgent"]]
    assert len(agents) == 1, [p.cmdline()[:1] for p in head_procs]
    killed = time.monotonic()
    os.kill(agents[0].pid, signal.SIGKILL)

    # supervisor starts a new ray-head program: a new pid, RUNNING (after its startsecs).
    def restarted() -> bool:
        pid = fault_stack.program_pid("ray-head")
        states = fault_stack.supervisorctl("status", "ray-head").stdout
        return pid not in (0, wrapper.pid) and "RUNNING" in states

    wait_for(restarted, RESTART_WITHIN, "ray-head restarted", interval=0.5)
    restart_s = time.monotonic() - killed
    assert not alive(head_procs), f"the old head left {alive(head_procs)}"
    log = fault_stack.log("ray-head")
    assert "is gone while `ray start` lives on" in log or "exited unexpectedly" in log, log[-3000:]

    # The ray worker's driver, attached to the dead raylet, is replaced by itself: nothing
    # (no health check, no batch) has to touch Ray first. Its watch of the raylet stops it.
    wait_for(lambda: fault_stack.program_pid("worker-ray") not in (0, ray_worker),
             RAY_OK_WITHIN, "the ray worker restarted", interval=0.5)
    worker_log = fault_stack.log("worker-ray")
    assert "is gone: stopping this worker" in worker_log, worker_log[-3000:]
    worker_s = time.monotonic() - killed
    wait_for(lambda: _health(fault_stack)["ray"]["ok"], RAY_OK_WITHIN, "health: Ray ok",
             interval=2)
    ray_ok_s = time.monotonic() - killed
    fault_stack.wait_running("worker-ray", "worker-io")

    second = write_landing(flights_df.iloc[30_000:60_000], landing, 6, start=6)
    fault_stack.trigger(name)
    fault_stack.settle(name, timeout=300)
    found = exactly_once(sink, first + second)
    print(f"after the kill: head restarted {restart_s:.1f}s, ray worker restarted "
          f"{worker_s:.1f}s, Ray ok in health {ray_ok_s:.1f}s")
    assert (found["duplicates"], found["losses"]) == (0, 0), found
    assert found["expected"] == found["found"] and found["checksum_ok"], found
