"""The layers beyond what import-linter checks (pyproject.toml), and celeray's own top-level
modules: a user's ``tasks.py`` (or ``ray_jobs/``, ``beat_schedule.py``) never replaces them
silently (celeray/toplevel.py, docs/layers.md)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from celeray import toplevel
from celeray.ray_env import NODE_REQUIREMENTS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOSTILE = "open({marker!r}, 'w').close()\nraise SystemExit('a hostile {name} ran')\n"
# What the packages of NODE_REQUIREMENTS bring along and ray_jobs imports too.
BROUGHT_ALONG = {"numpy"}  # Ray's own dependency


def _contract(contract_id: str) -> dict[str, object]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (found,) = (c for c in config["contracts"] if c["id"] == contract_id)
    return dict(found)


def test_beat_schedule_imports_neither_side() -> None:
    """import-linter cannot take a single-module root: this is its contract for it."""
    tree = ast.parse((REPO / "beat_schedule.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}  # fmt: skip
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert names & {"tasks", "ray_jobs"} == set()
    assert "celeray" in names


def test_ray_jobs_needs_only_what_a_ray_node_has() -> None:
    """Everything ray_jobs imports, even indirectly and inside functions: the standard
    library, NODE_REQUIREMENTS (what celeray's docs tell a Ray node to install) and the
    bottom layer of the core, which ships with it."""
    graph = grimp.build_graph("celeray", "tasks", "ray_jobs", include_external_packages=True)
    reached = graph.find_upstream_modules("ray_jobs", as_package=True)
    external = {m for m in reached if "." not in m and m not in sys.stdlib_module_names
                and m not in ("celeray", "tasks")}  # fmt: skip
    node = {r.split("[")[0].replace("-", "_") for r in NODE_REQUIREMENTS}
    assert external <= node | BROUGHT_ALONG, external - node - BROUGHT_ALONG
    layers = _contract("core")["layers"]
    assert isinstance(layers, list)
    bottom = {f"celeray.{m.strip()}" for m in layers[-1].split(":")}
    core = {m for m in reached if m.startswith("celeray.")}
    assert core <= bottom, core - bottom


def test_celerays_own_modules_are_found_where_celeray_is() -> None:
    assert toplevel.shadowed(toplevel.ALL) == []
    assert toplevel.location("tasks") == toplevel.home() / "tasks"
    assert toplevel.location("beat_schedule") == toplevel.home() / "beat_schedule.py"


def _hostile_folder(root: Path) -> tuple[Path, Path]:
    """A folder with a tasks.py, a ray_jobs/ without __init__.py and a beat_schedule.py
    that each leave a marker when run."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / "ran"
    (root / "tasks.py").write_text(HOSTILE.format(marker=str(marker), name="tasks"))
    (root / "beat_schedule.py").write_text(HOSTILE.format(marker=str(marker), name="beat"))
    (root / "ray_jobs").mkdir(exist_ok=True)  # a plain folder: a namespace package
    (root / "ray_jobs" / "dispatcher.py").write_text(HOSTILE.format(marker=str(marker),
                                                                    name="ray_jobs"))  # fmt: skip
    return root, marker


def test_a_hostile_module_is_named_and_never_run(tmp_path: Path) -> None:
    folder, marker = _hostile_folder(tmp_path / "project")
    problems = toplevel.shadowed(toplevel.TOP_LEVEL, first=[folder])
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{folder / 'tasks.py'} hides celeray's own 'tasks' "
                                  f"({toplevel.home() / 'tasks'})")  # fmt: skip
    assert f"{folder / 'ray_jobs'} hides celeray's own 'ray_jobs'" in problems[1]
    assert f"{folder / 'beat_schedule.py'} hides" in problems[2]
    assert all("Celery and Ray search that folder first" in p for p in problems)
    with pytest.raises(toplevel.ShadowedModuleError, match="rename or move it"):
        toplevel.check(first=[folder])
    assert not marker.exists()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERAY_")}
    return {**env, "CELERAY_MONITOR_ONLY": "true", "COLUMNS": "400", **extra}


def test_celery_dash_a_tasks_refuses_a_hostile_sibling_in_its_folder(tmp_path: Path) -> None:
    """``celery -A tasks`` in a folder with someone's beat_schedule.py: celeray's tasks is
    imported (Celery puts the folder first), checks its siblings and names the file."""
    folder = tmp_path / "here"
    folder.mkdir()
    marker = folder / "ran"
    (folder / "beat_schedule.py").write_text(HOSTILE.format(marker=str(marker), name="beat"))
    out = subprocess.run([str(BIN / "celery"), "-A", "tasks", "report"], cwd=folder,
                         env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert f"{folder / 'beat_schedule.py'} hides celeray's own 'beat_schedule'" in text
    assert "in the current folder, which `celery -A` searches first" in text
    assert not marker.exists()


def test_celeray_up_refuses_before_starting_anything(tmp_path: Path) -> None:
    """A tasks.py on PYTHONPATH would be what every worker of the stack imports: ``celeray
    up`` names it and starts nothing (no supervisord, no file in the home)."""
    folder, marker = _hostile_folder(tmp_path / "mine")
    home = tmp_path / "home"
    out = subprocess.run(
        [str(BIN / "celeray"), "up"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=_env(PYTHONPATH=str(folder), CELERAY_HOME=str(home),
                 CELERAY_PIPELINES=str(tmp_path / "pipelines.toml")),
    )  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text
    assert "the stack would not run celeray's own code" in text
    assert f"{folder / 'tasks.py'} hides celeray's own 'tasks'" in text
    assert "(its folder is on PYTHONPATH)" in text
    assert not marker.exists() and not home.exists()


def test_a_foreign_ray_jobs_is_never_shipped_to_ray_nodes(tmp_path: Path) -> None:
    folder, marker = _hostile_folder(tmp_path / "mine")
    code = "from celeray.ray_env import code_paths; print(code_paths())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=_env(PYTHONPATH=str(folder)))  # fmt: skip
    assert out.returncode == 1
    assert f"ShadowedModuleError: {folder / 'ray_jobs'} hides celeray's own 'ray_jobs'" in \
        out.stderr  # fmt: skip
    assert not marker.exists()
