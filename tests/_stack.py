"""Real parts for tests: a Ray head, Celery workers, on free ports and private folders.

Everything started here is stopped here, by the pid (and process group) we started; nothing
is stopped by name. Redis is the one on 127.0.0.1:6379, with database numbers of our own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from celeray.ports import listen_port

VENV_BIN = Path(sys.executable).parent
REDIS_HOST = os.environ.get("CELERAY_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CELERAY_TEST_REDIS_PORT", "6379"))
# Databases of our own on the shared Redis; flushed when a stack starts.
BROKER_DB = int(os.environ.get("CELERAY_TEST_BROKER_DB", "13"))
BACKEND_DB = int(os.environ.get("CELERAY_TEST_BACKEND_DB", "14"))


def free_port() -> int:
    """A TCP port nobody listens on right now, outside the ephemeral range (see
    :mod:`celeray.ports`: a restarted Ray head binds its ports again)."""
    return listen_port()


class ProcessExitedError(RuntimeError):
    """A process the tests started has exited while they waited for it."""


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Proc:
    """A child process in a session of its own, stopped by its pid and process group."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log: Path, cwd: Path) -> None:
        self.argv = argv
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[int]:
        """Pids of the direct children of this process."""
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """TERM the process group we created, then KILL it if it lingers."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # whatever of our group is left
        if self.popen.poll() is None:
            self.popen.wait(10)
        self._fh.close()

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a host dying would (no cleanup)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def ray_auth_env(root: Path) -> dict[str, str]:
    """Token auth for a test's Ray head and its drivers, with a token of the test's own."""
    token = root / "ray_auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


_SIGNING_DIR: Path | None = None


def signing_env() -> dict[str, str]:
    """The test session's signing key pair, made once per process, as settings.

    One pair for every stack a test process talks to: Celery's serializer registry is
    global, so a process signs with one key (see celeray.signing).
    """
    global _SIGNING_DIR
    if _SIGNING_DIR is None:
        import atexit
        import shutil

        from celeray import credentials
        from celeray.settings import Settings

        _SIGNING_DIR = Path(tempfile.mkdtemp(prefix="celeray-test-keys-"))
        atexit.register(shutil.rmtree, _SIGNING_DIR, True)
        credentials.signing_keys(Settings(home=_SIGNING_DIR))
    return {"CELERAY_SIGNING_KEY": str(_SIGNING_DIR / "signing_key.pem"),
            "CELERAY_SIGNING_CERTIFICATE": str(_SIGNING_DIR / "signing_cert.pem")}


def _node_ports() -> list[str]:
    """The ports every Ray node listens on, each a free one (two nodes share this host)."""
    argv: list[str] = []
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
                 "--object-manager-port"):
        argv += [flag, str(free_port())]
    return [*argv, "--min-worker-port", "0", "--max-worker-port", "0"]


class RayHead:
    """``celeray ray-head`` (``ray start --head --block``) on free ports with its own private
    temp dir and auth token, as supervisor's ``ray-head`` program runs it.

    ``one_machine`` (the default) keeps every port on loopback, Ray's one-machine mode, which
    the stack's drivers must share (:func:`stack_env`); without it the head takes the host's
    address, as a head that other nodes join must (:class:`RayNode`).
    """

    def __init__(
        self, root: Path, num_cpus: int = 2, extra_env: dict[str, str] | None = None,
        *, one_machine: bool = True,
    ) -> None:
        from celeray.ray_private import ONE_MACHINE_ENV, private_temp_dir

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.one_machine = one_machine
        # /tmp/crXXXXXXXX/ray: short (unix socket paths), in a folder of mode 0700.
        self.temp_dir = str(private_temp_dir())
        argv = [
            str(VENV_BIN / "celeray"), "ray-head",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--temp-dir", self.temp_dir, "--num-cpus", str(num_cpus),
            "--object-store-memory", str(200 * 1024**2),
            "--include-dashboard", "false", "--dashboard-host", "127.0.0.1",
            "--disable-usage-stats",
            "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            *_node_ports(),
        ]
        # Ray's workers inherit the head's environment (less what celeray ray-head drops):
        # that is how they get, e.g., the S3 endpoint and credentials (never through a plan).
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            **ray_auth_env(root),
            ONE_MACHINE_ENV: "0" if one_machine else "1",
            **(extra_env or {}),
        }
        env.pop("RAY_ADDRESS", None)
        self.proc = Proc(argv, env=env, log=root / "ray-head.log", cwd=root)
        wait_for(self._ready, 90, f"Ray head on {self.address}\n{self.proc.tail()}")

    def _ready(self) -> bool:
        if not self.proc.alive():
            raise ProcessExitedError(f"ray head exited:\n{self.proc.tail()}")
        return "--block" in self.proc.log.read_text(errors="replace")

    def driver_env(self) -> dict[str, str]:
        """What a driver of this head needs in its environment besides the token."""
        from celeray.ray_private import ONE_MACHINE_ENV

        return {ONE_MACHINE_ENV: "0" if self.one_machine else "1"}

    def stop(self) -> None:
        # celeray ray-head drains ray start for up to 35 s before it kills its group.
        self.proc.stop(timeout=45)
        from celeray.ray_private import remove_private_temp_dir

        remove_private_temp_dir(self.temp_dir)


class RedisServer:
    """A private ``redis-server`` on a free port, with a password and optionally TLS.

    The binary is the one ``celeray up`` would run (:func:`celeray.local_redis.redis_server`:
    the PATH's, else the local-redis extra's). Its settings go into a config file (mode
    0600), not onto the command line, so the password is not in ``ps``. With ``tls`` a CA
    and a server certificate for 127.0.0.1 are made with the ``openssl`` CLI in ``root``;
    clients verify against :attr:`ca_file`. A binary built without TLS (the bundled Redis
    6.2 is) skips the test that asked for it.
    """

    def __init__(self, root: Path, *, password: str | None, tls: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.ca_file = root / "ca.crt"
        lines = ["bind 127.0.0.1", f"dir {root}", 'save ""', "appendonly no"]
        if password is not None:  # None: as Redis is by default, open to every local user
            lines.append(f"requirepass {password}")
        if tls:
            self._make_certs(root)
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {root / 'server.crt'}",
                      f"tls-key-file {root / 'server.key'}", f"tls-ca-cert-file {self.ca_file}",
                      "tls-auth-clients no"]  # fmt: skip
        else:
            lines.append(f"port {self.port}")
        conf = root / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        from celeray.local_redis import redis_server

        self.binary = redis_server()
        self.proc = Proc([str(self.binary), str(conf)], env=dict(os.environ),
                         log=root / "redis.log", cwd=root)  # fmt: skip
        wait_for(self._ready, 30, f"{self.binary} on {self.port}")

    def _ready(self) -> bool:
        if not self.proc.alive():
            log = self.proc.tail()
            if self.tls and "tls-port" in log:
                import pytest

                pytest.skip(f"{self.binary} is built without TLS: install a redis-server "
                            "with TLS (Debian's) for this test")  # fmt: skip
            raise ProcessExitedError(f"{self.binary} exited:\n{log}")
        return bool(self.client(0).ping())

    @staticmethod
    def _make_certs(root: Path) -> None:
        def run(*argv: str) -> None:
            subprocess.run(["openssl", *argv], cwd=root, check=True, capture_output=True,
                           timeout=60)  # fmt: skip

        # Python 3.13's default context verifies with VERIFY_X509_STRICT: the CA needs a
        # critical basicConstraints and keyUsage, the server certificate its key ids and usages.
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=celeray-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
        (root / "ext.cnf").write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")

    def url(self, db: int, password: str | None = None) -> str:
        scheme = "rediss" if self.tls else "redis"
        secret = password or self.password
        auth = f":{secret}@" if secret is not None else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        options: dict[str, Any] = {"socket_connect_timeout": 2}
        if self.tls:
            options |= {"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.ca_file)}
        return redis.Redis.from_url(self.url(db), **options)

    def stop(self) -> None:
        self.proc.stop(timeout=10)


class RayNode(RayHead):
    """``ray start --address HEAD --block``: a second node joining ``head``.

    Run from ``bin_dir`` (another virtualenv's ``bin``: that node's Python and packages),
    with the head's auth token, free ports, its own short temp dir, and its working
    directory in ``root`` so nothing of the project is importable from it.
    """

    def __init__(self, root: Path, head: RayHead, *, bin_dir: Path, num_cpus: int = 1,
                 resources: dict[str, float] | None = None, name: str = "node2",
                 extra_env: dict[str, str] | None = None) -> None:
        from celeray.ray_private import ONE_MACHINE_ENV, private_temp_dir

        if head.one_machine:
            raise ValueError("a node joins only a head started with one_machine=False")
        self.address = head.address
        self.one_machine = False
        self.temp_dir = str(private_temp_dir())
        argv = [
            str(bin_dir / "ray"), "start", "--address", head.address, "--block",
            "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir,
            "--num-cpus", str(num_cpus), "--resources", json.dumps(resources or {name: 1}),
            "--object-store-memory", str(100 * 1024**2), "--disable-usage-stats",
            *_node_ports(),
        ]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELERAY_", "VIRTUAL_ENV", "PYTHON")) and k != "RAY_ADDRESS"}
        env.update({"RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bin_dir}:{env.get('PATH', '')}",
                    ONE_MACHINE_ENV: "1", **ray_auth_env(root), **(extra_env or {})})
        cwd = root / name
        cwd.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(argv, env=env, log=root / f"ray-{name}.log", cwd=cwd)
        wait_for(self._ready, 90, f"Ray node {name} joining {head.address}\n{self.proc.tail()}")


def stack_env(
    root: Path, ray_address: str, *, dbs: tuple[int, int] = (BROKER_DB, BACKEND_DB),
    broker_url: str | None = None, **extra: str,
) -> dict[str, str]:
    """The environment of every celeray process of a test stack (broker, backend dbs).

    ``broker_url``: another broker than the Redis database ``dbs[0]`` (a RabbitMQ vhost).
    """
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("CELERAY_") or k == "RAY_ADDRESS":
            del env[k]
    env.update(
        {
            "CELERAY_HOME": str(root / "home"),
            "CELERAY_PIPELINES": str(root / "pipelines.toml"),
            "CELERAY_BROKER_URL": broker_url or f"redis://{REDIS_HOST}:{REDIS_PORT}/{dbs[0]}",
            "CELERAY_RESULT_BACKEND": f"redis://{REDIS_HOST}:{REDIS_PORT}/{dbs[1]}",
            "CELERAY_RAY_ADDRESS": ray_address,
            # Tests land files in their own tmp_path, beside the stack's root: allow them all.
            "CELERAY_LOCAL_ROOTS": str(root.parent),
            # Short limits so a killed worker's message comes back within seconds.
            "CELERAY_TASK_TIME_LIMIT": "20",
            "CELERAY_VISIBILITY_TIMEOUT": "25",
            "CELERAY_RUN_LOCK_TTL": "30",
            # Small units, so the plain csv and jsonl landing files are split into byte
            # ranges and every run also checks the split against DuckDB's reading.
            "CELERAY_UNIT_BYTES": "512KiB",
            # A decompression cap the hostile-input test's bombs reach in a second.
            "CELERAY_MAX_DECOMPRESSED_BYTES": "256MiB",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            **ray_auth_env(root),
            **signing_env(),
        }
    )
    env.update(extra)
    return env


class Worker:
    """A real ``celery -A tasks worker`` process."""

    def __init__(
        self, root: Path, env: dict[str, str], *, queue: str, pool: str, concurrency: int,
        name: str, host: str | None = None,
    ) -> None:
        self.name = f"{name}@{host or socket.gethostname()}"
        argv = [
            str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", queue, "-P", pool,
            "-c", str(concurrency), "-n", self.name, "-l", "INFO",
            "--without-mingle", "--without-gossip",
        ]
        log = root / (f"worker-{name}-{host}.log" if host else f"worker-{name}.log")
        self.proc = Proc(argv, env=env, log=log, cwd=root)

    def wait_ready(self, client: Any, timeout: float = 60) -> None:
        def ready() -> bool:
            if not self.proc.alive():
                raise ProcessExitedError(f"worker {self.name} exited:\n{self.proc.tail()}")
            return bool(client.control.ping(destination=[self.name], timeout=0.5))

        wait_for(ready, timeout, f"worker {self.name}")

    def stop(self) -> None:
        self.proc.stop(timeout=30)


def flush_test_dbs(dbs: tuple[int, int] = (BROKER_DB, BACKEND_DB)) -> None:
    """Empty the Redis databases the tests own."""
    for db in dbs:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()


class Stack:
    """Ray head + an io worker (prefork) + a ray worker (threads), as they run by hand.

    The commands are those of docs/deployment.md, "Running the parts by hand".

    Scale-out variant: ``ray_cpus`` for the head, ``node_bins`` (one virtualenv ``bin`` per
    extra Ray node, each of 1 CPU, joined before the workers start), ``hosts`` (one io and
    one ray worker per name, named ``io@<host>`` / ``ray@<host>``; ``self.io`` and
    ``self.rayw`` are the first host's), ``dbs`` (broker and backend databases, for a stack
    beside the session's), ``worker_env`` (added to the workers' environment only) and
    ``extra_env`` (e.g. the S3 endpoint and credentials), which reaches every process of the
    stack: the Ray head and nodes (and so their workers) and the Celery workers.

    ``broker_url``: the broker, when not the Redis database ``dbs[0]``: a RabbitMQ vhost
    of the caller's, which the caller deletes (results and run state stay on Redis).
    """

    def __init__(
        self, root: Path, *, ray_cpus: int = 2, node_bins: tuple[Path, ...] = (),
        hosts: tuple[str | None, ...] = (None,), dbs: tuple[int, int] = (BROKER_DB, BACKEND_DB),
        worker_env: dict[str, str] | None = None, extra_env: dict[str, str] | None = None,
        broker_url: str | None = None,
    ) -> None:
        from celeray.celeryconfig import make_client
        from celeray.runstate import RunStore
        from celeray.settings import Settings

        self.root = root
        self.dbs = dbs
        (root / "home").mkdir(parents=True, exist_ok=True)
        self.pipelines_file = root / "pipelines.toml"
        self.pipelines_file.write_text("")
        self._pipelines: dict[str, str] = {}
        flush_test_dbs(dbs)
        self.ray = RayHead(root, num_cpus=ray_cpus, extra_env=extra_env,
                           one_machine=not node_bins)
        self.nodes: list[RayNode] = []
        for i, bin_dir in enumerate(node_bins, start=2):
            self.nodes.append(RayNode(root, self.ray, bin_dir=bin_dir, name=f"node{i}",
                                      extra_env=extra_env))
        self.env = stack_env(root, self.ray.address, dbs=dbs, broker_url=broker_url,
                             **{**self.ray.driver_env(), **(extra_env or {})})
        self.worker_env = {**self.env, **(worker_env or {})}
        self.settings = Settings(
            **{
                k.removeprefix("CELERAY_").lower(): v
                for k, v in self.env.items()
                if k.startswith("CELERAY_")
            }
        )
        self.client = make_client(self.settings)
        self.store = RunStore.from_settings(self.settings)
        self.hosts: dict[str | None, dict[str, Worker]] = {}
        for host in hosts:
            self.hosts[host] = {"io": self.start_worker("io", host=host),
                                "ray": self.start_worker("ray", host=host)}
        self.io, self.rayw = self.hosts[hosts[0]]["io"], self.hosts[hosts[0]]["ray"]

    def start_worker(
        self, kind: str, suffix: str = "", host: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Worker:
        """Start an ``io`` or ``ray`` worker with the stack's worker environment (``env``
        laid over), named ``<kind><suffix>@<host>``."""
        wenv = {**self.worker_env, **(env or {})}
        if kind == "io":
            w = Worker(self.root, wenv, queue="io", pool="prefork", concurrency=2,
                       name=f"io{suffix}", host=host)
        else:
            w = Worker(self.root, wenv, queue="ray", pool="threads", concurrency=2,
                       name=f"ray{suffix}", host=host)
        w.wait_ready(self.client)
        return w

    def add_pipeline(self, name: str, body: str) -> None:
        """Add (or replace) ``[pipelines.<name>]`` in the stack's pipeline file."""
        self._pipelines[name] = f"[pipelines.{name}]\n{body.strip()}\n"
        self.pipelines_file.write_text("\n".join(self._pipelines.values()))

    def celeray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run the ``celeray`` command as a user would, with the stack's environment.

        ``run --wait`` without ``--timeout`` gets one a little under ``timeout``: a run
        that never ends then fails the test with the command's own output (and the
        workers' logs, see conftest) instead of a kill by the timeout.
        """
        if "--wait" in args and "--timeout" not in args:
            args = (*args, "--timeout", str(int(max(timeout - 15, timeout * 0.8))))
        return subprocess.run(
            [str(VENV_BIN / "celeray"), *args], env={**self.env, "COLUMNS": "200"},
            cwd=self.root, capture_output=True, text=True, timeout=timeout,
        )

    def wait_run(self, run_id: str, timeout: float = 180) -> Any:
        """The run's final AsyncResult once it has ended."""
        result = self.client.AsyncResult(run_id)
        wait_for(lambda: result.state in ("SUCCESS", "FAILURE"), timeout, f"run {run_id}")
        return result

    def stop(self) -> None:
        workers = {id(w): w for ws in self.hosts.values() for w in ws.values()}
        workers.update({id(self.io): self.io, id(self.rayw): self.rayw})
        for part in workers.values():
            part.stop()
        for node in self.nodes:
            node.stop()
        self.ray.stop()
        self.client.close()
        flush_test_dbs(self.dbs)


UNIT_DB = BACKEND_DB + 1  # 15: the run-state unit tests' own, not shared with the stacks


@contextlib.contextmanager
def unit_store(*, lock_ttl: int) -> Iterator[Any]:
    """A RunStore on an emptied database of the unit tests' own, emptied again after."""
    from celeray.runstate import RunStore

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=UNIT_DB, decode_responses=True)
    client.flushdb()
    try:
        yield RunStore(client, lock_ttl=lock_ttl, record_ttl=60)
    finally:
        client.flushdb()


def alive(procs: list[Any]) -> list[str]:
    """``pid name`` of each of ``procs`` (psutil processes) still running, zombies aside."""
    import psutil

    left = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {p.name()}")
    return left
