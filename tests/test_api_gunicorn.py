"""The API as it is served: ``gunicorn "celeray.api:create_app()"``, settings from the
environment, a chunked body over the limit refused by the real server."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests._stack import REDIS_HOST, REDIS_PORT, VENV_BIN, Proc, free_port, signing_env, wait_for

BROKER_DB, STATE_DB = 7, 8


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    """A gunicorn of two workers on a free port; yields (port, token). An indirect
    parameter, a dict, adds to the server's environment."""
    for db in (BROKER_DB, STATE_DB):
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()
    (tmp_path / "pipelines.toml").write_text(
        '[pipelines.flights]\nsource = "landing/*.csv"\nsink = "lake/flights"\n'
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERAY_", "RAY_"))}
    env |= {
        "CELERAY_HOME": str(tmp_path / "home"),
        "CELERAY_PIPELINES": str(tmp_path / "pipelines.toml"),
        "CELERAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}",
        "CELERAY_RESULT_BACKEND": f"redis://{REDIS_HOST}:{REDIS_PORT}/{STATE_DB}",
        **signing_env(),  # the API signs the runs it sends
        **getattr(request, "param", {}),
    }
    argv = [
        str(VENV_BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}",
        "--no-control-socket",  # gunicorn 27's default socket is one per user, not per server
        "celeray.api:create_app()",
    ]  # fmt: skip
    proc = Proc(argv, env=env, log=tmp_path / "gunicorn.log", cwd=tmp_path)
    try:
        wait_for(lambda: _get(port, "/api/v1/openapi.json")[0] == 401, 30, "gunicorn")
        yield port, (tmp_path / "home" / "api_token").read_text()
    finally:
        proc.stop()
        for db in (BROKER_DB, STATE_DB):
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _post_chunked(port: int, path: str, token: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), 4096):
            chunk = body[i : i + 4096]
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_served_by_gunicorn(server: tuple[int, str]) -> None:
    port, token = server
    auth = {"Authorization": f"Bearer {token}"}
    status, body = _get(port, "/api/v1/pipelines", auth)
    assert status == 200 and json.loads(body)["pipelines"][0]["name"] == "flights"
    assert _get(port, "/api/v1/pipelines")[0] == 401
    status, body = _post_chunked(port, "/api/v1/pipelines/flights/runs", token, b"x" * 70_000)
    assert status == 413 and body["error"]
    status, body = _post_chunked(port, "/api/v1/pipelines/flights/runs", token, b"{}")
    assert status == 202 and body["run_id"]
    status, body = _get(port, body["status_url"], auth)
    assert status == 200 and json.loads(body)["state"] == "QUEUED"


@pytest.mark.parametrize("server", [{"CELERAY_API_RATE_LIMIT": "30"}], indirect=True)
def test_the_rate_limit_holds_across_gunicorn_workers(server: tuple[int, str]) -> None:
    """40 requests on fresh connections reach both workers; exactly 30 pass in the minute."""
    port, token = server
    auth = {"Authorization": f"Bearer {token}"}
    codes = [_get(port, "/api/v1/pipelines", auth)[0] for _ in range(40)]
    assert codes[:30] == [200] * 30, codes
    # The window slides: a second or two later, one more request may fit.
    assert codes.count(429) >= 9, codes
