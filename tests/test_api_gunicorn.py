"""The API as it is served: ``gunicorn -c python:celeray.api.gunicorn_conf
"celeray.api:create_app()"``, settings from the environment, a chunked body over the limit
refused by the real server."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests._api_server import PIPELINES, api_server
from tests._api_server import request as api_request
from tests._stack import wait_for

GRACEFUL_TIMEOUT = 30  # s: gunicorn's graceful_timeout (its default), then it kills workers


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    """The API under its deployed gunicorn config on a free port; yields (port, token). An
    indirect parameter, a dict, adds to the server's environment."""
    with api_server(tmp_path, getattr(request, "param", {})) as api:
        yield api.port, api.token


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, _, body = api_request(port, "GET", path, headers)
    return status, body


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


@pytest.mark.parametrize("with_sql", [True, False])
def test_each_api_process_reads_the_pipeline_file_before_its_first_request(
    tmp_path: Path, with_sql: bool
) -> None:
    """A pipeline's ``sql`` is parsed by DuckDB: both gunicorn workers have it loaded before
    any request reads the file, so a user's first trigger does not import it; a file without
    ``sql`` loads no DuckDB. Both have loaded the signing key too. The trigger then works as
    ever."""
    text = PIPELINES + ('sql = "SELECT * FROM input WHERE dep_delay > 0"\n' if with_sql else "")
    with api_server(tmp_path, pipelines=text) as api:
        log = tmp_path / "api.log"
        wait_for(lambda: log.read_text().count("read before the first request: 1 pipeline") == 2,
                 60, "both workers' read of the pipeline file")
        wait_for(lambda: log.read_text().count("signing key loaded before the first") == 2,
                 60, "both workers' signing key")
        workers = psutil.Process(api.proc.pid).children()
        assert len(workers) == 2

        def loaded(pid: int) -> bool:
            return "duckdb" in Path(f"/proc/{pid}/maps").read_text()

        assert [loaded(w.pid) for w in workers] == [with_sql, with_sql]
        status, _, body = api_request(api.port, "POST", "/api/v1/pipelines/flights/runs",
                                      api.auth)
        assert status == 202 and json.loads(body)["run_id"]


@pytest.mark.parametrize("server", [{"CELERAY_API_RATE_LIMIT": "30"}], indirect=True)
def test_the_rate_limit_holds_across_gunicorn_workers(server: tuple[int, str]) -> None:
    """40 requests on fresh connections reach both workers; exactly 30 pass in the minute."""
    port, token = server
    auth = {"Authorization": f"Bearer {token}"}
    codes = [_get(port, "/api/v1/pipelines", auth)[0] for _ in range(40)]
    assert codes[:30] == [200] * 30, codes
    # The window slides: a second or two later, one more request may fit.
    assert codes.count(429) >= 9, codes


def test_an_s3_sink_is_read_by_the_served_api(tmp_path: Path, s3: Any) -> None:
    """A pipeline whose sink is on S3: its quarantine, files and the pages read it through
    the gevent worker (fsspec's loop thread made before gevent's patch)."""
    prefix = f"served-{uuid.uuid4().hex[:8]}"
    with api_server(tmp_path, s3.env) as api:
        (tmp_path / "pipelines.toml").write_text(
            f'[pipelines.ons3]\nsource = "s3://landing/{prefix}/*.csv"\n'
            f'sink = "s3://lake/{prefix}/out"\n'
        )
        auth = {"Authorization": f"Bearer {api.token}"}
        for path in ("/api/v1/pipelines/ons3/quarantine", "/api/v1/pipelines/ons3/files",
                     "/api/v1/pipelines/ons3/runs"):  # fmt: skip
            status, body = _get(api.port, path, auth)
            assert status == 200, (path, body[:300])
        # A stop (supervisor's TERM) ends every worker on its own. Before, the S3 client's
        # SSL context, made on fsspec's loop through asyncio's executor, left a "thread" of
        # that executor for the worker's exit to join, forever: gunicorn killed the worker
        # after its graceful timeout, 30 s into every stop.
        api.proc.stop(timeout=GRACEFUL_TIMEOUT - 10)  # TERM, then KILL if still there
        assert api.proc.popen.returncode == 0, "the API did not stop on TERM"
        log = (tmp_path / "api.log").read_text()
        assert log.count("Worker exiting") == 2 and "Shutting down: Master" in log


def test_polling_a_run_reuses_the_workers_redis_connections(tmp_path: Path) -> None:
    """Every request is a greenlet, which Celery took for a thread of its own: each run poll
    made a result backend and opened a Redis connection (40 polls: 40 connections). Now a
    gunicorn worker opens its state store's and its result backend's on its first request,
    and no more."""
    from celeray.api import gunicorn_conf
    from tests._stack import RedisServer

    server = RedisServer(tmp_path / "redis", password=None)  # counts only the API's clients
    try:
        env = {"CELERAY_BROKER_URL": server.url(0), "CELERAY_RESULT_BACKEND": server.url(1)}
        with api_server(tmp_path / "api", env) as api:
            status, body = _post_chunked(api.port, "/api/v1/pipelines/flights/runs", api.token,
                                         b"{}")  # fmt: skip

            def opened() -> int:
                return int(server.client(0).info("stats")["total_connections_received"])

            assert status == 202, body
            before = opened()
            polls = [_get(api.port, body["status_url"], api.auth)[0] for _ in range(40)]
            assert polls == [200] * 40
            made = opened() - before - 1  # the count's own client is one
            # Which worker answers which request is the kernel's choice: a worker that had
            # no request before the polls opens its two now.
            assert made <= 2 * gunicorn_conf.workers, f"40 polls opened {made} Redis connections"
    finally:
        server.stop()

