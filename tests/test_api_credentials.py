"""Secrets under CELERAY_HOME: generated once, 0600, one value however many processes race."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from celeray import credentials
from celeray.errors import ConfigError
from celeray.settings import Settings


@pytest.fixture(autouse=True)
def _no_celeray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test alone, whatever CELERAY_* the shell exports."""
    for name in list(os.environ):
        if name.startswith("CELERAY_") or name == "RAY_ADDRESS":
            monkeypatch.delenv(name)


def _settings(home: Path, **over: str) -> Settings:
    return Settings(home=home, **over)  # type: ignore[arg-type]


def test_generated_once_private_and_stable(tmp_path: Path) -> None:
    s = _settings(tmp_path / "home")
    token = credentials.api_token(s)
    path = tmp_path / "home" / "api_token"
    assert path.read_text() == token and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.api_token(s) == token == credentials.api_token(_settings(s.home))
    password = credentials.flower_password(s)
    assert password != token and (s.home / "flower_password").read_text() == password
    ray_path = credentials.ray_auth_token_path(s)
    assert ray_path == (s.home / "ray_auth_token").absolute()
    assert len(ray_path.read_text()) == 64 and int(ray_path.read_text(), 16) >= 0
    assert credentials.ray_auth_token_path(s).read_text() == ray_path.read_text()
    assert sorted(p.name for p in s.home.iterdir()) == [
        "api_token", "flower_password", "ray_auth_token"
    ]  # fmt: skip


def test_settings_win_and_write_nothing(tmp_path: Path) -> None:
    s = _settings(tmp_path, api_token="from-env", flower_password="pw")
    assert credentials.api_token(s) == "from-env"
    assert credentials.flower_password(s) == "pw"
    assert list(tmp_path.iterdir()) == []
    blank = _settings(tmp_path, api_token="  ")
    assert credentials.api_token(blank) == (tmp_path / "api_token").read_text()


def test_environment_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERAY_API_TOKEN", "env-token")
    assert credentials.api_token(Settings(home=tmp_path)) == "env-token"


def test_an_existing_file_is_kept_and_an_empty_one_refused(tmp_path: Path) -> None:
    (tmp_path / "api_token").write_text("mine\n")
    assert credentials.api_token(_settings(tmp_path)) == "mine"
    (tmp_path / "flower_password").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        credentials.flower_password(_settings(tmp_path))


def _race(home: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    start.wait()
    out.put(credentials.api_token(Settings(home=Path(home))))


def test_racing_processes_end_with_one_value(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    values = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
    assert values == {(tmp_path / "api_token").read_text()}
    assert os.listdir(tmp_path) == ["api_token"]  # no temporary file left behind
