"""The web pages without a stack: the pure parts (cross-site check, CSRF, the login's
``next``, the session key, the SVG chart, the next run) and the pages through Flask's test
client on a real ledger and the real Redis the app needs (``tests.test_api``'s fixtures)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from celeray import credentials
from celeray.api.web._pages import next_run_at, throughput_points
from celeray.api.web._session import COOKIE, cross_site, csrf_ok, safe_next, session_key, who
from celeray.api.web._svg import HEIGHT, WIDTH, line_chart
from celeray.ledger import Ledger, quarantine_key
from celeray.pipelines import load_pipelines
from celeray.runstate import RunStore
from celeray.settings import Settings
from tests import test_api as base
from tests.test_quarantine import _bad, commit

_no_celeray_environment = base._no_celeray_environment
dbs, settings, app, client, auth = base.dbs, base.settings, base.app, base.client, base.auth

HOST = "localhost"  # the test client's Host


# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(("origin", "site", "refused"), [
    (None, None, False),                                  # curl: the CSRF token decides
    ("http://localhost", "same-origin", False),
    (None, "none", False),                                # typed into the address bar
    ("http://evil.example", None, True),
    ("http://localhost.evil.example", "same-origin", True),
    ("null", None, True),                                 # a sandboxed or file: page
    (None, "cross-site", True),
    (None, "same-site", True),                            # a sibling host is another site
    ("http://LOCALHOST", "same-origin", False),
])  # fmt: skip
def test_cross_site(origin: str | None, site: str | None, refused: bool) -> None:
    assert (cross_site(origin, site, HOST) is not None) == refused


def test_csrf_ok() -> None:
    assert csrf_ok("abc", "abc")
    for given, expected in [("abc", "abd"), ("", ""), (None, "abc"), ("abc", None), ("a", 1)]:
        assert not csrf_ok(given, expected)


@pytest.mark.parametrize(("target", "kept"), [
    ("/", True), ("/pipelines/flights", True), ("/quarantine?pipeline=a&kind=parse", True),
    ("/quarantine?glob=*.csv", True),
    ("//evil.example/x", False), ("http://evil.example/", False), ("/\\evil.example", False),
    ("", False), (None, False), ("javascript:alert(1)", False), ("/a\nb", False),
])  # fmt: skip
def test_safe_next(target: str | None, kept: bool) -> None:
    assert safe_next(target) == (target if kept else "/")


def test_who_and_session_key() -> None:
    assert who(" alice ") == "alice" and who("a b") is None and who("") is None
    assert who("x" * 65) is None
    key = session_key(b"token-1")
    assert len(key) == 32 and key != session_key(b"token-2") and b"token-1" not in key


def _svg(points: list[tuple[float, float]], **kw: Any) -> ET.Element:
    return ET.fromstring(str(line_chart(points, **kw)))


def test_line_chart_scales_points_into_the_box() -> None:
    svg = _svg([(1000.0, 10.0), (2000.0, 40.0), (3000.0, 0.0)])
    ns = "{http://www.w3.org/2000/svg}"
    circles = svg.findall(f"{ns}circle")
    xs = [float(c.get("cx", "")) for c in circles]
    ys = [float(c.get("cy", "")) for c in circles]
    assert xs == sorted(xs) and all(0 <= x <= WIDTH for x in xs)
    assert all(0 <= y <= HEIGHT for y in ys)
    assert ys[1] == min(ys) and ys[2] == max(ys)  # the top value highest, 0 on the axis
    assert svg.find(f"{ns}polyline") is not None
    assert "40 rows/s" in (circles[1].findtext(f"{ns}title") or "")


def test_line_chart_one_point_none_and_escaping() -> None:
    ns = "{http://www.w3.org/2000/svg}"
    one = _svg([(1000.0, 5.0)])
    assert one.find(f"{ns}polyline") is None and len(one.findall(f"{ns}circle")) == 1
    assert "no runs yet" in str(line_chart([]))
    text = str(line_chart([(1.0, 1.0)], unit="<b>&", title='"x"'))
    assert "<b>" not in text and "&lt;b&gt;&amp;" in text
    ET.fromstring(text)


def test_throughput_points() -> None:
    runs = [
        {"run_id": "a", "started_at": 100.0, "ended_at": 110.0, "rows_out": 1000},
        {"run_id": "b", "started_at": 200.0, "ended_at": 200.0, "rows_out": 500},  # one batch
        {"run_id": "c", "started_at": 300.0, "ended_at": 300.0, "rows_out": 0},
    ]
    assert throughput_points(runs, {"b": 2.0}) == [(110.0, 100.0), (200.0, 250.0)]


def test_next_run_at(settings: Settings) -> None:
    pipelines = load_pipelines(settings.pipelines, **settings.pipeline_rules())
    now = 1_700_000_123.0
    assert next_run_at(pipelines["weather"], now) == 1_700_000_400.0  # every 300 s, aligned
    cron = next_run_at(pipelines["flights"], now)  # */5 * * * *
    assert cron is not None and now < cron <= now + 300 and int(cron) % 300 == 0


# -- the pages through the test client ------------------------------------------------------


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _login(client: FlaskClient, settings: Settings, name: str = "alice") -> str:
    token = credentials.api_token(settings)
    csrf = _csrf(client.get("/login").text)
    r = client.post("/login", data={"token": token, "csrf": csrf, "name": name,
                                    "next": "/quarantine"})  # fmt: skip
    assert r.status_code == 303 and r.headers["Location"] == "/quarantine"
    return _csrf(client.get("/").text)


def _cookie_header(r: Any) -> str:
    [cookie] = [v for k, v in r.headers.items() if k == "Set-Cookie" and v.startswith(COOKIE)]
    return str(cookie)


def test_the_cookie_is_httponly_samesite_strict_and_secure_over_tls(app: Flask) -> None:
    plain = _cookie_header(app.test_client().get("/login"))
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Secure" not in plain
    tls = _cookie_header(app.test_client().get("/login", base_url="https://localhost"))
    assert "HttpOnly" in tls and "SameSite=Strict" in tls and "Secure" in tls


def test_without_a_session_every_page_redirects_to_the_login(app: Flask,
                                                             client: FlaskClient) -> None:
    values = {"name": "flights", "run_id": base.UUID, "key": "0" * 24}
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("web.") or rule.endpoint.startswith("web.login"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            r = client.open(path, method=method, headers={"Host": "evil.example"})
            assert r.status_code == 303, (method, path, r.status_code)
            assert r.headers["Location"].startswith("/login?next="), r.headers["Location"]
            checked += 1
    assert checked >= 9


def test_login_refuses_a_wrong_token_and_the_session_opens_no_api(
    client: FlaskClient, settings: Settings
) -> None:
    csrf = _csrf(client.get("/login").text)
    r = client.post("/login", data={"token": "not-the-token", "csrf": csrf})
    assert r.status_code == 401 and "wrong token" in r.text
    assert client.get("/").status_code == 303
    _login(client, settings)
    r = client.get("/")
    assert r.status_code == 200 and "flights" in r.text and "weather" in r.text
    assert "nonce-" in r.headers["Content-Security-Policy"]
    assert client.get("/api/v1/pipelines").status_code == 401  # the API wants its bearer token


def test_a_post_needs_the_csrf_token_and_this_origin(client: FlaskClient,
                                                     settings: Settings) -> None:
    csrf = _csrf(client.get("/login").text)
    token = credentials.api_token(settings)
    r = client.post("/login", data={"token": token})  # no CSRF token: not even a login
    assert r.status_code == 403
    r = client.post("/login", data={"token": token, "csrf": csrf},
                    headers={"Origin": "http://evil.example"})  # fmt: skip
    assert r.status_code == 403
    csrf = _login(client, settings)
    r = client.post("/logout", data={"csrf": "wrong"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post("/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert client.get("/").status_code == 200  # still logged in
    r = client.post("/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "same-origin",
                                                              "Origin": "http://localhost"})
    assert r.status_code == 303 and client.get("/").status_code == 303


def test_replay_and_dismiss_from_the_quarantine_page(client: FlaskClient,
                                                     settings: Settings) -> None:
    sink = load_pipelines(settings.pipelines, **settings.pipeline_rules())["flights"].sink
    bad = f"{sink}-landing/b.csv"
    commit(Ledger(sink), "r1", [f"{sink}-landing/a.csv"], [_bad(bad)])
    csrf = _login(client, settings, name="alice")
    page = client.get("/quarantine?pipeline=flights")
    assert page.status_code == 200 and "bad parse" in page.text
    key = quarantine_key(bad)
    r = client.post(f"/pipelines/flights/quarantine/{key}/replay",
                    data={"csrf": csrf, "next": "/quarantine?pipeline=flights"})  # fmt: skip
    assert r.status_code == 303 and r.headers["Location"] == "/quarantine?pipeline=flights"
    [item] = client.get("/api/v1/pipelines/flights/quarantine",
                        headers=_bearer(settings)).json["items"]  # fmt: skip
    assert item["status"] == "replay_pending" and item["decision"]["by"] == "web:alice"
    r = client.post(f"/pipelines/flights/quarantine/{key}/dismiss", data={"csrf": csrf})
    assert r.status_code == 303
    assert "dismiss by web:alice" in client.get("/quarantine?pipeline=flights&all=1").text
    file_page = client.get(f"/pipelines/flights/files/{key}")
    assert file_page.status_code == 200 and "bad parse" in file_page.text
    good = client.get(f"/pipelines/flights/files/{quarantine_key(f'{sink}-landing/a.csv')}")
    assert good.status_code == 200 and "committed" in good.text
    assert client.get("/pipelines/flights/runs/r1").status_code == 200  # from the ledger alone
    live = client.get("/pipelines/flights/runs/r1?part=live")  # what the page's script asks
    assert live.status_code == 200 and 'data-final="1"' in live.text and "<html" not in live.text
    assert client.get("/pipelines/flights").status_code == 200
    r = client.get("/pipelines/nope")
    assert r.status_code == 404 and r.mimetype == "text/html"


def test_a_run_page_while_its_batch_is_still_going(client: FlaskClient,
                                                   settings: Settings) -> None:
    store = RunStore.from_settings(settings)
    store.create(base.UUID, "flights", trigger="web")
    store.plan(base.UUID, ["b1"], files_total=2)
    store.save_jobs(base.UUID, [{"batch_id": "b1", "files": [{"url": "file:///l/a.csv"},
                                                             {"url": "file:///l/b.csv"}]}])
    _login(client, settings)
    page = client.get(f"/pipelines/flights/runs/{base.UUID}")
    assert page.status_code == 200, page.text
    assert "running" in page.text and "a.csv" in page.text and 'data-final="0"' in page.text
    assert "Undefined" not in page.text
    live = client.get(f"/pipelines/flights/runs/{base.UUID}?part=live")
    assert 'id="run-state" class="state PROGRESS"' in live.text
    assert client.get(f"/pipelines/weather/runs/{base.UUID}").status_code == 404  # not its run


def _bearer(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {credentials.api_token(settings)}"}
