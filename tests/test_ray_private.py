"""Ray is private: its folders, its ports and its workers' environment (issue 12, rows 5, 10).

The behaviour tests start one real Ray head the way supervisor's ``ray-head`` program does
(``celeray ray-head`` with the stack's options, a private temp dir, token auth, free ports)
with an environment that holds secrets, and drive it the way the ``ray`` worker does
(``tasks._ray.ensure_ray``, the job's runtime_env, a pipeline's task runtime_env). Then:
user ``nobody`` can neither list nor write Ray's session folder nor the unpacked ``ray_jobs``
copy; no process of the head listens on a non-loopback address; and a Ray task's
environment holds no broker URL, password or token, while S3 credentials and token auth work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeray.ray_private import (
    ONE_MACHINE_ENV,
    RayPrivacyError,
    check_temp_dir,
    head_environ,
    is_loopback,
    option_value,
    private_temp_dir,
    remove_private_temp_dir,
    worker_environ,
)
from tests._stack import VENV_BIN, RayHead, ray_auth_env, signing_env

REPO = Path(__file__).resolve().parent.parent

# Secrets the head's environment holds, as `celeray up` hands it the whole environment.
BROKER_PASSWORD = "brokerpw-5f1c2a"
SECRETS = {
    "CELERAY_BROKER_URL": f"redis://:{BROKER_PASSWORD}@127.0.0.1:1/0",
    "CELERAY_RESULT_BACKEND": f"redis://:{BROKER_PASSWORD}@127.0.0.1:1/1",
    "CELERAY_API_TOKEN": "apitoken-93b7e0",
    "CELERAY_FLOWER_PASSWORD": "flowerpw-77aa01",
    "CELERAY_SIGNING_KEY": "/srv/celeray/signing.key",
    "FLOWER_BASIC_AUTH": "admin:flowerpw-77aa01",
    "ORDERS_DB": "postgresql://app:dbpw-c0ffee@db.example/orders",
    "GITHUB_TOKEN": "ghtoken-123456",
}
# What the Ray side needs and must keep.
NEEDED = {
    "AWS_ACCESS_KEY_ID": "celeray-test-key",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0d0d0d",  # botocore's chain: S3 reads on Ray workers
    "CELERAY_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    "CR_PLAIN_SETTING": "kept",
}

# Sockets of the head's process tree that may listen on a non-loopback address, with why.
# Empty: with --node-ip-address 127.0.0.1, celeray ray-head puts Ray in its one-machine mode
# and every port (GCS, raylet, object manager, agents, metrics, Ray Client, workers) binds
# to 127.0.0.1. A head that other hosts join listens on the network: see docs/security.md.
NON_LOOPBACK_ALLOWED: dict[str, str] = {}

DRIVER = r"""
import json, os, sys
import ray
from celeray.ray_env import pipeline_extras
from ray_jobs._runtime_env import task_runtime_env
from tasks._ray import ensure_ray

ensure_ray()  # as the ray worker does: explicit address, token auth, celeray's runtime_env

@ray.remote
def probe():
    import os
    import cr_probe_pkg
    import ray_jobs
    return {"env": dict(os.environ), "ray_jobs": ray_jobs.__file__,
            "pkg": cr_probe_pkg.__file__, "pid": os.getpid()}

extras = pipeline_extras({"transform": "cr_probe_pkg:f",
                          "ray_env": {"pip": [], "env_vars": {"CR_TAG": "from-pipeline"}}})
out = ray.get(probe.options(runtime_env=task_runtime_env(extras)).remote(), timeout=120)
print("RESULT " + json.dumps(out), flush=True)
sys.stdin.read()  # the job (and its worker) lives until the test closes stdin
"""


# -- pure rules --------------------------------------------------------------------------


def test_the_worker_environment_drops_secrets_and_keeps_what_ray_needs() -> None:
    environ = {**SECRETS, **NEEDED, "PATH": "/usr/bin", "HOME": "/root",
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/x/token",
               "CELERAY_LOCAL_ROOTS": "/srv", "CELERAY_HOME": "/srv/home",
               "PYTHONPATH": "/srv/mods", "http_proxy": "http://proxy:3128",
               "HTTPS_PROXY": "http://u:pw@proxy:3128"}
    kept, dropped = worker_environ(environ)
    assert set(dropped) == {*SECRETS, "CELERAY_HOME", "HTTPS_PROXY"}
    assert set(kept) == {*NEEDED, "PATH", "HOME", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH",
                         "CELERAY_LOCAL_ROOTS", "PYTHONPATH", "http_proxy"}


def test_a_loopback_head_is_put_in_rays_one_machine_mode() -> None:
    env, _ = head_environ(["--node-ip-address", "127.0.0.1"], {"PATH": "/bin"})
    assert env[ONE_MACHINE_ENV] == "0"
    env, _ = head_environ(["--node-ip-address=10.0.0.5"], {"PATH": "/bin"})
    assert ONE_MACHINE_ENV not in env
    env, _ = head_environ(["--node-ip-address", "::1"], {ONE_MACHINE_ENV: "1"})
    assert env[ONE_MACHINE_ENV] == "1"  # an explicit choice wins
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("ray-head")
    assert option_value(["--temp-dir", "/a", "--temp-dir=/b"], "--temp-dir") == "/b"


def test_the_private_temp_dir_is_short_and_its_parent_is_0700() -> None:
    temp = private_temp_dir()
    try:
        parent = temp.parent
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700 and parent.stat().st_uid == os.getuid()
        # Ray's deepest unix socket lies ~62 bytes below it; the limit is 107.
        assert len(str(temp)) + 62 < 107
        assert check_temp_dir(temp) == parent
    finally:
        remove_private_temp_dir(temp)
    assert not temp.parent.exists()


def test_a_temp_dir_others_can_enter_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)  # traversable by others: Ray's 0777 folders below would be reachable
    with pytest.raises(RayPrivacyError, match=r"is mode 0755.*chmod 700"):
        check_temp_dir(shared / "ray")
    with pytest.raises(RayPrivacyError, match=r"/tmp, the parent of Ray's --temp-dir"):
        check_temp_dir("/tmp/ray")  # Ray's default folder: /tmp is everyone's
    os.chown(shared, 65534, 65534)  # another user's folder
    shared.chmod(0o700)
    with pytest.raises(RayPrivacyError, match="belongs to uid 65534"):
        check_temp_dir(shared / "ray")
    made = tmp_path / "private"  # a missing parent is made private
    check_temp_dir(made / "ray")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_celeray_ray_head_refuses_a_shared_temp_dir_before_starting_ray(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    out = subprocess.run([str(VENV_BIN / "celeray"), "ray-head", "--port", "1",
                          "--temp-dir", str(shared / "ray")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "is mode 0777" in out.stderr and "started" not in out.stderr, out.stderr
    assert not (shared / "ray").exists()


# -- a real head ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayHead, dict[str, Any]]]:
    """A head started as supervisor does, and what one Ray task of a driver saw."""
    root = tmp_path_factory.mktemp("raypriv")
    pkg = root / "mods" / "cr_probe_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def f(table):\n    return table\n")
    head = RayHead(root, num_cpus=1, extra_env={**SECRETS, **NEEDED})
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERAY_", "RAY_"))}
        env.update({"CELERAY_HOME": str(root / "home"), "CELERAY_RAY_ADDRESS": head.address,
                    "PYTHONPATH": str(root / "mods"), **ray_auth_env(root),
                    **head.driver_env(), **signing_env()})  # the driver imports tasks
        driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, cwd=REPO,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=(root / "driver.log").open("wb"), text=True)
        try:
            line = driver.stdout.readline() if driver.stdout else ""
            while line and not line.startswith("RESULT "):
                line = driver.stdout.readline() if driver.stdout else ""
            assert line, f"{(root / 'driver.log').read_text()[-4000:]}\n{head.proc.tail()}"
            yield head, json.loads(line.removeprefix("RESULT "))
        finally:
            if driver.stdin:
                driver.stdin.close()
            try:
                driver.wait(60)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait(10)
    finally:
        head.stop()


def _as_nobody(code: str) -> dict[str, str]:
    out = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


NOBODY = r"""
import errno, json, os, sys
def attempt(kind, path):
    try:
        if kind == "list":
            os.listdir(path)
        elif kind == "append":
            with open(path, "a") as fh:
                fh.write("\nraise SystemExit('changed by nobody')\n")
        elif kind == "create":
            with open(path, "x") as fh:
                fh.write("changed")
        return "done"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({f"{k} {p}": attempt(k, p) for k, p in TRIES}))
"""


@pytest.mark.stack
def test_another_user_can_neither_list_nor_change_rays_folders(
    probed: tuple[RayHead, dict[str, Any]],
) -> None:
    head, seen = probed
    temp = Path(head.temp_dir)
    task_pkg = Path(seen["pkg"]).parent  # the pipeline's package, uploaded per task
    assert str(task_pkg).startswith(str(temp) + "/session_"), task_pkg
    assert "runtime_resources" in task_pkg.parts, task_pkg
    session = temp / task_pkg.relative_to(temp).parts[0]
    # The job's ray_jobs, unpacked beside it (here the worker imports the editable install's
    # copy first; on a node without celeray it imports this one).
    unpacked = next((session / "runtime_resources").glob("**/ray_jobs/__init__.py"))
    before = hashlib.sha256(unpacked.read_bytes()).hexdigest()
    assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700  # Ray did not widen the parent

    tries = [("list", temp.parent), ("list", temp), ("list", session),
             ("create", session / "evil.py"), ("list", unpacked.parent),
             ("append", unpacked), ("create", unpacked.parent / "evil.py"),
             ("list", task_pkg), ("append", task_pkg / "__init__.py")]
    code = NOBODY.replace("TRIES", repr([(k, str(p)) for k, p in tries]))
    results = _as_nobody(code)
    assert results == {f"{k} {p}": "EACCES" for k, p in tries}, results
    assert hashlib.sha256(unpacked.read_bytes()).hexdigest() == before
    assert not (session / "evil.py").exists() and not (unpacked.parent / "evil.py").exists()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.stack
def test_every_port_of_the_head_is_on_loopback(probed: tuple[RayHead, dict[str, Any]]) -> None:
    head, seen = probed
    listening: list[tuple[str, str, int]] = []
    for proc in _tree(head.proc.pid):
        with contextlib.suppress(psutil.Error):
            name = " ".join(proc.cmdline()[:1])[:60] or proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    listening.append((name, conn.laddr.ip, conn.laddr.port))
    ports = {port for _, _, port in listening}
    assert head.port in ports, listening  # the GCS, found: the listing is the head's
    assert len(listening) >= 8, listening  # GCS, raylet x2, agents, metrics, client...
    worker_pid = seen["pid"]
    assert any(p.pid == worker_pid for p in _tree(head.proc.pid))  # workers counted too

    def loopback(ip: str) -> bool:
        return is_loopback(ip.removeprefix("::ffff:"))

    exposed = {f"{name} {ip}:{port}" for name, ip, port in listening if not loopback(ip)}
    unexplained = {e for e in exposed if not any(a in e for a in NON_LOOPBACK_ALLOWED)}
    assert not unexplained, f"listening beyond loopback: {sorted(unexplained)}"


@pytest.mark.stack
def test_ray_workers_hold_no_broker_url_password_or_token(
    probed: tuple[RayHead, dict[str, Any]],
) -> None:
    head, seen = probed
    env: dict[str, str] = seen["env"]
    for name in SECRETS:
        assert name not in env, name
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN_PATH" in env  # the task ran
    for name, value in NEEDED.items():
        assert env.get(name) == value, name
    assert env.get("CR_TAG") == "from-pipeline"  # the pipeline's ray_env env_vars
    # No process of the head (the raylet, its agents, the workers) holds a secret's value;
    # the wrapper itself does (it is the supervisor's program) and names what it dropped.
    values = [v for k, v in SECRETS.items() if k != "CELERAY_SIGNING_KEY"]
    for proc in _tree(head.proc.pid)[1:]:
        with contextlib.suppress(psutil.Error):
            held = "\n".join(f"{k}={v}" for k, v in proc.environ().items())
            leaked = [v for v in values if v in held]
            assert not leaked, f"{proc.pid} {proc.name()} holds {leaked}"
    log = head.proc.log.read_text(errors="replace")
    assert "not passed on to Ray's processes: " in log and "CELERAY_BROKER_URL" in log
    assert BROKER_PASSWORD not in log
