"""``celeray ray-head``: a real ``ray start --head --block`` under the wrapper, no supervisor.

When an agent of the raylet is SIGKILLed, the raylet stops itself with exit code 0 and
``ray start --block`` alone would live on; the wrapper must then stop every process of the
head and exit 3. On SIGTERM (what supervisor sends) it must stop them all and exit 0.
Every process is found as a descendant of the wrapper's pid and killed by pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
from pathlib import Path

import psutil
import pytest

from celeray.ray_head import EXIT_RAYLET_GONE
from tests._stack import VENV_BIN, Proc, _node_ports, alive, free_port, ray_auth_env, wait_for

pytestmark = pytest.mark.stack


def _start(root: Path) -> tuple[Proc, int, list[psutil.Process]]:
    """The wrapper, the raylet's pid it reports, and every process of the head by then."""
    argv = [str(VENV_BIN / "celeray"), "ray-head", "--node-ip-address", "127.0.0.1",
            "--port", str(free_port()), "--num-cpus", "1",
            "--object-store-memory", str(100 * 1024**2), "--include-dashboard", "false",
            "--disable-usage-stats", "--dashboard-port", str(free_port()),
            "--ray-client-server-port", str(free_port()), *_node_ports()]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **ray_auth_env(root)}
    env.pop("RAY_ADDRESS", None)
    proc = Proc(argv, env=env, log=root / "ray-head.log", cwd=root)

    def raylet() -> int:
        if not proc.alive():
            raise AssertionError(f"the wrapper exited:\n{proc.tail()}")
        found = re.search(r"watching the raylet, pid (\d+)", proc.log.read_text())
        return int(found.group(1)) if found else 0

    raylet_pid = wait_for(raylet, 90, f"the raylet watched\n{proc.tail()}")
    # The agents start a moment after the raylet.
    wait_for(lambda: len(_agents(proc.pid)) == 2, 60, "both agents of the raylet")
    return proc, raylet_pid, psutil.Process(proc.pid).children(recursive=True)


def _agents(pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::") and "Agent" in p.cmdline()[0]:
                out.append(p)
    return out


def _temp_dir(proc: Proc) -> Path:
    """The --temp-dir the wrapper made itself (none was given): /tmp/crXXXXXXXX/ray."""
    found = re.search(r"--temp-dir (/tmp/cr\S+/ray)", " ".join(
        psutil.Process(proc.children()[0]).cmdline()))
    assert found, proc.tail()
    return Path(found.group(1))


def _cleanup(proc: Proc, procs: list[psutil.Process]) -> None:
    proc.stop(timeout=45)
    for p in procs:  # a failed test must not leave Ray running: by pid, as they were
        with contextlib.suppress(psutil.Error):
            p.kill()


@pytest.mark.parametrize("agent", ["DashboardAgent", "RuntimeEnvAgent"])
def test_a_dead_agent_stops_the_whole_head(tmp_path: Path, agent: str) -> None:
    proc, raylet_pid, procs = _start(tmp_path)
    try:
        victim = next(p for p in _agents(proc.pid) if agent in p.cmdline()[0])
        os.kill(victim.pid, signal.SIGKILL)
        # After an agent's death the raylet stops itself, 10-30 s later here: then either
        # only the wrapper sees it and exits 3 (after its check and RAYLET_GONE_GRACE), or
        # `ray start --block` notices first and exits 1, which the wrapper passes on.
        code = proc.popen.wait(90)
        assert code in (EXIT_RAYLET_GONE, 1), proc.tail()
        if code == EXIT_RAYLET_GONE:
            assert f"the raylet (pid {raylet_pid}) is gone" in proc.log.read_text()
        assert not alive(procs), f"left running: {alive(procs)}"
    finally:
        _cleanup(proc, procs)


def test_sigterm_stops_every_ray_process_and_exits_0(tmp_path: Path) -> None:
    proc, _, procs = _start(tmp_path)
    try:
        temp = _temp_dir(proc)  # without --temp-dir: one of its own, in a 0700 folder
        assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700 and temp.is_dir()
        os.kill(proc.pid, signal.SIGTERM)  # the wrapper only, as supervisor does
        assert proc.popen.wait(60) == 0, proc.tail()
        assert not alive(procs), f"left running: {alive(procs)}"
        assert not temp.parent.exists()  # removed with the head
    finally:
        _cleanup(proc, procs)
