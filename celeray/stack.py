"""The whole stack under supervisord: ``celeray up``, ``status`` and ``down``.

``up`` fills the environment that ``supervisor/supervisord.conf`` expands, makes the
secrets that are missing (API token, Flower password, the key pair that signs task
messages), writes that conf into ``$CELERAY_HOME`` (read from the installed package with
:mod:`importlib.resources`, so an installed wheel works from any folder), starts supervisord
for the home, and waits until every program runs and the API answers. Everything it starts
lives under supervisord's pid, which ``down`` stops and waits for; so does an ``up`` that
fails after starting it. When it starts Redis too, :mod:`celeray.local_redis` says which
``redis-server``: for the broker, or with a RabbitMQ broker (which ``up`` never starts) for
the result backend and run state, which stay on Redis.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celeray.broker import is_amqp
from celeray.errors import CelerayError
from celeray.ports import listen_port
from celeray.settings import Settings, redact_url

__all__ = ["StackError", "StackInfo", "conf_text", "down", "program_states", "status", "up"]

# The repository's supervisor/supervisord.conf, shipped in the wheel as package data
# (celeray/supervisord.conf links to it in a checkout); `up` copies it into the home, where
# supervisord and every later supervisorctl read it.
CONF = "supervisord.conf"
FLOWER_CONF = "flower_auth.py"  # in the home; supervisord.conf's flower program reads it
# supervisord splits each command like a shell: these would cut a path into several words.
_SPLITS = frozenset(" \t\n\r\"'\\")
START_TIMEOUT = 120.0  # a cold Ray head takes ~10 s; first imports of Ray/pyarrow add more
STOP_MARGIN = 60  # supervisord's own wait beyond the workers' stopwaitsecs
# Nothing exits while a healthy stack starts; a program started more often than this
# during `up` exits each time (a taken port, a bad setting) and fails the start.
MAX_STARTS = 2


class StackError(CelerayError):
    """The stack could not be started, queried or stopped; the message says which part."""


@dataclass
class StackInfo:
    """What ``up`` started: addresses and where the logs are."""

    home: Path
    api_url: str
    flower_url: str
    ray_address: str
    redis_supervised: bool
    logs: Path
    redis_server: Path | None = None  # the binary supervisor runs, when it runs Redis


def conf_text() -> str:
    """The stack's supervisord.conf as the installed package ships it."""
    return files("celeray").joinpath(CONF).read_text(encoding="utf-8")


def _conf(home: Path) -> Path:
    """The home's copy of the conf (written by ``up``; again here for an older home)."""
    path = home / CONF
    if home.is_dir() and not path.exists():
        path.write_text(conf_text(), encoding="utf-8")
    return path


def _bin() -> Path:
    return Path(sys.executable).parent


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _local_redis_port(url: str) -> int | None:
    """The port of a Redis URL on this machine, or None when it names another host."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.hostname not in ("127.0.0.1", "localhost"):
        return None
    return parts.port or 6379


def _redis_to_supervise(settings: Settings) -> str:
    """The Redis URL ``up`` may start a Redis for: the broker's, or with a RabbitMQ broker
    the result backend's (results and run state stay on Redis). RabbitMQ itself is never
    started by ``up``: it is a service of its own (see docs/brokers.md)."""
    return settings.result_backend if is_amqp(settings.broker_url) else settings.broker_url


def _check_amqp_broker(settings: Settings) -> None:
    """Refuse to start when nothing answers at a RabbitMQ broker's address."""
    if not is_amqp(settings.broker_url):
        return
    parts = urlsplit(settings.broker_url)
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    if not _answers(host, port, timeout=2.0):
        raise StackError(
            f"nothing answers at the RabbitMQ broker {redact_url(settings.broker_url)}; "
            "celeray up does not start RabbitMQ: start it first (docs/brokers.md)"
        )


def _pid(home: Path) -> int | None:
    try:
        pid = int((home / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _stack_id(home: Path, api_port: int) -> str:
    """The stack's name in supervisorctl and in its workers' node names (``io-<id>@host``).

    Only letters, digits, ``_``, ``.`` and ``-`` of the home's name are kept: the id goes
    into commands (split like a shell) and Celery node names (where ``%h`` expands).
    """
    name = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in home.name)
    return name.strip(".") + f"-{api_port}"


def _check_paths(*paths: tuple[str, Path]) -> None:
    """Refuse a path (the home, the virtualenv, redis-server) that supervisord would split
    into several words."""
    for what, path in paths:
        if _SPLITS & set(str(path)):
            raise StackError(
                f"{what} ({str(path)!r}) holds a space, quote or backslash: supervisord "
                "splits program commands like a shell, so celeray up needs a path without them"
            )


def _check_own_modules(home: Path) -> None:
    """Refuse to start when a program would import someone else's ``tasks``, ``ray_jobs``...

    The programs run in ``home`` from the virtualenv's ``bin``: Celery searches the first
    for the ``-A`` app, Ray's workers search both before their shipped code
    (:mod:`celeray.toplevel`). A user's ``tasks.py`` there or on ``PYTHONPATH`` would run
    instead of celeray's, and none of celeray's own checks with it.
    """
    from celeray import toplevel

    try:
        toplevel.check(toplevel.ALL, first=[home, _bin()])
    except toplevel.ShadowedModuleError as exc:
        raise StackError(f"the stack would not run celeray's own code: {exc}") from None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _write_flower_conf(settings: Settings, home: Path) -> None:
    """Flower's basic auth (and RabbitMQ's management API, when set) as the Tornado config
    file its ``--conf`` reads (mode 0600).

    The file is Python: one list holding ``repr`` of ``user:password``, so any password is
    read back literally. Neither supervisord's ``environment=`` (its parser ends a value at a
    ``"`` and strips quotes from its ends) nor ``FLOWER_BASIC_AUTH`` (Flower splits it at
    every ``,``, which would make the part before a comma a valid password) can carry one.
    """
    from celeray import credentials

    pair = f"{settings.flower_user}:{credentials.flower_password(settings)}"
    text = f"# Written by `celeray up`: Flower's basic auth (--conf).\nbasic_auth = [{pair!r}]\n"
    if settings.broker_api_url is not None:  # RabbitMQ's management API, with its password
        text += f"broker_api = {settings.broker_api_url.get_secret_value()!r}\n"
    _write_private(home / FLOWER_CONF, text)


def _environment(settings: Settings, home: Path) -> tuple[dict[str, str], StackInfo]:
    from celeray import credentials

    redis_url = _redis_to_supervise(settings)
    redis_port = _local_redis_port(redis_url)
    supervise_redis = redis_port is not None and not _answers("127.0.0.1", redis_port)
    parts = urlsplit(redis_url)
    what = "the result backend's" if is_amqp(settings.broker_url) else "the broker's"
    if supervise_redis and (parts.scheme == "rediss" or parts.password is not None):
        raise StackError(
            f"nothing answers at {what} port {redis_port}; celeray up starts a Redis "
            "only for a plain redis:// URL without a password: start yours (with its "
            "password / TLS) first"
        )
    from celeray.local_redis import redis_server

    server = redis_server() if supervise_redis else None
    if server is not None:
        _check_paths(("redis-server", server))
    from celeray.ray_private import ONE_MACHINE_ENV, private_temp_dir

    # /tmp/crXXXXXXXX/ray: Ray makes its folders 0777, the parent (0700) keeps others out
    ray_temp = str(private_temp_dir())
    env = dict(os.environ)
    env.update(
        {
            "CELERAY_HOME": str(home),
            "CELERAY_PIPELINES": str(settings.pipelines.resolve()),
            "CELERAY_BIN": str(_bin()),
            "CELERAY_STACK_ID": _stack_id(home, settings.api_port),
            "CELERAY_REDIS_PORT": str(redis_port or 6379),
            "CELERAY_SUPERVISE_REDIS": "true" if supervise_redis else "false",
            # the conf expands it in every case; it runs only when supervised
            "CELERAY_REDIS_SERVER": str(server or "redis-server"),
            "CELERAY_RAY_ADDRESS": settings.effective_ray_address,
            "CELERAY_RAY_TEMP_DIR": ray_temp,
            "CELERAY_IO_CONCURRENCY": str(max(2, os.cpu_count() or 2)),
            "CELERAY_RAY_CONCURRENCY": "2",
            "CELERAY_STOP_WAIT": str(settings.task_time_limit + 30),
            "CELERAY_API_ADDRESS": "127.0.0.1",
            "CELERAY_API_PORT": str(settings.api_port),
            "CELERAY_FLOWER_ADDRESS": "127.0.0.1",
            "CELERAY_FLOWER_PORT": str(settings.flower_port),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(credentials.ray_auth_token_path(settings)),
            "RAY_USAGE_STATS_ENABLED": "0",
            # The head is on 127.0.0.1: Ray's one-machine mode keeps its ports on loopback,
            # and its drivers (the ray worker) must be in the same mode to find it.
            ONE_MACHINE_ENV: "0",
        }
    )
    env["CELERAY_RAY_PORT"] = env["CELERAY_RAY_ADDRESS"].rsplit(":", 1)[1]
    if settings.local_roots:  # programs run in the home: relative roots must not move
        env["CELERAY_LOCAL_ROOTS"] = os.pathsep.join(settings.local_roots_for())
    for name in ("DASHBOARD", "AGENT", "AGENT_GRPC", "RUNTIME_ENV", "METRICS", "CLIENT"):
        env[f"CELERAY_RAY_{name}_PORT"] = str(listen_port())
    info = StackInfo(
        home=home,
        api_url=f"http://127.0.0.1:{settings.api_port}",
        flower_url=f"http://127.0.0.1:{settings.flower_port}",
        ray_address=settings.effective_ray_address,
        redis_supervised=supervise_redis,
        logs=home / "logs",
        redis_server=server,
    )
    return env, info


def _ctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_bin() / "supervisorctl"), "-c", str(_conf(home)), *args],
        env={**os.environ, **_stack_env(home), "CELERAY_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=STOP_MARGIN,
    )


def _stack_env(home: Path) -> dict[str, str]:
    """The environment ``up`` started the stack with (supervisorctl expands it too)."""
    try:
        return dict(json.loads((home / "stack-env.json").read_text()))
    except (OSError, ValueError):
        return {}


def program_states(home: Path) -> dict[str, str]:
    """Each supervised program and its state (RUNNING, STARTING, BACKOFF, ...)."""
    return {name: state for name, (state, _) in _program_status(home).items()}


def _program_status(home: Path) -> dict[str, tuple[str, int | None]]:
    """Each supervised program's state and, while it runs, its pid."""
    out = _ctl(home, "status")
    status: dict[str, tuple[str, int | None]] = {}
    for line in out.stdout.splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 2 and parts[1].isupper():
            pid = parts[3] if len(parts) >= 4 and parts[2] == "pid" else ""
            status[parts[0]] = (parts[1], int(pid) if pid.isdigit() else None)
    return status


def _health(api_url: str, token: str) -> tuple[int, dict[str, Any]]:
    """The health answer, with the token so that it has the details."""
    req = urllib.request.Request(f"{api_url}/api/v1/health",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def up(settings: Settings, timeout: float = START_TIMEOUT) -> StackInfo:
    """Start the stack for ``settings.home`` and wait until it is healthy."""
    home = settings.home.resolve()
    _check_paths(("CELERAY_HOME", home), ("the virtualenv", _bin()))
    _check_own_modules(home)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    if _pid(home) is not None:
        raise StackError(f"a stack is already running for {home} (celeray status / down)")
    if not settings.pipelines.exists():
        raise StackError(
            f"no pipeline file at {settings.pipelines.resolve()}; set CELERAY_PIPELINES "
            "or run `celeray demo`"
        )
    for port, what in ((settings.api_port, "CELERAY_API_PORT"),
                       (settings.flower_port, "CELERAY_FLOWER_PORT")):
        if _answers("127.0.0.1", port):
            raise StackError(f"port {port} ({what}) is taken; choose another")
    _check_amqp_broker(settings)
    env, info = _environment(settings, home)
    from celeray import credentials

    token = credentials.api_token(settings)  # the same the API reads: it gets it from env/home
    _write_flower_conf(settings, home)
    # Workers, beat and the API sign task messages with this pair (Flower runs without it);
    # made on first start, like the token. A pair that cannot sign stops `up` here.
    credentials.signing_keys(settings)
    from celeray import signing

    signing.check(signing.key_material(settings))
    expanded = {k: v for k, v in env.items() if k.startswith(("CELERAY_", "RAY_"))}
    # It holds the broker URL (a password, maybe): only the owner may ever read it.
    _write_private(home / "stack-env.json", json.dumps(expanded))
    (home / CONF).write_text(conf_text(), encoding="utf-8")  # this celeray's, not an older one
    started = subprocess.run(
        [str(_bin() / "supervisord"), "-c", str(home / CONF)],
        env=env, capture_output=True, text=True, timeout=30,
    )
    if started.returncode != 0:
        raise StackError(f"supervisord did not start: {started.stderr or started.stdout}")
    try:
        _wait_healthy(home, info, token, timeout)
    except StackError as exc:
        # Leave nothing running behind a failed start: stop what this call started.
        raise StackError(f"{exc}; {_stop_started(settings, home)}") from None
    return info


def _wait_healthy(home: Path, info: StackInfo, token: str, timeout: float) -> None:
    """Until every program runs and health answers 200; StackError on a failed program or
    at ``timeout``."""
    deadline = time.monotonic() + timeout
    wanted = {"ray-head", "worker-io", "worker-ray", "beat", "flower", "api"}
    if info.redis_supervised:
        wanted.add("redis")
    code = 0
    pids: dict[str, set[int]] = {}  # each program's pids seen: a new one is a restart
    while time.monotonic() < deadline:
        status = _program_status(home)
        failed = {p: s for p, (s, _) in status.items() if s in ("FATAL", "BACKOFF")}
        for name, (_, pid) in status.items():
            if pid is not None:
                pids.setdefault(name, set()).add(pid)
        # A program that runs past startsecs and then exits is restarted without end and
        # never becomes FATAL (gunicorn retries a taken port for 5 s): count its starts.
        looping = {p: f"started {len(seen)} times" for p, seen in pids.items()
                   if len(seen) > MAX_STARTS}
        if failed or looping:
            raise StackError(f"programs failed to start: {failed | looping}; see {info.logs}")
        if all(status.get(p, ("", None))[0] == "RUNNING" for p in wanted):
            code, _ = _health(info.api_url, token)
            if code == 200:
                return
        time.sleep(0.5)
    _, body = _health(info.api_url, token)
    raise StackError(
        f"the stack did not become healthy within {timeout:.0f}s (last health {code}: "
        f"{json.dumps(body)[:500]}); see {info.logs}"
    )


def _stop_started(settings: Settings, home: Path) -> str:
    """Stop the supervisord a failed ``up`` started and say so (or why it could not)."""
    pid = _pid(home)
    if pid is None:
        return "supervisord had already exited"
    try:
        down(settings)
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        return f"stopping supervisord (pid {pid}) failed too: {exc}; stop it by that pid"
    return f"stopped what it started (supervisord pid {pid} and its programs)"


def status(settings: Settings) -> tuple[dict[str, str], int, dict[str, Any]]:
    """Program states and the API's health answer (status code, body)."""
    home = settings.home.resolve()
    if _pid(home) is None:
        return {}, 0, {}
    from celeray import credentials

    token = credentials.api_token(settings)
    code, body = _health(f"http://127.0.0.1:{settings.api_port}", token)
    return program_states(home), code, body


def down(settings: Settings) -> bool:
    """Stop the stack gracefully and wait for supervisord to exit; False if none ran."""
    home = settings.home.resolve()
    pid = _pid(home)
    if pid is None:
        return False
    _ctl(home, "shutdown")
    deadline = time.monotonic() + settings.task_time_limit + STOP_MARGIN
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise StackError(f"supervisord (pid {pid}) is still running after shutdown")
    ray_temp = _stack_env(home).get("CELERAY_RAY_TEMP_DIR")
    if ray_temp:
        from celeray.ray_private import remove_private_temp_dir

        remove_private_temp_dir(ray_temp)
    return True
