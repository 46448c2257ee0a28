"""The stack the fault suite breaks: `celeray up` under supervisord, on a Redis of its own.

With ``CELERAY_TEST_FAULT_BROKER=amqp`` the broker is RabbitMQ instead (a vhost of the
suite's own on the machine's RabbitMQ, deleted at the end); the Redis keeps the results
and run state.

Redis here is a private ``redis-server`` (no persistence) on a free port, started by the
suite, so the suite may kill it and bring it back empty without touching anyone else's.
Everything else is the real stack as users run it: supervisord with the Ray head, the io
and ray workers, beat, Flower and the API, which supervisor restarts when they die.
Limits are short so that a killed worker's message comes back within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import psutil

from celeray import reading
from tests._data import COMPARE_COLUMNS, raw_relation_sql
from tests._stack import VENV_BIN, Proc, free_port, signing_env, wait_for

CONF = Path(__file__).resolve().parents[2] / "supervisor" / "supervisord.conf"
# s: a batch of the suite's pipelines takes under a second, but a poison input's Ray
# retries each start a cold worker (with the pipeline's runtime_env), ~1-2 s on 2 busy cores
TIME_LIMIT = 15
# s: a dead worker's batch comes back this long after it was taken. It must exceed the time
# limit plus a driver's wait for a lost Ray head, which the ray worker bounds to half the
# margin between the two (5 s here; Ray's own 60 s under the default settings).
VISIBILITY = 25
LOCK_TTL = 15  # s: a dead run's lock frees this long after its last renewal
RECONCILE = 5  # s: beat's reconciliation pass finds what a lost Redis forgot
RESULT_EXPIRES = 60  # s: results and run records; the load test waits for them to go


class RedisServer:
    """A redis-server without persistence on ``port``, killed and restarted by pid."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.starts = 0
        self.proc = self._start()

    def _start(self) -> Proc:
        import redis

        from celeray.local_redis import redis_server

        self.starts += 1
        argv = [str(redis_server()), "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.root)]
        proc = Proc(argv, env=dict(os.environ), log=self.root / f"redis-{self.starts}.log",
                    cwd=self.root)
        client = redis.Redis(port=self.port, socket_connect_timeout=2)
        try:
            wait_for(client.ping, 30, f"redis-server on {self.port}")
        finally:
            client.close()
        return proc

    def restart_empty(self) -> None:
        """SIGKILL the server (no save) and start a fresh, empty one on the same port."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.stop()
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.stop()


class FaultStack:
    """A supervised celeray stack in ``root`` with its own Redis; stopped by `celeray down`."""

    def __init__(self, root: Path, **extra: str) -> None:
        from celeray.celeryconfig import make_client
        from celeray.runstate import RunStore
        from celeray.settings import Settings

        self.root = root
        self.home = root / "home"
        self.mods = root / "mods"  # transform modules of the suite's pipelines
        self.mods.mkdir(parents=True, exist_ok=True)
        self.pipelines_file = root / "pipelines.toml"
        self.pipelines_file.write_text("")
        self._pipelines: dict[str, str] = {}
        self.redis = RedisServer(root, free_port())
        # CELERAY_TEST_FAULT_BROKER=amqp: the broker is a vhost of the suite's own on the
        # machine's RabbitMQ (tests/_rabbit.py); results and run state stay on the Redis.
        self.vhost = None
        if os.environ.get("CELERAY_TEST_FAULT_BROKER", "redis") == "amqp":
            from tests import _rabbit

            self.vhost = _rabbit.Vhost("celeray-faults")
        # The test-only kill points (celeray.kill_points): inert until a trial writes the file.
        self.kill_file = root / "kill-point"
        redis_url = f"redis://127.0.0.1:{self.redis.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERAY_", "RAY_"))}
        self.env.update(
            {
                "CELERAY_HOME": str(self.home),
                # Every test's landing and sink lie in its own folder beside the stack's.
                "CELERAY_LOCAL_ROOTS": str(root.parent),
                "CELERAY_PIPELINES": str(self.pipelines_file),
                "CELERAY_BROKER_URL": self.vhost.url if self.vhost else f"{redis_url}/0",
                "CELERAY_RESULT_BACKEND": f"{redis_url}/1",
                "CELERAY_RAY_PORT": str(free_port()),
                "CELERAY_API_PORT": str(free_port()),
                "CELERAY_FLOWER_PORT": str(free_port()),
                "CELERAY_TASK_TIME_LIMIT": str(TIME_LIMIT),
                "CELERAY_VISIBILITY_TIMEOUT": str(VISIBILITY),
                "CELERAY_RUN_LOCK_TTL": str(LOCK_TTL),
                "CELERAY_RECONCILE_INTERVAL": str(RECONCILE),
                "CELERAY_UNIT_BYTES": "256KiB",
                "CELERAY_RESULT_EXPIRES": str(RESULT_EXPIRES),
                "PYTHONPATH": str(self.mods),  # Ray workers inherit it from the head
                "COLUMNS": "200",
                "CELERAY_TESTONLY_KILL_FILE": str(self.kill_file),
                # The session's key pair: this process signs for every stack it starts.
                **signing_env(),
                **extra,
            }
        )
        up = self.celeray("up", timeout=300)
        if up.returncode != 0:
            self.down()
            raise RuntimeError(f"celeray up failed:\n{up.stdout}\n{up.stderr}")
        self.settings = Settings(**{k.removeprefix("CELERAY_").lower(): v
                                    for k, v in self.env.items() if k.startswith("CELERAY_")})
        self.client = make_client(self.settings)
        self.store = RunStore.from_url(self.settings.effective_state_url,
                                       lock_ttl=LOCK_TTL, record_ttl=3600)
        self.api = f"http://127.0.0.1:{self.env['CELERAY_API_PORT']}"

    # -- commands and processes ---------------------------------------------------

    def celeray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The `celeray` command with the stack's environment."""
        return subprocess.run([str(VENV_BIN / "celeray"), *args], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **json.loads((self.home / "stack-env.json").read_text())}
        return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(CONF), *args],
                              env=env, capture_output=True, text=True, timeout=60)

    def program_pid(self, program: str) -> int:
        """The pid supervisor reports for ``program`` (0 while it is not running)."""
        out = self.supervisorctl("pid", program).stdout.strip()
        return int(out) if out.isdigit() else 0

    def wait_running(self, *programs: str, timeout: float = 120) -> None:
        """Until supervisor reports every program RUNNING again (after a kill)."""
        def running() -> bool:
            states = self.supervisorctl("status").stdout
            return all(
                any(line.split()[:2] == [p, "RUNNING"] for line in states.splitlines())
                for p in programs
            )
        wait_for(running, timeout, f"{programs} RUNNING", interval=0.5)

    def ray_processes(self) -> list[psutil.Process]:
        """The Ray worker processes (``ray::...``) under this stack's raylet."""
        head = psutil.Process(self.program_pid("ray-head"))
        return [p for p in head.children(recursive=True)
                if _cmdline(p).startswith("ray::")]

    def log(self, program: str) -> str:
        path = self.home / "logs" / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- pipelines and runs ----------------------------------------------------------

    def add_pipeline(self, name: str, landing: Path, sink: Path, **extra: str) -> None:
        """``[pipelines.NAME]`` from ``landing`` to ``sink`` (plain conversion)."""
        keys = {"source": f'"{landing.as_uri()}/*"', "sink": f'"{sink.as_uri()}"',
                "batch_bytes": '"1MiB"', **extra}
        lines = [*[f"{k} = {v}" for k, v in keys.items()],
                 f"[pipelines.{name}.schema]", 'time_hour = "timestamp[s, tz=UTC]"']
        self._pipelines[name] = f"[pipelines.{name}]\n" + "\n".join(lines) + "\n"
        self.pipelines_file.write_text("\n".join(self._pipelines.values()))

    def trigger(self, name: str) -> str:
        """Start a run over the CLI (as a user would); its run id. When beat's
        reconciliation pass was quicker and started one, that run's id."""
        out = self.celeray("run", name)
        if out.returncode != 0:
            running = re.search(r"already running as run (\S+)", out.stdout + out.stderr)
            if running:
                return running.group(1)
            raise RuntimeError(out.stdout + out.stderr)
        return out.stdout.split("run ", 1)[1].split()[0]

    def settle(self, name: str, timeout: float = 150) -> None:
        """Until every listed input of ``name`` is committed or quarantined and no run of
        it holds the lock, retriggering when nothing is running (what a user would do)."""
        from celeray import storage
        from celeray.ledger import Ledger
        from celeray.pipelines import load_pipelines

        pipeline = load_pipelines(self.pipelines_file,
                                  **self.settings.pipeline_rules(self.pipelines_file))[name]

        def settled() -> bool:
            if self.store.holder(name):
                return False
            done = Ledger(pipeline.sink).done_inputs()
            if all(f.url in done for f in storage.list_source(pipeline.source)):
                return True
            from celeray.errors import RunActiveError
            from celeray.runs import trigger_run

            with contextlib.suppress(RunActiveError):
                trigger_run(name, self.store, self.client, trigger="test")
            return False

        wait_for(settled, timeout, f"pipeline {name} settled", interval=1.0)

    def down(self) -> None:
        if (self.home / "supervisord.pid").exists():
            self.celeray("down", timeout=300)
        self.redis.stop()
        if self.vhost is not None:
            self.vhost.delete()
            self.vhost = None


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def exactly_once(sink: Path, landing: list[Path]) -> dict[str, Any]:
    """Rows expected (from the raw inputs) and found (in the sink), duplicates, losses, and
    whether a per-row checksum (sum of row hashes) matches."""
    table = reading.dataset(sink.as_uri()).to_table()  # the documented reader: every column
    con = duckdb.connect()
    con.register("sink_table", table)
    # A missing tailnum is "" in celeray's CSV reading (pyarrow keeps empty strings) and
    # NULL in DuckDB's and in JSON: compared as NULL on both sides.
    cols = COMPARE_COLUMNS.replace("tailnum", "nullif(tailnum, '') AS tailnum")
    want = f"SELECT {cols}, th FROM ({raw_relation_sql(landing)})"
    got = f"SELECT {cols}, epoch(time_hour) AS th FROM sink_table"
    cols = COMPARE_COLUMNS + ", th"

    def one(sql: str) -> Any:
        row = con.execute(sql).fetchone()
        assert row is not None
        return row[0]

    return {
        "expected": int(one(f"SELECT count(*) FROM ({want})")),
        "found": int(one(f"SELECT count(*) FROM ({got})")),
        "duplicates": int(one(f"SELECT count(*) FROM ({got} EXCEPT ALL {want})")),
        "losses": int(one(f"SELECT count(*) FROM ({want} EXCEPT ALL {got})")),
        "checksum_ok": one(f"SELECT sum(hash({cols})::HUGEINT) FROM ({want})")
        == one(f"SELECT sum(hash({cols})::HUGEINT) FROM ({got})"),
    }


def wait_seconds(seconds: float) -> None:
    """Sleep for a seeded random moment: the *when* of a fault, not a synchronisation."""
    time.sleep(seconds)
