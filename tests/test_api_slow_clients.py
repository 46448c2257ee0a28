# ruff: noqa: F811 - the fixtures of test_api are imported and then named as arguments
"""The API under its deployed server config (gunicorn, ``celeray/api/gunicorn_conf.py``)
against slow and hostile clients on loopback: slowloris, Host headers, requests gunicorn
refuses itself, and a flood of unauthenticated health calls."""

from __future__ import annotations

import configparser
import contextlib
import json
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from celeray.api import create_app, gunicorn_conf
from celeray.api.gunicorn_worker import error_message
from celeray.api.health import PUBLIC_TTL, PublicAnswer
from tests._api_server import CONFIG, ApiServer, api_server, request
from tests._slowloris import SlowClients, timed_request
from tests.test_api import (  # noqa: F401 - fixtures, used by name
    _no_celeray_environment,
    dbs,
    make_settings,
)

ROOT = Path(__file__).resolve().parent.parent
UUID = "0b7f5a9e-3c1d-4e2f-9a8b-7c6d5e4f3a21"
SLOW_CLIENTS = 32  # 4x the 8 connections 2 workers x 4 threads would have had
SLOW_SECONDS = 10.0
ANSWER_WITHIN = 1.0  # seconds a token holder's call may take while they are open


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with api_server(tmp_path_factory.mktemp("api")) as server:
        yield server


def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


# -- slow clients ---------------------------------------------------------------------------


def test_slow_clients_do_not_delay_a_token_holder(api: ApiServer) -> None:
    """32 sockets each sending one header line every 2 s for 10 s; meanwhile a token
    holder's trigger and run lookup each answer within a second."""
    took: list[float] = []
    with SlowClients(api.port, SLOW_CLIENTS, interval=2.0, seconds=SLOW_SECONDS) as slow:
        time.sleep(2.5)  # every slow client connected and past its first header line
        assert slow.open_now() == SLOW_CLIENTS
        end = time.monotonic() + SLOW_SECONDS - 3.0
        run_id = None
        while time.monotonic() < end:
            t, status, body = timed_request(api.port, "POST", "/api/v1/pipelines/flights/runs",
                                            api.auth, timeout=5)  # fmt: skip
            assert status in (202, 409), (status, body)
            run_id = json.loads(body)["run_id"]
            t2, status, _ = timed_request(api.port, "GET", f"/api/v1/runs/{run_id}", api.auth,
                                          timeout=5)  # fmt: skip
            assert status == 200
            took += [t, t2]
            time.sleep(0.5)
        reopened = slow.closed
    assert len(took) >= 8 and max(took) < ANSWER_WITHIN, took
    # The server dropped the slow ones (a head must arrive within keepalive seconds).
    assert reopened >= SLOW_CLIENTS, reopened


def test_a_health_check_in_progress_holds_no_worker(api: ApiServer) -> None:
    """Token holders' health checks wait about a second on the workers' broadcast; that
    wait is cooperative (kombu and redis-py on gevent's sockets), so triggers answer."""
    with ThreadPoolExecutor(4) as pool:
        checks = [pool.submit(timed_request, api.port, "GET", "/api/v1/health", api.auth)
                  for _ in range(4)]  # fmt: skip
        time.sleep(0.2)
        took = [timed_request(api.port, "POST", "/api/v1/pipelines/flights/runs", api.auth)[0]
                for _ in range(5)]  # fmt: skip
        health = [f.result() for f in checks]
    assert all(status == 503 for _, status, _ in health)  # no Celery workers here
    assert min(t for t, _, _ in health) > 0.5  # the broadcast's wait did happen meanwhile
    assert max(took) < 0.5, took


def test_a_slow_body_to_health_holds_nothing(api: ApiServer) -> None:
    """Health takes no body and reads none: the answer comes without it, and the server
    drops the connection within its keepalive deadline while the body trickles."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
        started = time.monotonic()
        answer = s.recv(65536)
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), answer[:80]
        with contextlib.suppress(OSError):  # a reset when the server has closed is fine too
            while time.monotonic() - started < 10:
                s.sendall(b"x")
                if s.recv(65536) == b"":
                    break
                time.sleep(0.5)
        closed_after = time.monotonic() - started
    assert closed_after < gunicorn_conf.keepalive + 4, closed_after


# -- redirects and the Host header ----------------------------------------------------------

ROUTE_VARIANTS = [
    "/api/v1/pipelines/flights/runs", "/api/v1/pipelines/flights//runs",
    "/api/v1/pipelines/x//runs", "//api/v1/pipelines", "/api/v1//pipelines",
    "/api/v1/pipelines/", "/api/v1/pipelines/flights/runs/", f"/api/v1/runs/{UUID}/",
    f"/api/v1//runs/{UUID}", "/api/v1/health/", "/api/v1//health", "/metrics/",
    "/api/v1/openapi.json/", "/api/v1", "/api/v1/", "/", "/api//v1/health",
]  # fmt: skip
PAGES = {"/"}  # the web pages' (celeray.api.web): without a session, a relative redirect


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_no_answer_names_the_host_header(api: ApiServer, method: str) -> None:
    for path in ROUTE_VARIANTS:
        for headers in ({}, api.auth):
            status, got, body = request(api.port, method, path,
                                        {**headers, "Host": "evil.example"})  # fmt: skip
            if path in PAGES and method != "POST":  # a page: 303 to a path of ours
                assert status == 303 and got["location"].startswith("/login?"), (path, got)
                assert "evil" not in json.dumps(got) and b"evil" not in body, (path, got, body)
                continue
            assert not 300 <= status < 400, (method, path, status, got)
            assert "location" not in got or "evil" not in got["location"], (path, got)
            assert "evil" not in json.dumps(got) and b"evil" not in body, (path, got, body)
            if method != "HEAD":
                assert got["content-type"] == "application/json", (path, got)


def test_a_route_ending_in_a_slash_is_404_not_a_redirect(tmp_path: Path, dbs: Any) -> None:
    """werkzeug would redirect ``/probe`` to ``http://<Host>/probe/``; the API says 404."""
    app = create_app(make_settings(tmp_path))
    app.add_url_rule("/probe/", "probe", lambda: "here")
    client = app.test_client()
    assert client.get("/probe/", headers={"Host": "evil.example"}).status_code == 401
    r = client.get("/probe", headers={"Host": "evil.example"})
    assert r.status_code == 404 and r.is_json and "Location" not in r.headers


# -- gunicorn's own errors ------------------------------------------------------------------

_LONG = "a" * (gunicorn_conf.limit_request_line + 10)
_MANY = "".join(f"X-H{i}: 1\r\n" for i in range(gunicorn_conf.limit_request_fields + 1))
_BIG = "X-Big: " + "a" * (gunicorn_conf.limit_request_field_size + 10) + "\r\n"
GUNICORN_REFUSES = [
    ("bad request line", b"GARBAGE\r\n\r\n", 400),
    ("bad method", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("bad header", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400),
    ("long URI", f"GET /{_LONG} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414),
    ("too many header fields", f"GET / HTTP/1.1\r\nHost: x\r\n{_MANY}\r\n".encode(), 431),
    ("a too large header field", f"GET / HTTP/1.1\r\nHost: x\r\n{_BIG}\r\n".encode(), 431),
]


@pytest.mark.parametrize(("what", "data", "code"), GUNICORN_REFUSES,
                         ids=[w for w, _, _ in GUNICORN_REFUSES])  # fmt: skip
def test_what_gunicorn_refuses_is_json_like_the_apps_errors(
    api: ApiServer, what: str, data: bytes, code: int
) -> None:
    status, headers, body = _raw(api.port, data)
    assert status == code, (what, status, body)
    assert headers["content-type"] == "application/json", (what, headers)
    assert int(headers["content-length"]) == len(body)
    doc = json.loads(body)
    _, app_headers, app_body = request(api.port, "GET", "/api/v1/nope")  # the app's own 404
    assert app_headers["content-type"] == "application/json"
    assert doc.keys() == json.loads(app_body).keys() == {"error"}
    assert isinstance(doc["error"], str) and doc["error"]


def test_gunicorns_500_says_what_the_apps_500_says(tmp_path: Path, dbs: Any) -> None:
    app = create_app(make_settings(tmp_path))

    def broken() -> str:
        raise RuntimeError("boom")

    app.add_url_rule("/broken", "broken", broken)
    app.view_functions["broken"]._celeray_public = True  # type: ignore[attr-defined]
    r = app.test_client().get("/broken")
    assert r.status_code == 500
    assert r.json == {"error": error_message(500, "Internal Server Error", "")}


# -- health without a token -----------------------------------------------------------------


def test_health_without_a_token_is_fast_after_the_first_call(api: ApiServer) -> None:
    """The first anonymous call per process pays the check (~1 s, the broadcast's wait);
    the next ones within PUBLIC_TTL take milliseconds. Two processes: two first calls."""
    time.sleep(PUBLIC_TTL + 0.2)  # what earlier tests' calls left is stale now
    first, status, _ = timed_request(api.port, "GET", "/api/v1/health")
    assert status == 503
    after = []
    for _ in range(12):
        took, status, body = timed_request(api.port, "GET", "/api/v1/health")
        assert status == 503 and json.loads(body)["broker"] == {"ok": True}
        after.append(took)
    slow = [t for t in after if t > 0.3]
    assert len(slow) <= gunicorn_conf.workers - 1, after  # the other process's first call
    assert statistics.median(after) < 0.1, after
    assert first > 0.5  # the check did run once (no workers answer the broadcast)


def test_concurrent_anonymous_callers_share_one_check() -> None:
    calls = []

    def check() -> dict[str, Any]:
        calls.append(1)
        time.sleep(0.3)
        return {"ok": True}

    kept = PublicAnswer(ttl=5.0)
    with ThreadPoolExecutor(10) as pool:
        views = list(pool.map(lambda _: kept.get(check), range(10)))
    assert views == [{"ok": True}] * 10 and len(calls) == 1
    kept.put({"ok": False})  # a token holder's fresh check replaces it
    assert kept.get(check) == {"ok": False} and len(calls) == 1


def test_a_kept_answer_expires() -> None:
    answers = iter([{"ok": True}, {"ok": False}])
    kept = PublicAnswer(ttl=0.2)
    assert kept.get(lambda: next(answers)) == {"ok": True}
    assert kept.get(lambda: next(answers)) == {"ok": True}
    time.sleep(0.25)
    assert kept.get(lambda: next(answers)) == {"ok": False}


# -- one config, everywhere -----------------------------------------------------------------


def test_supervisor_and_compose_run_the_config_module() -> None:
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read(ROOT / "supervisor" / "supervisord.conf")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for command in (conf.get("program:api", "command"), compose["services"]["api"]["command"]):
        words = shlex.split(command)
        assert Path(words[0]).name == "gunicorn" and words[-1] == "celeray.api:create_app()"
        options = words[1:-1]
        assert options[:2] == ["-c", CONFIG], command
        assert [o for o in options[2:] if o.startswith("-")] == ["--bind"], command


def test_the_config_keeps_the_deadline_and_imports_no_app_before_the_fork() -> None:
    assert gunicorn_conf.keepalive > 0  # 0 would also turn off the request-head deadline
    assert gunicorn_conf.worker_class == "celeray.api.gunicorn_worker.JsonErrorGeventWorker"
    # gunicorn's master imports these before forking; gevent patches in the worker after.
    probe = (
        "import sys, celeray.api.gunicorn_conf, celeray.api.gunicorn_worker\n"
        "print(sorted(m for m in ('flask', 'celery', 'kombu', 'redis', 'celeray.api.app')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout  # fmt: skip
    assert out.strip() == "[]"

