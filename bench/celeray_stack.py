"""The celeray stack the suite measures: started by ``celeray up``, or one already up.

Started: as ``tests/test_stack_up.py`` does it, ``celeray up`` with ``CELERAY_HOME`` in a
temporary folder, free ports for the API, Flower and the Ray head, and Redis on
127.0.0.1:6379 (``--redis-port`` picks another) with databases 9 (broker) and 10 (results),
flushed first. ``close`` runs ``celeray down`` for that stack only. Attached
(``--home DIR``): the stack's own settings are read from ``DIR/stack-env.json`` and it is
left running.

The suite's pipelines go into the stack's pipeline file (``CELERAY_PIPELINES``). The API and
the workers read that file at each trigger, so pipelines may be added while the stack runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.datasets import DATA
from celeray.ports import listen_port

__all__ = ["REDIS_PORT", "BenchStack", "StackFailedError"]

VENV_BIN = Path(sys.executable).parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
BROKER_DB, BACKEND_DB = 9, 10
MARK = "# celeray bench pipelines: written by `python -m bench`, rewritten on each run\n"


class StackFailedError(RuntimeError):
    """The stack did not start, or answered the API with an error."""


class BenchStack:
    """A celeray stack, its API and Flower, and the pipeline file the suite writes."""

    def __init__(self, home: Path, env: dict[str, str], *, owned: bool,
                 redis_port: int = REDIS_PORT) -> None:
        self.home = home
        self.redis_port = redis_port
        self.env = env
        self.owned = owned
        self.pipelines_file = Path(env["CELERAY_PIPELINES"])
        self.api = f"http://127.0.0.1:{env['CELERAY_API_PORT']}"
        self.flower = f"http://127.0.0.1:{env['CELERAY_FLOWER_PORT']}"
        self._token: str | None = None

    @classmethod
    def start(cls, root: Path, redis_port: int = REDIS_PORT, data: Path = DATA,
              broker_url: str | None = None,
              pipelines: dict[str, dict[str, Any]] | None = None) -> BenchStack:
        """``celeray up`` in ``root/home`` with the bench's Redis databases and free ports;
        ``data`` (the data sets and the runs' sinks) is one of its local roots.
        ``broker_url``: another broker than Redis db 9 (a RabbitMQ ``amqp://`` URL; its
        vhost should be the bench's alone); results stay in Redis db 10. ``pipelines``:
        the pipeline file the stack starts with, as a deployment's workers start with its
        pipelines (each worker process reads the file once before its first task)."""
        import redis

        for db in (BROKER_DB, BACKEND_DB):
            redis.Redis(host=REDIS_HOST, port=redis_port, db=db).flushdb()
        home = root / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERAY_", "RAY_"))}
        env.update({
            "CELERAY_HOME": str(home),
            "CELERAY_PIPELINES": str(root / "pipelines.toml"),
            # the data sets and their outputs live beside the bench, not in the stack's root
            "CELERAY_LOCAL_ROOTS": os.pathsep.join([str(root), str(data)]),
            "CELERAY_BROKER_URL": broker_url or f"redis://{REDIS_HOST}:{redis_port}/{BROKER_DB}",
            "CELERAY_RESULT_BACKEND": f"redis://{REDIS_HOST}:{redis_port}/{BACKEND_DB}",
            "CELERAY_RAY_PORT": str(listen_port()),
            "CELERAY_API_PORT": str(listen_port()),
            "CELERAY_FLOWER_PORT": str(listen_port()),
            "COLUMNS": "200",
        })
        (root / "pipelines.toml").write_text(_pipeline_text(pipelines or {}))
        stack = cls(home, env, owned=True, redis_port=redis_port)
        done = stack._celeray("up", timeout=600)
        if done.returncode != 0:
            stack._celeray("down", timeout=600)
            raise StackFailedError(f"celeray up failed:\n{done.stdout}\n{done.stderr}")
        stack.env.update(json.loads((home / "stack-env.json").read_text()))
        return stack

    @classmethod
    def attach(cls, home: Path) -> BenchStack:
        """The stack already running for ``home``; its pipeline file must be the bench's."""
        home = home.resolve()
        try:
            saved = json.loads((home / "stack-env.json").read_text())
        except (OSError, ValueError) as exc:
            raise StackFailedError(f"no running stack at {home} (stack-env.json: {exc})") from exc
        env = {**os.environ, **saved}
        stack = cls(home, env, owned=False)
        if stack.supervisord_pid() is None:
            raise StackFailedError(f"the stack at {home} is not running (celeray up)")
        current = stack.pipelines_file.read_text() if stack.pipelines_file.exists() else ""
        if current.strip() and not current.startswith(MARK):
            raise StackFailedError(
                f"{stack.pipelines_file} is not the bench's pipeline file and would be "
                "overwritten; start the stack with CELERAY_PIPELINES pointing to a file "
                "of its own (an empty one will do)"
            )
        return stack

    def _celeray(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "celeray"), *args], env=self.env,
                              cwd=self.home.parent, capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> None:
        """``celeray down`` when this suite started the stack; nothing otherwise."""
        if self.owned and self.supervisord_pid() is not None:
            self._celeray("down", timeout=600)
            import redis

            for db in (BROKER_DB, BACKEND_DB):
                redis.Redis(host=REDIS_HOST, port=self.redis_port, db=db).flushdb()

    def supervisord_pid(self) -> int | None:
        """supervisord's pid, the root of every process of the stack, or None."""
        try:
            pid = int((self.home / "supervisord.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def write_pipelines(self, pipelines: dict[str, dict[str, Any]]) -> None:
        """Write ``[pipelines.<name>]`` tables (string values only) as the pipeline file."""
        tmp = self.pipelines_file.with_suffix(".tmp")
        tmp.write_text(_pipeline_text(pipelines))
        tmp.replace(self.pipelines_file)

    @property
    def token(self) -> str:
        """The API's bearer token."""
        if self._token is None:
            self._token = (self.env.get("CELERAY_API_TOKEN")
                           or (self.home / "api_token").read_text().strip())
        return self._token

    def http(self, method: str, path: str) -> tuple[int, Any]:
        """Call the API with the bearer token; return (status, JSON body)."""
        req = urllib.request.Request(
            f"{self.api}{path}", method=method, data=b"" if method == "POST" else None,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body[:1] == b"{" else {"error": body.decode()}

    def flower_tasks(self) -> dict[str, dict[str, Any]]:
        """Every task Flower has seen (its events: received, started, succeeded ...)."""
        password = ((self.env.get("CELERAY_FLOWER_PASSWORD") or "").strip()
                    or (self.home / "flower_password").read_text().strip())
        pair = f"{self.env.get('CELERAY_FLOWER_USER') or 'admin'}:{password}"
        auth = base64.b64encode(pair.encode()).decode()
        req = urllib.request.Request(f"{self.flower}/api/tasks",
                                     headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return {}


def temp_root() -> Path:
    """A fresh folder for a stack's home and pipeline file (short: Ray's sockets live near)."""
    return Path(tempfile.mkdtemp(prefix="celeray-bench-"))


def _pipeline_text(pipelines: dict[str, dict[str, Any]]) -> str:
    """The bench's pipeline file: its mark, then a ``[pipelines.<name>]`` table each."""
    lines = [MARK]
    for name, keys in pipelines.items():
        lines.append(f"[pipelines.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)
