"""The runtime_env celeray builds: what it ships, what the pipeline file may add, and that
the code it ships imports nothing of the Celery side."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from celeray.pipelines import load_pipelines
from celeray.ray_env import (
    RayEnv,
    RayEnvError,
    code_paths,
    env_var_problem,
    job_runtime_env,
    pipeline_extras,
    transform_package,
)
from tests._pipeline_file import validate_file

REPO = Path(__file__).resolve().parent.parent
MINIMAL = '[pipelines.p]\nsource = "file:///land/*.csv"\nsink = "file:///lake/x"\n'


def _issues(tmp_path: Path, ray_env: str) -> list[str]:
    path = tmp_path / "pipelines.toml"
    path.write_text(MINIMAL + "[pipelines.p.ray_env]\n" + ray_env + "\n")
    return [str(i) for i in validate_file(path)]


def test_ray_env_from_the_pipeline_file_reaches_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.toml"
    path.write_text(MINIMAL + '[pipelines.p.ray_env]\npip = ["rapidfuzz==3.9.7"]\n'
                    'env_vars = { CLEAN_MODE = "strict" }\n')
    plan = load_pipelines(path)["p"].to_plan()
    assert plan["ray_env"] == {"pip": ["rapidfuzz==3.9.7"], "env_vars": {"CLEAN_MODE": "strict"}}
    assert pipeline_extras(plan) == {"pip": ["rapidfuzz==3.9.7"],
                                     "env_vars": {"CLEAN_MODE": "strict"}}
    path.write_text(MINIMAL)
    bare = load_pipelines(path)["p"].to_plan()
    assert bare["ray_env"] is None and pipeline_extras(bare) is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('env_vars = { AWS_SECRET_ACCESS_KEY = "x" }', "looks like a secret"),
        ('env_vars = { API_TOKEN = "x" }', "looks like a secret"),
        ('env_vars = { DB_PASSWORD = "x" }', "looks like a secret"),
        ('env_vars = { CELERAY_HOME = "/x" }', "is reserved"),
        ('env_vars = { RAY_AUTH_MODE = "disabled" }', "is reserved"),
        ('env_vars = { PYTHONPATH = "/x" }', "is reserved"),
        ('env_vars = { PYTHONSTARTUP = "/x" }', "is reserved"),
        ('env_vars = { LD_PRELOAD = "/x.so" }', "is reserved"),
        ('env_vars = { LD_AUDIT = "/x.so" }', "is reserved"),
        ('env_vars = { RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = "1" }', "is reserved"),
        ('env_vars = { AWS_ENDPOINT_URL = "http://evil" }', "is reserved"),
        ('env_vars = { PATH = "/x" }', "is reserved"),
        ('env_vars = { GLIBC_TUNABLES = "x" }', "is reserved"),
        ('env_vars = { "BAD-NAME" = "x" }', "letters, digits"),
        ("env_vars = { N = 3 }", "expected a string"),
        ('pip = ["--index-url=https://example.org/simple"]', "options are not allowed"),
        ('pip = ["pkg @ https://user:pw@example.org/pkg.whl"]', "credentials"),
        ('pip = [""]', "empty requirement"),
        ('pip = "rapidfuzz"', "expected"),
        ("colour = 1", "unknown key 'colour'"),
    ],
)
def test_bad_ray_env_names_the_key(tmp_path: Path, body: str, fragment: str) -> None:
    issues = _issues(tmp_path, body)
    assert len(issues) == 1, issues
    assert issues[0].startswith("pipelines.p.ray_env.") and fragment in issues[0], issues


NAMES_REFUSED = ["CELERAY_BROKER_URL", "CELERAY_RESULT_BACKEND", "CELERAY_API_TOKEN",
                 "RAY_AUTH_MODE", "RAY_ADDRESS", "PYTHONPATH", "PYTHONHOME", "LD_PRELOAD",
                 "LD_LIBRARY_PATH", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "path", "BAD-NAME"]


@pytest.mark.parametrize("name", NAMES_REFUSED)
def test_one_rule_at_validation_and_when_the_runtime_env_is_built(name: str) -> None:
    problem = env_var_problem(name)
    assert problem is not None and repr(name) in problem
    with pytest.raises(ValueError, match="env_vars name"):
        RayEnv(env_vars={name: "x"})
    # A plan that skipped validation (an old one, or a message) is refused all the same.
    plan = {"transform": None, "ray_env": {"pip": [], "env_vars": {"OK_NAME": "1", name: "x"}}}
    with pytest.raises(RayEnvError, match=re.escape(repr(name))):
        pipeline_extras(plan)
    assert env_var_problem("CLEAN_MODE") is None


def test_the_job_ships_ray_jobs_and_the_core() -> None:
    env = job_runtime_env()
    # No env_vars from the driver: Ray workers get the raylet's (scrubbed) environment only.
    assert set(env) == {"py_modules", "excludes"}
    assert [Path(p).name for p in env["py_modules"]] == ["ray_jobs", "celeray"]
    assert all(Path(p).is_dir() for p in code_paths())
    assert "__pycache__" in env["excludes"]


def test_only_a_transform_package_that_is_not_installed_is_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "clean.py").write_text("def fn(t):\n    return t\n")
    (tmp_path / "single_mod.py").write_text("def fn(t):\n    return t\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert transform_package("my_pkg.clean:fn") == str(tmp_path / "my_pkg")
    assert transform_package("single_mod:fn") == str(tmp_path / "single_mod.py")
    assert pipeline_extras({"transform": "my_pkg.clean:fn", "ray_env": None}) == {
        "py_modules": [str(tmp_path / "my_pkg")]}
    assert transform_package("pyarrow.compute:abs") is None  # installed: belongs on nodes
    assert transform_package("json:loads") is None  # the standard library
    assert transform_package("ray_jobs.process:process_unit") is None  # shipped by the job
    assert transform_package("no_such_package_here.x:f") is None
    assert transform_package(None) is None
    assert "my_pkg" not in sys.modules  # found, not imported


def test_ray_env_is_frozen_and_plain() -> None:
    env = RayEnv(pip=("a==1",), env_vars={"MODE": "x"})
    assert env.to_plan() == {"pip": ["a==1"], "env_vars": {"MODE": "x"}}
    assert RayEnv().to_plan() is None


def test_the_shipped_code_imports_no_celery_side() -> None:
    """What a Ray node imports of celeray pulls in no Celery, kombu, Flask or Redis client."""
    code = (
        "import sys\n"
        "import ray_jobs.dispatcher, ray_jobs.process, ray_jobs.units, ray_jobs.merge\n"
        "heavy = {'celery', 'kombu', 'flask', 'redis', 'billiard', 'pydantic_settings'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERAY_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
