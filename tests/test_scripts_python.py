"""scripts/_python.sh: which Python makes the scripts' virtualenv, and which virtualenv.

The candidates are stand-ins on a PATH of their own: each answers the "works and is 3.11 or
newer" probe as a real interpreter of that kind would (a pyenv shim of an unselected
version fails to run; a Python 3.10 answers no).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "_python.sh"


def _fake(folder: Path, name: str, *, works: bool, version: str = "3.12") -> Path:
    """An executable ``name`` that passes or fails the probe and prints ``version``."""
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'case "$2" in *ensurepip*) exit {0 if works else 1};; esac\n'
        f"echo {version}\n"
    )
    path.chmod(0o755)
    return path


def _run(call: str, folder: Path, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Source the script in bash with only ``folder`` (and /bin for the shell) on the PATH."""
    return subprocess.run(
        ["/bin/bash", "-c", f". {SCRIPT}; {call}"], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{folder}:/nonexistent", **(env or {})}, cwd=cwd,
    )


@pytest.mark.parametrize(("present", "expected"), [
    ({"python3": True, "python3.13": True, "python3.11": True}, "python3"),
    ({"python3": False, "python3.13": True, "python3.12": True}, "python3.13"),
    ({"python3": False, "python3.13": False, "python3.12": True, "python3.11": True},
     "python3.12"),
    ({"python3": False, "python3.11": True}, "python3.11"),
])
def test_python3_when_it_works_else_the_newest_working_one(
    tmp_path: Path, present: dict[str, bool], expected: str
) -> None:
    for name, works in present.items():
        _fake(tmp_path, name, works=works)
    result = _run("celeray_python", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_no_working_python_says_what_to_do(tmp_path: Path) -> None:
    _fake(tmp_path, "python3", works=False)
    result = _run("celeray_python", tmp_path)
    assert result.returncode == 1
    assert "set PYTHON" in result.stderr


def test_python_wins_and_must_work(tmp_path: Path) -> None:
    _fake(tmp_path, "python3", works=True)
    mine = _fake(tmp_path, "mine", works=True)
    assert _run("celeray_python", tmp_path, {"PYTHON": str(mine)}).stdout.strip() == str(mine)
    broken = _fake(tmp_path, "broken", works=False)
    result = _run("celeray_python", tmp_path, {"PYTHON": str(broken)})
    assert result.returncode == 1
    assert f"PYTHON={broken} is not a working Python" in result.stderr


def test_the_real_interpreter_passes_the_probe(tmp_path: Path) -> None:
    result = _run("celeray_python", tmp_path, {"PYTHON": sys.executable})
    assert result.stdout.strip() == sys.executable, result.stderr


def test_venv_defaults_to_dot_venv_and_can_be_named(tmp_path: Path) -> None:
    assert _run('echo "$VENV"', tmp_path).stdout.strip() == ".venv"
    assert _run('echo "$VENV"', tmp_path, {"VENV": ".venv-3.13"}).stdout.strip() == ".venv-3.13"


def test_an_existing_venv_of_another_python_is_refused(tmp_path: Path) -> None:
    """PYTHON=3.13 with a 3.12 .venv would test 3.12 silently: stop and name the way out."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    _fake(tmp_path / ".venv" / "bin", "python", works=True, version="3.12")
    py313 = _fake(tmp_path, "py313", works=True, version="3.13")
    result = _run("celeray_venv", tmp_path, {"PYTHON": str(py313)}, cwd=tmp_path)
    assert result.returncode == 1
    assert ".venv has Python 3.12, PYTHON=" in result.stderr
    assert "VENV=.venv-3.13" in result.stderr
