"""The HTTP API against the real Redis (broker db 7, backend and state db 8), no workers.

A trigger really sends ``tasks.start_run`` to the broker; with no worker it stays QUEUED.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from kombu.serialization import loads

from celeray import credentials
from celeray.api import create_app
from celeray.api._auth import PAGES
from celeray.api._ratelimit import KEY_PREFIX
from celeray.api._runview import view_of
from celeray.celeryconfig import make_client
from celeray.errors import RunFailedError
from celeray.run_record import progress_of
from celeray.runstate import RunStore
from celeray.settings import Settings
from tests._stack import REDIS_HOST, REDIS_PORT, free_port, signing_env

BROKER_DB, STATE_DB = 7, 8
PIPELINES = """
[pipelines.flights]
source = "landing/flights/*.csv"
sink = "lake/flights"
schedule = "*/5 * * * *"

[pipelines.weather]
source = "landing/weather/*.jsonl"
sink = "lake/weather"
format = "jsonl"
schedule = 300
"""
UUID = "0b7f5a9e-3c1d-4e2f-9a8b-7c6d5e4f3a21"


@pytest.fixture(autouse=True)
def _no_celeray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test alone, whatever CELERAY_* the shell exports."""
    for name in list(os.environ):
        if name.startswith("CELERAY_") or name == "RAY_ADDRESS":
            monkeypatch.delenv(name)


def _url(db: int, port: int = REDIS_PORT) -> str:
    return f"redis://{REDIS_HOST}:{port}/{db}"


@pytest.fixture
def dbs() -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """The broker's and the state's databases, empty before and after each test."""
    broker = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=BROKER_DB, decode_responses=True)
    state = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=STATE_DB, decode_responses=True)
    for r in (broker, state):
        r.flushdb()
    yield broker, state
    for r in (broker, state):
        r.flushdb()


def make_settings(root: Path, **over: Any) -> Settings:
    """Settings of a private home and pipeline file, on the test databases."""
    (root / "pipelines.toml").write_text(PIPELINES)
    values: dict[str, Any] = {
        "home": root / "home",
        "pipelines": root / "pipelines.toml",
        "broker_url": _url(BROKER_DB),
        "result_backend": _url(STATE_DB),
        "run_lock_ttl": 60,
        "result_expires": 600,
        # the session's key pair: the one this process signs with (tests._stack)
        **{k.removeprefix("CELERAY_").lower(): v for k, v in signing_env().items()},
        **over,
    }
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, dbs: Any) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {credentials.api_token(settings)}"}


def _run_keys(state: redis.Redis) -> list[str]:
    """The state store's keys but the rate limit's counters."""
    return [k for k in state.scan_iter() if not k.startswith(KEY_PREFIX)]


def _queued(broker: redis.Redis, queue: str = "io") -> list[dict[str, Any]]:
    """The task messages waiting in ``queue``, as kombu wrote them."""
    return [json.loads(m) for m in broker.lrange(queue, 0, -1)]


# -- triggering and following a run -------------------------------------------------------


def test_trigger_sends_start_run_and_status_shows_it_queued(
    client: FlaskClient, auth: dict[str, str], dbs: Any
) -> None:
    broker, _ = dbs
    r = client.post("/api/v1/pipelines/flights/runs", headers=auth, json={"source": "/etc"})
    assert r.status_code == 202, r.json
    run_id = r.json["run_id"]
    assert r.json["status_url"] == f"/api/v1/runs/{run_id}" == r.headers["Location"]

    [message] = _queued(broker)
    assert message["headers"]["task"] == "tasks.start_run"
    assert message["headers"]["id"] == run_id
    assert message["content-type"] == "application/data"  # signed (celeray.signing)
    args, kwargs, _ = loads(base64.b64decode(message["body"]), message["content-type"],
                            message["content-encoding"], accept={"application/data"})
    assert args == ["flights"] and kwargs == {"trigger": "api"}  # the body was ignored

    r = client.get(f"/api/v1/runs/{run_id}", headers=auth)
    assert r.status_code == 200
    view = r.json
    assert (view["run_id"], view["pipeline"], view["state"]) == (run_id, "flights", "QUEUED")
    assert view["progress"] == dict.fromkeys(
        ("files_total", "files_done", "rows_in", "rows_out", "bytes_in", "bytes_out"), 0
    )
    assert view["result"] is None and view["error"] is None and view["trigger"] == "api"


def test_second_trigger_is_409_naming_the_running_run(
    client: FlaskClient, auth: dict[str, str], dbs: Any
) -> None:
    first = client.post("/api/v1/pipelines/flights/runs", headers=auth).json["run_id"]
    r = client.post("/api/v1/pipelines/flights/runs", headers=auth)
    assert r.status_code == 409
    assert r.json["run_id"] == first and "already running" in r.json["error"]
    assert len(_queued(dbs[0])) == 1  # nothing more was sent
    assert client.post("/api/v1/pipelines/weather/runs", headers=auth).status_code == 202


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/pipelines/nope/runs",
        "/api/v1/pipelines/../etc/runs",
        "/api/v1/pipelines/a%2Fb/runs",
        "/api/v1/pipelines/%2E%2E/runs",
        "/api/v1/pipelines/Flights/runs",
        "/api/v1/pipelines/_flights/runs",
        "/api/v1/pipelines/flights%0A/runs",
        "/api/v1/pipelines/" + "a" * 65 + "/runs",
    ],
)
def test_unknown_or_malformed_pipeline_is_404(
    client: FlaskClient, auth: dict[str, str], dbs: Any, path: str
) -> None:
    r = client.post(path, headers=auth)
    assert r.status_code == 404 and r.is_json and r.json["error"]
    assert dbs[0].dbsize() == 0 and _run_keys(dbs[1]) == []  # no lock, no record, no message


@pytest.mark.parametrize("run_id", [UUID, "x" * 65, "a_b", "a.b", "%20"])
def test_unknown_or_malformed_run_is_404(client: FlaskClient, auth: dict[str, str], run_id: str):
    r = client.get(f"/api/v1/runs/{run_id}", headers=auth)
    assert r.status_code == 404 and r.json["error"]


def test_run_view_follows_record_and_result(settings: Settings, client: FlaskClient, auth):
    """QUEUED -> PROGRESS from the record; SUCCESS and FAILURE from the Celery result."""
    store = RunStore.from_url(settings.effective_state_url, lock_ttl=60, record_ttl=600)
    backend = make_client(settings).backend

    def view(run_id: str) -> dict[str, Any]:
        r = client.get(f"/api/v1/runs/{run_id}", headers=auth)
        assert r.status_code == 200, r.json
        return r.json  # type: ignore[no-any-return]

    store.create("r-ok", "flights", trigger="test")
    store.plan("r-ok", ["b1"], files_total=4)
    store.set_batch_progress("r-ok", "b1", {"files_done": 2, "rows_out": 10})
    v = view("r-ok")
    assert v["state"] == "PROGRESS" and v["progress"]["files_total"] == 4
    assert v["progress"]["files_done"] == 2 and v["progress"]["rows_out"] == 10

    summary = {**progress_of(store.get("r-ok") or {}), "status": "committed"}
    backend.store_result("r-ok", summary, "SUCCESS")
    v = view("r-ok")
    assert v["state"] == "SUCCESS" and v["result"]["status"] == "committed" and not v["error"]

    store.create("r-bad", "weather")
    store.plan("r-bad", ["b1"])
    store.finish_batch("r-bad", "b1", {}, error="ParseError: line 3")
    backend.store_result("r-bad", RunFailedError("1 of 1 batch(es) failed"), "FAILURE")
    v = view("r-bad")
    assert v["state"] == "FAILURE" and v["result"] is None
    assert v["error"] == "1 of 1 batch(es) failed"
    assert v["errors"] == [{"batch_id": "b1", "error": "ParseError: line 3"}]


def test_results_of_other_tasks_are_not_runs() -> None:
    batch = {"status": "SUCCESS", "result": {"batch_id": "b"}, "name": "tasks.commit_batch"}
    assert view_of(UUID, None, batch) is None
    assert view_of(UUID, None, {"status": "PENDING", "result": None}) is None
    skipped = {"status": "SUCCESS", "result": {"status": "skipped", "running": "x"}}
    assert (view_of(UUID, None, skipped) or {}).get("state") == "SUCCESS"


# -- pipelines and the pipeline file --------------------------------------------------------


def test_pipelines_lists_schedule_source_sink_and_last_run(
    client: FlaskClient, auth: dict[str, str], tmp_path: Path
) -> None:
    run_id = client.post("/api/v1/pipelines/weather/runs", headers=auth).json["run_id"]
    r = client.get("/api/v1/pipelines", headers=auth)
    assert r.status_code == 200
    flights, weather = r.json["pipelines"]
    assert flights["name"] == "flights" and flights["schedule"] == "*/5 * * * *"
    assert flights["source"] == (tmp_path / "landing/flights").as_uri() + "/*.csv"
    assert flights["sink"] == (tmp_path / "lake/flights").as_uri()
    assert flights["last_run"] is None and flights["backlog"] is None
    assert weather["schedule"] == 300 and weather["format"] == "jsonl"
    last = weather["last_run"]
    assert (last["run_id"], last["state"], last["rows_out"]) == (run_id, "QUEUED", 0)
    assert last["created_at"] > 0 and last["finished_at"] is None


def test_pipeline_file_edits_are_seen_and_a_broken_file_is_503(
    client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    assert client.post("/api/v1/pipelines/trips/runs", headers=auth).status_code == 404
    settings.pipelines.write_text(PIPELINES + '[pipelines.trips]\nsource = "t/*.csv"\nsink = "x"\n')
    assert client.post("/api/v1/pipelines/trips/runs", headers=auth).status_code == 202

    settings.pipelines.write_text(PIPELINES + '[pipelines.bad]\nsource = "b/*.csv"\n')
    for r in (
        client.post("/api/v1/pipelines/flights/runs", headers=auth),
        client.get("/api/v1/pipelines", headers=auth),
    ):
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert r.json["problems"] == ["pipelines.bad.sink: required key is missing"]
    health = client.get("/api/v1/health").json["pipelines"]
    assert health == {"ok": False}  # problems may quote secrets: token holders only
    health = client.get("/api/v1/health", headers=auth).json["pipelines"]
    assert health["ok"] is False and "1 problem" in health["error"]
    assert health["problems"] == ["pipelines.bad.sink: required key is missing"]


# -- authentication, errors, limits ---------------------------------------------------------

PROTECTED = [
    ("POST", "/api/v1/pipelines/flights/runs"),
    ("GET", f"/api/v1/runs/{UUID}"),
    ("GET", "/api/v1/pipelines"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer", "Basic dXNlcjpwYXNz", "Bearer tökén"]
)
def test_everything_but_health_needs_the_token(
    client: FlaskClient, dbs: Any, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    r = client.open(path, method=method, headers=headers)
    assert r.status_code == 401 and r.is_json and r.json["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert dbs[0].dbsize() == 0 and _run_keys(dbs[1]) == []


def test_token_comes_from_settings_when_given(tmp_path: Path, dbs: Any) -> None:
    app = create_app(make_settings(tmp_path, api_token="s3cret-token"))
    r = app.test_client().get("/api/v1/pipelines", headers={"Authorization": "bearer s3cret-token"})
    assert r.status_code == 200
    assert not (tmp_path / "home" / "api_token").exists()


def test_errors_are_json(client: FlaskClient, auth: dict[str, str]) -> None:
    r = client.put("/api/v1/pipelines/flights/runs", headers=auth)
    assert r.status_code == 405 and r.json["error"] and "POST" in r.headers["Allow"]
    r = client.delete("/api/v1/pipelines", headers=auth)
    assert r.status_code == 405 and r.is_json
    for path in ("/nope", "/api/v1/nope", "/api/v1/pipelines/"):  # "/": the web pages
        r = client.get(path, headers=auth)
        assert r.status_code == 404 and r.is_json and r.json["error"]


def test_body_over_64_kib_is_413_also_when_chunked(
    client: FlaskClient, auth: dict[str, str], dbs: Any
) -> None:
    big = b"x" * (64 * 1024 + 1)
    r = client.post("/api/v1/pipelines/flights/runs", headers=auth, data=big)
    assert r.status_code == 413 and r.json["error"]
    # A chunked body has no Content-Length; the server (gunicorn) marks the stream as
    # terminated and the limit applies while reading it.
    r = client.post(
        "/api/v1/pipelines/flights/runs",
        headers={**auth, "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(big),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413 and r.json["error"]
    assert dbs[0].dbsize() == 0  # nothing was sent
    r = client.post(
        "/api/v1/pipelines/flights/runs",
        headers={**auth, "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(b"{}"),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 202


def test_broker_down_is_503_and_leaves_no_lock(tmp_path: Path, dbs: Any) -> None:
    down = make_settings(tmp_path, broker_url=_url(BROKER_DB, free_port()))
    app = create_app(down)
    auth = {"Authorization": f"Bearer {credentials.api_token(down)}"}
    started = time.monotonic()
    r = app.test_client().post("/api/v1/pipelines/flights/runs", headers=auth)
    assert r.status_code == 503 and r.json["error"] and r.headers["Retry-After"]
    assert time.monotonic() - started < 5
    assert dbs[1].keys("celeray:lock:*") == []
    up = create_app(make_settings(tmp_path))
    assert up.test_client().post("/api/v1/pipelines/flights/runs", headers=auth).status_code == 202


def test_state_store_down_is_503(tmp_path: Path, dbs: Any) -> None:
    app = create_app(make_settings(tmp_path, state_url=_url(STATE_DB, free_port())))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {credentials.api_token(make_settings(tmp_path))}"}
    assert client.post("/api/v1/pipelines/flights/runs", headers=auth).status_code == 503
    assert client.get(f"/api/v1/runs/{UUID}", headers=auth).status_code == 503
    assert dbs[0].dbsize() == 0


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A port where something answers that is not Redis (an HTTP error line)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(server.getsockname()[1])
    stop.set()
    t.join()
    server.close()


def test_unexpected_errors_are_500_json_without_details(
    tmp_path: Path, dbs: Any, not_redis: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, state_url=_url(STATE_DB, not_redis))
    app = create_app(settings)
    auth = {"Authorization": f"Bearer {credentials.api_token(settings)}"}
    r = app.test_client().get(f"/api/v1/runs/{UUID}", headers=auth)
    assert r.status_code == 500
    assert set(r.json) == {"error"} and "Protocol" not in r.json["error"]
    assert "Traceback" in caplog.text  # the details go to the log


def test_one_log_line_per_request_without_the_token(
    client: FlaskClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="celeray.api.access")
    client.get("/api/v1/pipelines", headers=auth)
    client.get("/metrics", headers={"Authorization": "Bearer wrong-token"})
    lines = [r.getMessage() for r in caplog.records if r.name == "celeray.api.access"]
    assert re.fullmatch(r"GET /api/v1/pipelines 200 \d+\.\dms", lines[0]), lines
    assert re.fullmatch(r"GET /metrics 401 \d+\.\dms", lines[1]), lines
    token = auth["Authorization"].split()[1]
    assert token not in caplog.text and "wrong-token" not in caplog.text


# -- health, metrics, OpenAPI ---------------------------------------------------------------


def test_health_is_503_without_workers_but_names_what_is_up(client: FlaskClient, auth) -> None:
    started = time.monotonic()
    r = client.get("/api/v1/health", headers=auth)
    assert time.monotonic() - started < 5
    assert r.status_code == 503
    h = r.json
    assert h["ok"] is False
    assert h["broker"]["ok"] and h["backend"]["ok"] and h["state_store"]["ok"]
    assert h["pipelines"] == {"ok": True, "count": 2}
    assert h["workers"]["ok"] is False and h["workers"]["io"] == h["workers"]["ray"] == []
    assert h["ray"]["ok"] is False and "ray" in h["ray"]["error"]
    system = h["system"]
    assert system["ok"] and 0 <= system["cpu_percent"] <= 100
    assert system["memory"]["total"] >= system["memory"]["available"] > 0
    assert set(system["disks"]) == {"staging", "sink:flights", "sink:weather"}
    assert all(d["total"] > 0 for d in system["disks"].values())


def test_health_with_the_broker_unreachable_answers_fast(tmp_path: Path, dbs: Any) -> None:
    settings = make_settings(tmp_path, broker_url=_url(BROKER_DB, free_port()))
    app = create_app(settings)
    started = time.monotonic()
    auth = {"Authorization": f"Bearer {credentials.api_token(settings)}"}
    r = app.test_client().get("/api/v1/health", headers=auth)
    assert time.monotonic() - started < 5
    assert r.status_code == 503
    assert r.json["broker"]["ok"] is False and r.json["broker"]["error"]
    assert r.json["workers"]["ok"] is False and r.json["backend"]["ok"] is True


_SAMPLE = re.compile(
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+'
)


def test_metrics_are_prometheus_text(client: FlaskClient, auth: dict[str, str]) -> None:
    client.post("/api/v1/pipelines/flights/runs", headers=auth)
    r = client.get("/metrics", headers=auth)
    assert r.status_code == 200 and r.mimetype == "text/plain"
    samples = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        assert _SAMPLE.fullmatch(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples["celeray_up"] == 1 and samples["celeray_broker_up"] == 1
    assert samples['celeray_queue_length{queue="io"}'] == 1
    assert samples['celeray_queue_length{queue="ray"}'] == 0
    assert samples['celeray_runs{pipeline="flights",state="QUEUED"}'] == 1
    assert samples['celeray_runs{pipeline="weather",state="QUEUED"}'] == 0
    assert samples["celeray_pipeline_file_valid"] == 1 and samples["celeray_pipelines"] == 2

    from prometheus_client.parser import text_string_to_metric_families

    assert {f.name for f in text_string_to_metric_families(r.text)} >= {"celeray_up"}


def test_metrics_of_a_finished_run(settings: Settings, client: FlaskClient, auth) -> None:
    store = RunStore.from_url(settings.effective_state_url, lock_ttl=60, record_ttl=600)
    store.create("r1", "flights")
    store.plan("r1", ["b1"])
    store.finish_batch("r1", "b1", {"files_committed": 3, "rows_out": 7, "bytes_in": 100})
    store.set_fields("r1", state="SUCCESS", finished_at=time.time())
    text = client.get("/metrics", headers=auth).text
    assert 'celeray_last_run_committed_files{pipeline="flights"} 3.0' in text
    assert 'celeray_last_run_output_rows{pipeline="flights"} 7.0' in text
    assert 'celeray_last_run_input_bytes{pipeline="flights"} 100.0' in text
    assert 'celeray_last_run_success{pipeline="flights"} 1.0' in text
    assert 'celeray_runs{pipeline="flights",state="SUCCESS"} 1.0' in text
    assert "celeray_backlog_files{" not in text  # no run listed a backlog


def test_backlog_in_metrics_and_pipelines(settings: Settings, client: FlaskClient, auth) -> None:
    store = RunStore.from_url(settings.effective_state_url, lock_ttl=60, record_ttl=600)
    store.create("r1", "flights")
    store.plan("r1", ["b1"], backlog_files=1500, backlog_bytes=15_000)
    store.create("r2", "flights")  # the next run, sent, not yet listed
    text = client.get("/metrics", headers=auth).text
    assert 'celeray_backlog_files{pipeline="flights"} 1500.0' in text
    assert 'celeray_backlog_bytes{pipeline="flights"} 15000.0' in text
    flights = client.get("/api/v1/pipelines", headers=auth).json["pipelines"][0]
    assert flights["backlog"]["files"] == 1500 and flights["backlog"]["run_id"] == "r1"
    assert flights["last_run"]["run_id"] == "r2"
    assert (flights["max_files_per_run"], flights["after_commit"]) == (None, "keep")


def test_openapi_describes_exactly_the_routes(app: Flask, client: FlaskClient, auth) -> None:
    r = client.get("/api/v1/openapi.json", headers=auth)
    assert r.status_code == 200
    doc = r.json
    assert doc["openapi"].startswith("3.1")
    routes = {  # the web pages (HTML, session cookie) are not the API: docs/web.md
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS") and not rule.endpoint.startswith(f"{PAGES}.")
    }
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == described
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            needs_token = op.get("security", doc["security"]) != []
            concrete = path.replace("{name}", "flights").replace("{run_id}", UUID)
            got = client.open(concrete, method=method.upper()).status_code
            assert (got == 401) == needs_token, (method, path, got)


def test_openapi_is_package_data() -> None:
    import tomllib
    from importlib.resources import files

    json.loads(files("celeray.api").joinpath("openapi.json").read_text())
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "celeray.api" in setuptools["packages"]
    assert "openapi.json" in setuptools["package-data"]["celeray.api"]
