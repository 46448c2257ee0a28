"""The fault suite's test-only kill points: inert unless armed, one kill per arming, and
named nowhere production reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from celeray import kill_points

ROOT = Path(__file__).resolve().parents[1]
CHILD = ("from celeray import kill_points; kill_points.reach({point!r}, {batch!r}); "
         "print('alive')")  # fmt: skip


def _reach(point: str, batch: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", CHILD.format(point=point, batch=batch)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_inert_without_the_variable_or_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(kill_points.ENV, raising=False)
    kill_points.reach(kill_points.AFTER_LEDGER_ENTRY, "b1")  # returns: no variable
    monkeypatch.setenv(kill_points.ENV, str(tmp_path / "absent"))
    kill_points.reach(kill_points.AFTER_LEDGER_ENTRY, "b1")  # returns: not armed


def test_armed_point_kills_once_and_only_its_batch(tmp_path: Path) -> None:
    import os

    arm = tmp_path / "kill"
    env = {**os.environ, kill_points.ENV: str(arm)}
    arm.write_text(f"{kill_points.AFTER_DELTA_COMMIT} b2")
    other_point = _reach(kill_points.AFTER_LEDGER_ENTRY, "b2", env)
    other_batch = _reach(kill_points.AFTER_DELTA_COMMIT, "b1", env)
    assert other_point.stdout.strip() == other_batch.stdout.strip() == "alive"
    killed = _reach(kill_points.AFTER_DELTA_COMMIT, "b2", env)
    assert killed.returncode == -9 and not killed.stdout
    assert not arm.exists() and (tmp_path / "kill.fired").read_text().split()[2] == "b2"
    again = _reach(kill_points.AFTER_DELTA_COMMIT, "b2", env)  # fired once: inert now
    assert again.returncode == 0 and again.stdout.strip() == "alive"


def test_no_setting_or_deploy_file_names_the_variable() -> None:
    from celeray.settings import Settings

    assert not any(kill_points.ENV.lower().removeprefix("celeray_") == name
                   for name in Settings.model_fields)  # fmt: skip
    deploy = [ROOT / "Dockerfile", ROOT / "docker-compose.yml", *ROOT.glob("supervisor/*"),
              ROOT / "celeray" / "supervisord.conf", *ROOT.glob("scripts/*"),
              ROOT / "docs" / "settings.md", ROOT / "docs" / "deployment.md"]  # fmt: skip
    for path in deploy:
        if path.is_file():
            assert kill_points.ENV not in path.read_text(errors="replace"), path
