# ruff: noqa: F811 - the fixtures of test_api are imported and then named as arguments
"""The API's security audit: tokens on every route, what health shows, what routes accept,
and the request rate limit (real Redis: the counters are shared by every server process)."""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from celeray.api import _auth, create_app
from celeray.api._ratelimit import KEY_PREFIX, WINDOW, retry_after
from celeray.settings import Settings
from tests.test_api import (  # noqa: F401 - fixtures, used by name
    UUID,
    _no_celeray_environment,
    app,
    auth,
    client,
    dbs,
    make_settings,
    settings,
)

PUBLIC = {"health.health"}  # endpoints answering without a token; nothing else may
PARTS = ("broker", "backend", "state_store", "workers", "ray", "pipelines", "system")


def _concrete(rule: str) -> str:
    """A request path for a URL rule, with well-formed values in its variables."""
    values = {"name": "flights", "run_id": UUID}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values.get(m.group(1), "x"), rule)


def test_every_route_but_health_needs_the_token(app: Flask, client: FlaskClient) -> None:
    """Iterates the app's own URL map, so a route added later cannot slip through."""
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(f"{_auth.PAGES}."):
            continue  # pages: a session cookie instead (tests/test_web.py: all redirect)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            r = client.open(_concrete(rule.rule), method=method)
            if rule.endpoint in PUBLIC:
                assert r.status_code != 401, (method, rule.rule)
                continue
            assert r.status_code == 401 and r.is_json, (method, rule.rule, r.status_code)
            r = client.open(_concrete(rule.rule), method=method,
                            headers={"Authorization": "Bearer not-the-token"})  # fmt: skip
            assert r.status_code == 401, (method, rule.rule)
            checked += 1
    assert checked >= 5  # runs, run, pipelines, metrics, openapi


def test_tokens_are_compared_in_constant_time(
    client: FlaskClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(_auth.hmac, "compare_digest", spy)
    assert client.get("/api/v1/pipelines", headers=auth).status_code == 200
    assert client.get("/api/v1/pipelines", headers={"Authorization": "Bearer x"}).status_code == 401
    assert calls and all(t == (bytes, bytes) for t in calls)


def test_no_route_accepts_a_url_path_task_name_or_storage_options(client, auth) -> None:
    """Over the OpenAPI document: only the path variables `name`, `run_id` and `key`, each
    held to a pattern that admits no '/', ':' or '.', and no request body, header or cookie.
    A query may only filter what a GET lists from the ledger (`kind`, `glob`, `all`,
    `limit`): nothing is opened or sent by it."""
    doc = client.get("/api/v1/openapi.json", headers=auth).json
    allowed = {"name", "run_id", "key"}
    filters = {"kind", "glob", "all", "limit"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "requestBody" not in op, (method, path)
            for param in op.get("parameters", []):
                if param["in"] == "query" and method == "get" and param["name"] in filters:
                    continue
                assert param["in"] == "path" and param["name"] in allowed, (method, path, param)
                pattern = param["schema"]["pattern"]
                for bad in ("s3://b/x", "/etc/passwd", "a/b", "tasks.start_run", "..", "x:y"):
                    assert not re.fullmatch(pattern, bad), (param["name"], bad)
            assert set(re.findall(r"{(\w+)}", path)) <= allowed


def test_triggers_ignore_query_and_body(client: FlaskClient, auth, dbs: Any) -> None:
    r = client.post("/api/v1/pipelines/flights/runs?source=file:///etc&task=tasks.x",
                    headers=auth, json={"storage_options": {"key": "k"}, "sink": "/tmp"})
    assert r.status_code == 202
    [message] = [json.loads(m) for m in dbs[0].lrange("io", 0, -1)]
    assert message["headers"]["task"] == "tasks.start_run"
    assert "/etc" not in json.dumps(message) and "storage_options" not in json.dumps(message)


def test_health_without_the_token_says_only_ok_per_part(client: FlaskClient, auth) -> None:
    public = client.get("/api/v1/health")
    assert public.status_code == 503  # no workers in this test
    assert public.json == {"ok": False, **{p: {"ok": public.json[p]["ok"]} for p in PARTS}}
    assert public.json["broker"] == {"ok": True} and public.json["workers"] == {"ok": False}
    wrong = client.get("/api/v1/health", headers={"Authorization": "Bearer nope"})
    assert wrong.json.keys() == public.json.keys() and wrong.json["system"] == {"ok": True}
    full = client.get("/api/v1/health", headers=auth).json
    assert full["workers"]["io"] == [] and "error" in full["workers"]
    assert full["system"]["disks"] and full["broker"]["ms"] >= 0


# -- the rate limit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cur", "prev", "elapsed", "limit", "want"),
    [
        (10, 0, 20.0, 10, 46),  # this window is full: 40 s to the next, then 6 s of sliding
        (5, 10, 0.0, 10, 36),  # prev weighs 10*(60-t)/60; it must fall to 4
        (0, 20, 30.0, 10, 3),  # prev alone must fall to 9: at t = 33
        (9, 9, 59.5, 10, 1),  # half a second to the next window, where 9*(1-t/60) <= 9
    ],
)
def test_retry_after(cur: int, prev: int, elapsed: float, limit: int, want: int) -> None:
    got = retry_after(cur, prev, elapsed, WINDOW, limit)
    assert got == want

    # At the answer the request fits, a second earlier it did not (unless the answer is 1).
    def used(t: float) -> float:  # count at elapsed time t (t may pass into the next window)
        if t < WINDOW:
            return cur + prev * (WINDOW - t) / WINDOW
        return cur * (2 * WINDOW - t) / WINDOW
    assert used(elapsed + got) + 1 <= limit + 1e-9
    if got > 1:
        assert used(elapsed + got - 1) + 1 > limit


@pytest.fixture
def limited(tmp_path, dbs: Any) -> tuple[Flask, Flask, Settings]:
    """Two apps (two server processes' worth) on one state store, limit 5 a minute."""
    s = make_settings(tmp_path, api_rate_limit=5)
    return create_app(s), create_app(s), s


def test_the_limit_is_shared_by_every_server_process(limited, dbs: Any) -> None:
    one, two, s = limited
    auth = {"Authorization": f"Bearer {_auth_token(s)}"}
    codes = [a.test_client().get("/api/v1/pipelines", headers=auth).status_code
             for a in (one, two, one, two, one, two, one)]  # fmt: skip
    assert codes == [200] * 5 + [429] * 2
    r = two.test_client().get("/api/v1/pipelines", headers=auth)
    assert r.status_code == 429 and r.is_json and "CELERAY_API_RATE_LIMIT" in r.json["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 2 * WINDOW
    # Another client (no token: its address) has its own count; health answers it.
    other = one.test_client().get("/api/v1/health", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 503 and set(other.json) == {"ok", *PARTS}
    # The token never goes into Redis; every counter expires within two windows.
    keys = dbs[1].keys(f"{KEY_PREFIX}:*")
    assert keys and len(keys) <= 4
    assert all(0 < dbs[1].pttl(k) <= 2 * WINDOW * 1000 for k in keys)
    assert not any(_auth_token(s) in k for k in keys)


def test_wrong_tokens_are_limited_by_address(limited, dbs: Any) -> None:
    one, _, s = limited
    c = one.test_client()
    codes = [c.get("/api/v1/pipelines", headers={"Authorization": f"Bearer guess{i}"}).status_code
             for i in range(7)]  # fmt: skip
    assert codes == [401] * 5 + [429] * 2
    good = c.get("/api/v1/pipelines", headers={"Authorization": f"Bearer {_auth_token(s)}"})
    assert good.status_code == 200  # the token holder is a client of its own


def test_zero_turns_the_limit_off(tmp_path, dbs: Any) -> None:
    app = create_app(make_settings(tmp_path, api_rate_limit=0))
    c = app.test_client()
    assert all(c.get("/api/v1/openapi.json").status_code == 401 for _ in range(20))
    assert dbs[1].keys(f"{KEY_PREFIX}:*") == []


def test_an_unreachable_state_store_lets_requests_through(tmp_path, dbs: Any) -> None:
    from tests._stack import free_port

    down = f"redis://127.0.0.1:{free_port()}/8"
    app = create_app(make_settings(tmp_path, api_rate_limit=1, state_url=down))
    codes = [app.test_client().get("/api/v1/health").status_code for _ in range(3)]
    assert codes == [503] * 3  # health still answers (state store down), never 429


def _auth_token(s: Settings) -> str:
    from celeray import credentials

    return credentials.api_token(s)


def test_default_limit_allows_a_load_test_of_1000_triggers_a_minute() -> None:
    assert Settings().api_rate_limit >= 2000
