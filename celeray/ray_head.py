"""``celeray ray-head``: ``ray start --head --block`` that ends when its raylet does.

``ray start --block`` watches the processes it started, but it takes an exit code of 0 or
SIGTERM as a graceful stop and goes on blocking (ray/scripts/scripts.py, the ``--block``
loop). A raylet whose agent (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) dies shuts
itself down *gracefully*, exit code 0, so the command lives on with a GCS and no raylet:
supervisor sees a running program, and every Ray driver on the machine fails to connect
until someone restarts the head. Ray 2.x has no setting to change that.

So this wrapper runs ``ray start --head --block ARGS`` as its child, in a process group of
its own, finds the raylet among that child's processes, and looks every few seconds whether
it still lives (one ``/proc`` read of one pid). When the raylet is gone, or ``ray start``
exits, it stops the whole group (TERM to ``ray start``, which stops what it began; KILL to
whatever of the group is left) and exits non-zero, so that supervisor starts the head again.
SIGTERM or SIGINT (``celeray down``) is passed on the same way, and the exit code is then 0.

Before it starts Ray, it makes the head private (:mod:`celeray.ray_private`): it refuses a
``--temp-dir`` whose parent other users can enter (and, without ``--temp-dir``, makes one in
a new 0700 folder, removed when the head stops), starts ``ray start`` with an environment
without celeray's secrets, and keeps a head on a loopback ``--node-ip-address`` on loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import psutil

from celeray.errors import CelerayError
from celeray.ray_private import (
    check_temp_dir,
    head_environ,
    option_value,
    private_temp_dir,
    remove_private_temp_dir,
)

__all__ = ["EXIT_RAYLET_GONE", "RayHeadError", "raylet_executable", "run_head"]

CHECK_INTERVAL = 2.0  # s: a lost raylet is noticed within this; one pid lookup each time
# s: ray start launches the raylet within ~10 s on a busy machine; without one by then the
# head cannot serve drivers, so it is restarted like a dead one
RAYLET_START_TIMEOUT = 90.0
# s: ray start's own drain of its processes (its SIGTERM handler); below supervisor's
# stopwaitsecs (45) for ray-head, so the wrapper's own KILL of leftovers comes first
STOP_GRACE = 35.0
# s: the same after the raylet died: a head without its raylet serves nobody, and ray start
# heeds SIGTERM only when its --block loop next wakes (up to ~15 s later), to stop the very
# processes the group KILL stops; supervisor starts the head again this much sooner
RAYLET_GONE_GRACE = 5.0
EXIT_RAYLET_GONE = 3  # the raylet died while ray start lived on (or never appeared)
_PR_SET_PDEATHSIG = 1  # prctl(2): signal this process when its parent dies


class RayHeadError(CelerayError):
    """The Ray head cannot be started: no ``ray`` command next to this Python or on PATH."""


def raylet_executable() -> Path:
    """Where the installed Ray keeps its raylet binary (the same path Ray starts)."""
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        raise RayHeadError("Ray is not installed in this Python")
    return Path(spec.origin).parent / "core" / "src" / "ray" / "raylet" / "raylet"


def _ray_command() -> str:
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    if found is None:
        raise RayHeadError(f"no `ray` command next to {sys.executable} or on PATH")
    return found


def _die_with_parent() -> None:
    """In the child before exec: TERM ``ray start`` if this wrapper is killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} celeray ray-head: {message}", file=sys.stderr, flush=True)


def _find_raylet(ray_start: psutil.Process, exe: Path) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        for child in ray_start.children():
            with contextlib.suppress(psutil.Error):
                if Path(child.exe()).resolve() == exe:
                    return child
    return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_group(child: subprocess.Popen[bytes], grace: float) -> None:
    """TERM ``ray start`` (it stops the processes it began), then KILL its whole group."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(grace)
    # The raylet's own children (agents, Ray workers) may outlive it: the group holds them.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    if child.poll() is None:
        child.wait(10)


def run_head(ray_args: list[str]) -> int:
    """Run ``ray start --head --block RAY_ARGS`` until it ends, its raylet ends, or a signal.

    Returns 0 after SIGTERM/SIGINT, :data:`EXIT_RAYLET_GONE` when the raylet died (or never
    started) while ``ray start`` lived, else ``ray start``'s own exit code (1 if it was 0).
    Raises :class:`celeray.ray_private.RayPrivacyError` (before starting anything) when the
    parent of ``--temp-dir`` is not private to this user.
    """
    made = None
    temp_dir = option_value(ray_args, "--temp-dir")
    if temp_dir is None:  # not Ray's shared /tmp/ray: a folder of this head's own
        made = private_temp_dir()
        temp_dir = str(made)
        ray_args = [*ray_args, "--temp-dir", temp_dir]
    try:
        check_temp_dir(temp_dir)
        env, dropped = head_environ(ray_args, os.environ)
        if dropped:  # names only: the values are what must not spread
            _say(f"not passed on to Ray's processes: {', '.join(dropped)}")
        return _run(ray_args, env)
    finally:
        if made is not None:
            remove_private_temp_dir(made)


def _run(ray_args: list[str], env: dict[str, str]) -> int:
    argv = [_ray_command(), "start", "--head", "--block", *ray_args]
    exe = raylet_executable().resolve()  # /proc's exe is the resolved path
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    child = subprocess.Popen(argv, env=env, process_group=0,
                             preexec_fn=_die_with_parent)
    _say(f"started `ray start --head --block` as pid {child.pid} (its own process group)")
    ray_start = psutil.Process(child.pid)
    raylet: psutil.Process | None = None
    started = time.monotonic()
    code: int
    while True:
        if stop_requested:
            _say(f"signal {stop_requested[0]}: stopping the Ray head (pid {child.pid})")
            _stop_group(child, STOP_GRACE)
            return 0
        if (rc := child.poll()) is not None:
            _say(f"`ray start` (pid {child.pid}) exited with {rc}")
            code = rc or 1
            break
        if raylet is None:
            raylet = _find_raylet(ray_start, exe)
            if raylet is not None:
                _say(f"watching the raylet, pid {raylet.pid}")
            elif time.monotonic() - started > RAYLET_START_TIMEOUT:
                _say(f"no raylet after {RAYLET_START_TIMEOUT:.0f}s; stopping the head")
                code = EXIT_RAYLET_GONE
                break
        elif not _alive(raylet):
            _say(f"the raylet (pid {raylet.pid}) is gone while `ray start` lives on (an "
                 "agent of it died?); stopping the head so that it is started again")
            code = EXIT_RAYLET_GONE
            break
        time.sleep(CHECK_INTERVAL)
    _stop_group(child, RAYLET_GONE_GRACE)
    _say(f"the Ray head's process group is stopped; exiting {code}")
    return code
