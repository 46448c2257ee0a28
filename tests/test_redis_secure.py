"""Redis with a password, and with TLS (``rediss://``), from settings: real redis-servers on
free ports, a real io worker, the CLI and the API, and the whole stack under supervisord.
The password must show up in no log, no output, no error body and no command line."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeray import credentials
from celeray.api import create_app
from celeray.celeryconfig import make_client
from celeray.runstate import RunStore
from celeray.settings import Settings
from tests._data import write_landing
from tests._stack import VENV_BIN, RedisServer, Worker, stack_env, wait_for
from tests.test_stack_up import Up


def _secret() -> str:
    return "pw-" + secrets.token_hex(12)


def _celeray(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "celeray"), *args], env={**env, "COLUMNS": "200"},
                          cwd=cwd, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture(params=["password", "tls"])
def secure_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=_secret(), tls=request.param == "tls")
    try:
        yield server
    finally:
        server.stop()


def _settings(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("CELERAY_").lower(): v
                       for k, v in env.items() if k.startswith("CELERAY_")})  # fmt: skip


def test_worker_cli_and_api_with_a_password_and_tls(
    secure_redis: RedisServer, tmp_path: Path
) -> None:
    """A run of an empty source goes through a real io worker and is finalized; the API
    triggers and reads it; a wrong password fails cleanly. The password is never shown."""
    pw = secure_redis.password
    (tmp_path / "landing").mkdir()
    (tmp_path / "pipelines.toml").write_text(
        '[pipelines.empty]\nsource = "landing/*.csv"\nsink = "lake/empty"\n'
    )
    tls = {"CELERAY_REDIS_TLS_CA_FILE": str(secure_redis.ca_file)} if secure_redis.tls else {}
    env = stack_env(tmp_path, "127.0.0.1:1", CELERAY_BROKER_URL=secure_redis.url(0),
                    CELERAY_RESULT_BACKEND=secure_redis.url(1), **tls)  # fmt: skip
    settings = _settings(env)
    client = make_client(settings)
    worker = Worker(tmp_path, env, queue="io", pool="prefork", concurrency=1, name="io-secure")
    try:
        worker.wait_ready(client)
        cli = _celeray(env, tmp_path, "run", "empty", "--wait", "--timeout", "60")
        assert cli.returncode == 0, cli.stdout + cli.stderr
        run_id = cli.stdout.split("run ", 1)[1].split()[0]
        assert client.AsyncResult(run_id).state == "SUCCESS"
        assert RunStore.from_settings(settings).get(run_id)["state"] == "SUCCESS"

        app = create_app(settings).test_client()
        auth = {"Authorization": f"Bearer {credentials.api_token(settings)}"}
        bodies = [app.post("/api/v1/pipelines/empty/runs", headers=auth)]
        assert bodies[0].status_code == 202, bodies[0].json
        api_run = bodies[0].json["run_id"]
        wait_for(lambda: client.AsyncResult(api_run).state == "SUCCESS", 60, "the API's run")
        bodies += [app.get(f"/api/v1/runs/{api_run}", headers=auth),
                   app.get("/api/v1/pipelines", headers=auth),
                   app.get("/api/v1/health", headers=auth), app.get("/metrics", headers=auth)]
        assert bodies[1].json["state"] == "SUCCESS" and bodies[3].json["broker"]["ok"]
        assert "celeray_broker_up 1.0" in bodies[4].text

        wrong = {**env, "CELERAY_BROKER_URL": secure_redis.url(0, password="wrong-" + pw),
                 "CELERAY_RESULT_BACKEND": secure_redis.url(1, password="wrong-" + pw),
                 "CELERAY_HOME": str(tmp_path / "home")}  # fmt: skip
        failed = _celeray(wrong, tmp_path, "run", "empty")
        assert failed.returncode != 0 and "Redis failed" in failed.stderr, failed.stderr
        assert ":***@127.0.0.1" in failed.stderr and "Traceback" not in failed.stderr
        bad = create_app(_settings(wrong)).test_client()
        bodies += [bad.post("/api/v1/pipelines/empty/runs", headers=auth),
                   bad.get("/api/v1/health", headers=auth)]  # fmt: skip
        assert bodies[-2].status_code >= 500 and bodies[-1].json["broker"]["ok"] is False
        shown = [cli.stdout, cli.stderr, failed.stdout, failed.stderr,
                 *(b.get_data(as_text=True) for b in bodies)]  # fmt: skip
    finally:
        worker.stop()
        client.close()
    shown.append(worker.proc.log.read_text(errors="replace"))
    assert "transport:" in shown[-1] or "ready" in shown[-1]
    for text in shown:
        assert pw not in text, text[:2000]


@pytest.mark.stack
def test_the_whole_stack_on_tls_redis_with_a_password(tmp_path: Path, flights_df: Any) -> None:
    """`celeray up` on rediss:// with a password: a run over HTTP commits its rows; no
    secret is on any command line of the stack, in any log, or in `celeray status`."""
    redis_server = RedisServer(tmp_path / "redis", password=_secret(), tls=True)
    up = Up(tmp_path)
    up.env |= {"CELERAY_BROKER_URL": redis_server.url(0),
               "CELERAY_RESULT_BACKEND": redis_server.url(1),
               "CELERAY_REDIS_TLS_CA_FILE": str(redis_server.ca_file),
               "CELERAY_PIPELINES": str(tmp_path / "pipelines.toml")}  # fmt: skip
    write_landing(flights_df.iloc[:3000], tmp_path / "landing", 3)
    (tmp_path / "pipelines.toml").write_text(
        '[pipelines.flights]\nsource = "landing/*"\nsink = "lake/flights"\n'
    )
    try:
        started = up.celeray("up", timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        code, body = up.http("POST", "/api/v1/pipelines/flights/runs")
        assert code == 202, body

        def finished() -> Any:
            code, doc = up.http("GET", f"/api/v1/runs/{body['run_id']}")
            return doc if code == 200 and doc["state"] in ("SUCCESS", "FAILURE") else None

        doc = wait_for(finished, 180, "the run")
        assert doc["state"] == "SUCCESS" and doc["progress"]["rows_in"] == 3000, doc
        status = up.celeray("status")
        assert status.returncode == 0, status.stdout + status.stderr
        root = psutil.Process(up.supervisord_pid())
        procs = [root, *root.children(recursive=True)]
        argv = [" ".join(p.cmdline()) for p in procs if p.is_running()]
        assert any("flower" in a for a in argv) and any("gunicorn" in a for a in argv)
    finally:
        up.celeray("down", timeout=300)
        redis_server.stop()
    secrets_ = [redis_server.password, up.token, up.env["CELERAY_FLOWER_PASSWORD"]]
    logs = {p.name: p.read_text(errors="replace") for p in (up.home / "logs").glob("*.log")}
    assert {"worker-io.log", "flower.log", "api.log"} <= set(logs)
    shown = {"up": started.stdout + started.stderr, "status": status.stdout + status.stderr,
             **{f"argv {a[:60]}": a for a in argv}, **logs}  # fmt: skip
    for secret in secrets_:
        leaks = [name for name, text in shown.items() if secret in text]
        if secret != redis_server.password:  # `up` prints the token and Flower's password
            leaks = [n for n in leaks if n != "up"]
        assert leaks == [], (secret[:3], leaks)
    stack_env_file = up.home / "stack-env.json"
    assert stack_env_file.stat().st_mode & 0o077 == 0
    assert json.loads(stack_env_file.read_text())["CELERAY_BROKER_URL"].startswith("rediss://")


def test_tls_settings_map_to_celery_and_redis_py(tmp_path: Path) -> None:
    """Pure mapping: rediss:// URLs get verification and the files; redis:// gets none."""
    import ssl

    from celeray.celeryconfig import celery_config
    from celeray.redis_tls import redis_ssl

    s = Settings(home=tmp_path, broker_url="rediss://:p@h:6380/0",
                 result_backend="redis://:p@h:6379/1", redis_tls_ca_file=tmp_path / "ca.crt",
                 redis_tls_cert_file=tmp_path / "c.crt", redis_tls_key_file=tmp_path / "c.key")
    conf = celery_config(s)
    assert conf["broker_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tmp_path / "ca.crt"),
        "ssl_certfile": str(tmp_path / "c.crt"), "ssl_keyfile": str(tmp_path / "c.key"),
    }
    assert "redis_backend_use_ssl" not in conf  # the backend's URL is plain redis://
    assert redis_ssl(s, s.result_backend) == {}
    assert redis_ssl(Settings(), "rediss://h/0") == {"ssl_cert_reqs": "required"}  # system CAs
