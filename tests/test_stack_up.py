"""The whole stack as users run it: `celeray demo` / `up` under supervisord, over HTTP.

One stack for the module, in a temporary home on free ports, with Redis databases of its
own (11, 12) so it never shares queues with the session's test stack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests._data import write_landing
from tests._stack import REDIS_HOST, REDIS_PORT, VENV_BIN, free_port, wait_for

pytestmark = pytest.mark.stack

BROKER_DB, BACKEND_DB = 11, 12
# Every character that broke Flower's auth on its way through supervisord (quotes, which its
# environment= parser mangles) or Flower (a comma, where FLOWER_BASIC_AUTH is split), plus
# supervisord's and the shell's specials; it ends in a quote, which supervisord stripped.
FLOWER_PASSWORD = "pa%(ENV_HOME)s%%s \"w,o\\rd;#=x'"


class Up:
    """A stack started by the `celeray` command in its own home."""

    def __init__(self, root: Path) -> None:
        import redis

        for db in (BROKER_DB, BACKEND_DB):
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()
        self.root = root
        self.home = root / "home"
        self.api_port, self.flower_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CELERAY_", "RAY_"))}
        self.env.update(
            {
                "CELERAY_HOME": str(self.home),
                "CELERAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}",
                "CELERAY_RESULT_BACKEND": f"redis://{REDIS_HOST}:{REDIS_PORT}/{BACKEND_DB}",
                "CELERAY_RAY_PORT": str(free_port()),
                "CELERAY_API_PORT": str(self.api_port),
                "CELERAY_FLOWER_PORT": str(self.flower_port),
                "CELERAY_FLOWER_PASSWORD": FLOWER_PASSWORD,
                "CELERAY_TASK_TIME_LIMIT": "30",
                "COLUMNS": "200",
            }
        )
        self.api = f"http://127.0.0.1:{self.api_port}"

    def celeray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "celeray"), *args], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    @property
    def token(self) -> str:
        return (self.home / "api_token").read_text().strip()

    def http(self, method: str, path: str, *, token: str | None = "", base: str | None = None,
             auth: tuple[str, str] | None = None) -> tuple[int, Any]:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token}"
        if auth:
            import base64

            raw = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {raw}"
        req = urllib.request.Request(f"{base or self.api}{path}", method=method,
                                     headers=headers, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
                return resp.status, json.loads(body) if body[:1] in (b"{", b"[") else body
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body[:1] in (b"{", b"[") else body

    def supervisord_pid(self) -> int:
        return int((self.home / "supervisord.pid").read_text())

    def program_pid(self, program: str) -> int:
        out = subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(Path(__file__).parent.parent /
             "supervisor/supervisord.conf"), "pid", program],
            env={**self.env, **json.loads((self.home / "stack-env.json").read_text())},
            capture_output=True, text=True, timeout=30,
        )
        return int(out.stdout.strip())


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Up, subprocess.CompletedProcess[str]]]:
    up = Up(tmp_path_factory.mktemp("up"))
    result = up.celeray("demo", "--dir", str(up.root / "demo"), timeout=600)
    try:
        yield up, result
    finally:
        if (up.home / "supervisord.pid").exists():
            up.celeray("down", timeout=300)


def test_demo_on_a_clean_home_prints_the_summary(demo) -> None:
    up, result = demo
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in ("336,776 in", "MB/s", "Delta table", "read_delta(", "Flower", up.token,
                     "committed", "left out by the pipeline's sql", "export CELERAY_PIPELINES="):
        assert expected in out, out
    # whole on one line each, however narrow the terminal: the readers and the commands
    assert any("delta_scan(" in line and line.rstrip().endswith("');")
               for line in out.splitlines()), out
    assert any("version=" in line and "read_delta(" in line for line in out.splitlines()), out
    assert any(line.strip().endswith(" down") and " runs flights" in line
               for line in out.splitlines()), out


def test_api_runs_auth_and_conflicts(demo, flights_df) -> None:
    up, _ = demo
    assert up.http("POST", "/api/v1/pipelines/flights/runs", token=None)[0] == 401
    assert up.http("POST", "/api/v1/pipelines/flights/runs", token="wrong")[0] == 401
    assert up.http("POST", "/api/v1/pipelines/nope/runs")[0] == 404
    write_landing(flights_df.iloc[:120_000], up.root / "demo" / "landing", 8, start=100)
    code, body = up.http("POST", "/api/v1/pipelines/flights/runs")
    assert code == 202, body
    run_id = body["run_id"]
    again, conflict = up.http("POST", "/api/v1/pipelines/flights/runs")
    if again == 409:
        assert conflict["run_id"] == run_id
    else:  # the first run had already finished: the answer is a new run, never two at once
        assert again == 202 and conflict["run_id"] != run_id

    def finished() -> Any:
        code, doc = up.http("GET", f"/api/v1/runs/{run_id}")
        return doc if code == 200 and doc["state"] in ("SUCCESS", "FAILURE") else None

    doc = wait_for(finished, 180, f"run {run_id}")
    assert doc["state"] == "SUCCESS", doc
    assert doc["result"]["files_committed"] == 8
    assert doc["progress"]["rows_in"] == 120_000


def test_flower_lists_the_runs_tasks_only_with_credentials(demo) -> None:
    """Flower accepts the configured password literally, and nothing shorter."""
    up, _ = demo
    base = f"http://127.0.0.1:{up.flower_port}"
    password = FLOWER_PASSWORD
    code, _ = up.http("GET", "/api/tasks", token=None, base=base)
    assert code == 401
    for almost in (password.split(",")[0], password.split('"')[0], password.rstrip("'")):
        assert up.http("GET", "/api/tasks", token=None, base=base,
                       auth=("admin", almost))[0] == 401, almost  # fmt: skip
    assert (up.home / "flower_auth.py").stat().st_mode & 0o077 == 0
    assert password not in (up.home / "stack-env.json").read_text()
    code, metrics = up.http("GET", "/metrics", token=None, base=base)
    assert code == 200 and b"flower_events_total" in metrics  # Prometheus metrics are on
    code, tasks = up.http("GET", "/api/tasks", token=None, base=base, auth=("admin", password))
    assert code == 200, tasks
    names = {t["name"] for t in tasks.values()}
    # stage_batch is sent only for sources Ray cannot read in place, commit_batch only for
    # sinks on object stores (transform_batch commits a local one); these are local.
    assert {"tasks.start_run", "tasks.transform_batch"} <= names
    # Flower holds no signing key: what its API sends is unsigned, and the worker refuses it.
    log = up.home / "logs" / "worker-io.log"
    code, sent = up.http("POST", "/api/task/async-apply/tasks.reconcile", token=None,
                         base=base, auth=("admin", password))
    assert code == 200, sent
    wait_for(lambda: sent["task-id"] in log.read_text(errors="replace")
             or "untrusted content of type json" in log.read_text(errors="replace"),
             60, "the io worker to refuse Flower's message")
    assert "untrusted content of type json" in log.read_text(errors="replace")
    assert f"tasks.reconcile[{sent['task-id']}] received" not in log.read_text(errors="replace")


def test_up_refuses_a_home_supervisord_would_split(tmp_path: Path) -> None:
    """supervisord splits commands like a shell: a home with a space is refused up front."""
    from celeray.settings import Settings
    from celeray.stack import StackError, up

    pipelines = tmp_path / "pipelines.toml"
    pipelines.write_text("")
    with pytest.raises(StackError, match="holds a space, quote or backslash"):
        up(Settings(home=tmp_path / "my home", pipelines=pipelines))
    assert not (tmp_path / "my home").exists()  # refused before anything is made


def test_supervisor_restarts_a_killed_io_worker(demo, flights_df) -> None:
    up, _ = demo
    old = up.program_pid("worker-io")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: up.program_pid("worker-io") not in (0, old), 60, "worker-io restarted")
    write_landing(flights_df.iloc[:20_000], up.root / "demo" / "landing", 2, start=200)
    code, body = up.http("POST", "/api/v1/pipelines/flights/runs")
    if code == 409:  # an earlier test's run still holds the lock: follow that one, then ours
        body = {"run_id": body["run_id"]}
    run_id = body["run_id"]

    def finished() -> Any:
        code, doc = up.http("GET", f"/api/v1/runs/{run_id}")
        return doc if code == 200 and doc["state"] in ("SUCCESS", "FAILURE") else None

    assert wait_for(finished, 180, f"run {run_id}")["state"] == "SUCCESS"


def test_property_based_requests_never_get_a_500(demo) -> None:
    """schemathesis generates requests from the shipped OpenAPI document (seeded)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    up, _ = demo
    doc = Path(__file__).resolve().parent.parent / "celeray" / "api" / "openapi.json"
    schema = schemathesis.openapi.from_path(doc)
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case: Any) -> None:
            for headers in ({"Authorization": f"Bearer {up.token}"}, {}):
                response = case.call(base_url=up.api, headers=headers, timeout=30)
                assert response.status_code < 500, (case.method, case.formatted_path,
                                                     response.status_code, response.text)

        no_server_error()
        checked += 1
    assert checked >= 5


def test_a_second_stack_side_by_side_runs_its_own_redis(demo, tmp_path: Path) -> None:
    """While the demo stack runs, a second home with other ports comes up beside it, with
    Redis under supervisor because nothing answers at its broker URL."""
    up = Up(tmp_path)
    port = free_port()
    up.env["CELERAY_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    up.env["CELERAY_RESULT_BACKEND"] = f"redis://127.0.0.1:{port}/1"
    (tmp_path / "pipelines.toml").write_text("")
    up.env["CELERAY_PIPELINES"] = str(tmp_path / "pipelines.toml")
    started = up.celeray("up", timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started under supervisor" in started.stdout
        status = up.celeray("status")
        assert status.returncode == 0, status.stdout  # every program runs, health is 200
        redis_pid = up.program_pid("redis")
        assert psutil.Process(redis_pid).name().startswith("redis")
        # AOF on: a restart keeps the queues (Redis 7 writes a folder, the bundled 6.2 a file)
        assert (up.home / "appendonlydir").exists() or (up.home / "appendonly.aof").exists()
    finally:
        up.celeray("down", timeout=300)
    assert not psutil.pid_exists(redis_pid)
    first, _ = demo
    assert first.celeray("status").returncode == 0  # the first stack never noticed


def test_down_leaves_no_process_alive(demo) -> None:
    up, _ = demo
    root = psutil.Process(up.supervisord_pid())
    pids = [root.pid, *(p.pid for p in root.children(recursive=True))]
    assert len(pids) >= 7
    result = up.celeray("down", timeout=300)
    assert result.returncode == 0, result.stderr
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == [], [psutil.Process(p).cmdline() for p in alive]




def test_a_failed_up_stops_what_it_started(tmp_path: Path) -> None:
    """The API's port is held (bound, not listening: `up`'s check passes, gunicorn's bind
    fails): `up` fails, says so, and leaves no program of its stack running."""
    import socket

    up = Up(tmp_path)
    port = free_port()  # a Redis of its own under supervisor: one more program to stop
    up.env["CELERAY_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    up.env["CELERAY_RESULT_BACKEND"] = f"redis://127.0.0.1:{port}/1"
    (tmp_path / "pipelines.toml").write_text("")
    up.env["CELERAY_PIPELINES"] = str(tmp_path / "pipelines.toml")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", up.api_port))  # no SO_REUSEADDR, no listen()
        started = up.celeray("up", timeout=400)
    finally:
        blocker.close()
    out = started.stdout + started.stderr
    assert started.returncode != 0, out
    assert "failed to start" in out and "api" in out, out
    assert "stopped what it started" in out, out
    pid_file = up.home / "supervisord.pid"
    assert not pid_file.exists() or not psutil.pid_exists(int(pid_file.read_text()))
    saved = json.loads((up.home / "stack-env.json").read_text())
    # Redis (--dir), the workers (-n io-<stack id>@host) and the Ray head (--temp-dir).
    marks = (str(up.home), saved["CELERAY_STACK_ID"], saved["CELERAY_RAY_TEMP_DIR"])
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if any(m in part for m in marks for part in (p.info["cmdline"] or []))]
    assert left == []
