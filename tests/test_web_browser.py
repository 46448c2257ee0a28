"""The web pages in a real browser: Debian's Chromium (headless) driven by Playwright, against
the session's real stack (Ray head, io and ray workers) and the API served as deployed
(gunicorn with ``celeray.api.gunicorn_conf``) in the stack's environment.

A screenshot of each page is kept in ``$CELERAY_WEB_SCREENSHOTS`` when set, else in a
``screenshots`` folder under pytest's temporary directory (printed at the end of the module).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeray import reading
from celeray.ledger import quarantine_key
from tests._stack import VENV_BIN, Proc, Stack, free_port, wait_for

pytestmark = pytest.mark.stack

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it when missing
RUN_TIMEOUT_MS = 180_000  # a run on a loaded 2-core machine takes seconds; this is the bound
LOOPBACK = "127.0.0.1"

playwright_api = pytest.importorskip("playwright.sync_api")  # in the test extra
expect = playwright_api.expect


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the screenshots go."""
    folder = Path(os.environ.get("CELERAY_WEB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nweb page screenshots: {folder}")


@pytest.fixture(scope="module")
def web(stack: Stack) -> Iterator[dict[str, Any]]:
    """gunicorn serving the API and the pages with the stack's settings, stopped by pid."""
    port = free_port()
    argv = [str(VENV_BIN / "gunicorn"), "-c", "python:celeray.api.gunicorn_conf",
            "celeray.api:create_app()", "--bind", f"{LOOPBACK}:{port}"]  # fmt: skip
    proc = Proc(argv, env=stack.env, log=stack.root / "web-api.log", cwd=stack.root)
    base = f"http://{LOOPBACK}:{port}"
    try:
        import http.client

        def up() -> bool:
            conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
            try:
                conn.request("GET", "/api/v1/openapi.json")
                return conn.getresponse().status == 401
            finally:
                conn.close()

        wait_for(up, 60, "the API")
        token = (stack.root / "home" / "api_token").read_text().strip()
        yield {"base": base, "token": token, "port": port}
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser: Any, web: dict[str, Any], shots: Path) -> Iterator[Any]:
    """A page of a browser context logged in as ``tester`` (the wrong token refused first)."""
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(web["base"] + "/")
    expect(pg).to_have_url(re.compile(r"/login\?next=(%2F|/)$"))
    pg.fill("#token", "not-the-token")
    pg.click("#login")
    expect(pg.locator("#login-error")).to_have_text("wrong token")
    pg.screenshot(path=str(shots / "login-refused.png"), full_page=True)
    pg.fill("#token", web["token"])
    pg.fill("#name", "tester")
    pg.click("#login")
    expect(pg).to_have_url(web["base"] + "/")
    try:
        yield pg
    finally:
        context.close()


def _pipeline(stack: Stack, tmp: Path) -> tuple[Path, Path]:
    landing, sink = tmp / "landing", tmp / "lake"
    landing.mkdir()
    (landing / "good1.csv").write_text("id,x\n1,a\n2,b\n")
    (landing / "good2.csv").write_text("id,x\n3,c\n")
    (landing / "bad.csv").write_text("id,x\nnot-a-number,d\n")
    stack.add_pipeline("webui", "\n".join([
        f'source = "{landing.as_uri()}/*.csv"', f'sink = "{sink.as_uri()}"',
        "[pipelines.webui.schema]", 'id = "int64"',
    ]))  # fmt: skip
    return landing, sink


def _io_consuming(stack: Stack, on: bool) -> None:
    """Stop or resume the io worker taking runs, so a run is seen QUEUED for certain."""
    control = stack.client.control
    call = control.add_consumer if on else control.cancel_consumer
    replies = call("io", destination=[stack.io.name], reply=True, timeout=10)
    assert replies, f"the io worker did not answer {'add' if on else 'cancel'}_consumer"


def _wait_final(pg: Any) -> None:
    expect(pg.locator("#run-state")).to_have_text(re.compile("SUCCESS|FAILURE"),
                                                  timeout=RUN_TIMEOUT_MS)  # fmt: skip
    expect(pg.locator("#run-state")).to_have_text("SUCCESS")


def test_a_run_from_trigger_to_replay(
    page: Any, web: dict[str, Any], stack: Stack, tmp_path: Path, shots: Path
) -> None:
    landing, sink = _pipeline(stack, tmp_path)
    page.goto(web["base"] + "/")
    expect(page.locator('tr[data-pipeline="webui"]')).to_contain_text("never run")
    page.screenshot(path=str(shots / "pipelines.png"), full_page=True)

    _io_consuming(stack, on=False)
    try:
        page.click('button[data-trigger="webui"]')
        expect(page).to_have_url(re.compile(r"/pipelines/webui/runs/[0-9a-f-]+$"))
        expect(page.locator("#run-state")).to_have_text("QUEUED")  # nobody took it yet
        expect(page.locator("#run-files")).to_have_text("0 of 0 files")
        page.screenshot(path=str(shots / "run-queued.png"), full_page=True)
    finally:
        _io_consuming(stack, on=True)
    # The page follows the run by itself (no reload): the live part moves, then ends.
    _wait_final(page)
    expect(page.locator("#run-files")).to_have_text("3 of 3 files")
    first_run = page.url.rsplit("/", 1)[1]
    bad_url = (landing / "bad.csv").as_uri()
    key = quarantine_key(bad_url)
    row = page.locator(f'table.quarantine tr[data-key="{key}"]')
    expect(row.locator(".status")).to_have_text("quarantined")
    reason = row.locator(".reason").inner_text()
    assert reason.strip(), "a quarantined file shows its reason"
    expect(page.locator("#batches")).to_contain_text("good1.csv")
    # Each committed batch links to its transform's and its commit's task pages in Flower.
    expect(page.locator("#batches a.task").first).to_have_attribute(
        "href", re.compile(r"/task/[0-9a-f]{8}-[0-9a-f-]{27}$"))
    page.screenshot(path=str(shots / "run.png"), full_page=True)

    page.click(f'table.quarantine tr[data-key="{key}"] a.url')
    expect(page.locator("#file-state")).to_contain_text("quarantined")
    expect(page.locator("#reason")).to_have_text(reason.strip())
    page.screenshot(path=str(shots / "file-quarantined.png"), full_page=True)

    (landing / "bad.csv").write_text("id,x\n4,d\n")  # fixed in place
    page.goto(web["base"] + "/quarantine?pipeline=webui")
    page.click(f'button[data-replay="{key}"]')
    expect(page).to_have_url(web["base"] + "/quarantine?pipeline=webui")
    expect(page.locator(f'tr[data-key="{key}"] .status')).to_have_text("replay_pending")
    expect(page.locator(f'tr[data-key="{key}"]')).to_contain_text("replay by web:tester")
    page.screenshot(path=str(shots / "quarantine.png"), full_page=True)

    page.goto(web["base"] + "/pipelines/webui")
    page.click('button[data-trigger="webui"]')
    _wait_final(page)
    expect(page.locator("#live")).to_contain_text("1 committed, 0 quarantined")
    second_run = page.url.rsplit("/", 1)[1]
    assert second_run != first_run
    page.screenshot(path=str(shots / "run-replayed.png"), full_page=True)
    ids = reading.dataset(sink.as_uri()).to_table().column("id").to_pylist()
    assert sorted(ids) == [1, 2, 3, 4]  # the replayed file's row once, nothing twice

    page.goto(f"{web['base']}/pipelines/webui/files/{key}")
    expect(page.locator("#file-state")).to_have_text("committed")
    expect(page.locator("#file")).to_contain_text(second_run)
    expect(page.locator("#rows-in")).to_have_text("1")
    page.screenshot(path=str(shots / "file.png"), full_page=True)

    page.goto(web["base"] + "/pipelines/webui")
    expect(page.locator("#runs tbody tr")).to_have_count(2)
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator("#schema")).to_contain_text("int64")
    expect(page.locator("#settings")).to_contain_text("schema.id")
    page.screenshot(path=str(shots / "pipeline.png"), full_page=True)


def test_without_the_session_cookie_every_page_redirects_to_the_login(
    browser: Any, web: dict[str, Any]
) -> None:
    context = browser.new_context()
    try:
        pg = context.new_page()
        for path in ("/", "/quarantine", "/pipelines/webui", f"/pipelines/webui/files/{'0' * 24}",
                     "/pipelines/webui/runs/0b7f5a9e-3c1d-4e2f-9a8b-7c6d5e4f3a21"):  # fmt: skip
            r = context.request.get(web["base"] + path, max_redirects=0)
            assert r.status == 303 and r.headers["location"].startswith("/login?next="), path
            pg.goto(web["base"] + path)
            expect(pg).to_have_url(re.compile(r"/login\?next="))
            r = context.request.post(web["base"] + "/pipelines/webui/runs", max_redirects=0)
            assert r.status == 303 and r.headers["location"].startswith("/login"), path
    finally:
        context.close()


def test_a_cross_site_post_is_refused(
    page: Any, browser: Any, web: dict[str, Any], stack: Stack, shots: Path
) -> None:
    before = stack.store.recent("webui", 100)
    # With the logged-in session's cookie and its real CSRF token, but from another origin.
    page.goto(web["base"] + "/")
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    r = page.context.request.post(
        web["base"] + "/pipelines/webui/runs", form={"csrf": csrf}, max_redirects=0,
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert r.status == 403 and "cross-site" in r.text()
    # A real cross-site form: a page of another origin posts to the trigger.
    evil = page.context.new_page()
    form = (f'<form method="post" action="{web["base"]}/pipelines/webui/runs">'
            '<input name="csrf" value="guess"></form>'
            "<script>document.forms[0].submit()</script>")  # fmt: skip
    evil.goto("data:text/html," + form)
    expect(evil.locator("#error-message")).to_contain_text("cross-site")
    evil.screenshot(path=str(shots / "cross-site-refused.png"), full_page=True)
    evil.close()
    # Same origin but no CSRF token: refused too.
    r = page.context.request.post(web["base"] + "/pipelines/webui/runs", form={},
                                  max_redirects=0)  # fmt: skip
    assert r.status == 403
    assert stack.store.recent("webui", 100) == before  # nothing was triggered
