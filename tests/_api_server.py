"""The API as deployed: gunicorn with ``celeray.api.gunicorn_conf``, on a free loopback port.

Redis databases 7 and 8 (the API tests' own) are flushed before and after; the server is
stopped by its pid and process group.
"""

from __future__ import annotations

import contextlib
import http.client
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tests._stack import REDIS_HOST, REDIS_PORT, VENV_BIN, Proc, free_port, signing_env, wait_for

__all__ = ["BROKER_DB", "CONFIG", "STATE_DB", "ApiServer", "api_server", "request"]

BROKER_DB, STATE_DB = 7, 8
CONFIG = "python:celeray.api.gunicorn_conf"  # what supervisor and compose pass to -c
PIPELINES = '[pipelines.flights]\nsource = "landing/*.csv"\nsink = "lake/flights"\n'
LOOPBACK = "127.0.0.1"


@dataclass
class ApiServer:
    """A running API: its port, its token and its process."""

    port: int
    token: str
    proc: Proc

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _flush() -> None:
    for db in (BROKER_DB, STATE_DB):
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()


@contextlib.contextmanager
def api_server(root: Path, env: dict[str, str] | None = None,
               argv: list[str] | None = None, pipelines: str = PIPELINES,
               ) -> Iterator[ApiServer]:  # fmt: skip
    """gunicorn serving the API from ``root`` (home, pipeline file, log ``api.log``).

    ``env`` adds to the server's environment; ``argv`` replaces the server command
    (default: gunicorn with the deployed config): ``--bind ADDRESS:PORT`` is added to it,
    or put where it says ``{bind}`` (another server's way, as waitress's ``--listen={bind}``).
    ``pipelines``: the pipeline file's text (default: one pipeline, ``flights``, no SQL).
    """
    _flush()
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipelines.toml").write_text(pipelines)
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERAY_", "RAY_"))}
    full_env |= {
        "CELERAY_HOME": str(root / "home"),
        "CELERAY_PIPELINES": str(root / "pipelines.toml"),
        "CELERAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}",
        "CELERAY_RESULT_BACKEND": f"redis://{REDIS_HOST}:{REDIS_PORT}/{STATE_DB}",
        **signing_env(),  # the API signs the runs it sends
        **(env or {}),
    }
    command = argv or [str(VENV_BIN / "gunicorn"), "-c", CONFIG, "celeray.api:create_app()"]
    bind = f"{LOOPBACK}:{port}"
    if any("{bind}" in a for a in command):
        command = [a.replace("{bind}", bind) for a in command]
    else:
        command = [*command, "--bind", bind]
    proc = Proc(command, env=full_env, log=root / "api.log", cwd=root)
    try:
        wait_for(lambda: request(port, "GET", "/api/v1/openapi.json")[0] == 401, 60, "the API")
        yield ApiServer(port, (root / "home" / "api_token").read_text(), proc)
    finally:
        proc.stop()
        _flush()
