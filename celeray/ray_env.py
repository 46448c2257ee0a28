"""The Ray ``runtime_env`` celeray builds, so a Ray node needs no celeray installed.

A Ray node needs Ray, pyarrow and the data libraries ``ray_jobs`` imports
(:data:`NODE_REQUIREMENTS`); the code reaches it through Ray:

- job level (``ray.init(runtime_env=job_runtime_env())`` in the ``ray`` worker):
  ``py_modules`` with the ``ray_jobs`` and ``celeray`` packages. ``ray_jobs`` imports only
  the core's bottom layer, and ``celeray/__init__.py`` imports nothing, so no Celery, Flask
  or Redis client is needed (import-linter's contracts in ``pyproject.toml`` and
  ``tests/test_layers.py`` keep it so).
- task level (:func:`pipeline_extras`, applied per Ray task by ``ray_jobs.dispatcher``):
  the top-level package of the pipeline's ``transform`` when it is not an installed
  distribution, and the pipeline's ``[ray_env]`` ``pip`` and ``env_vars``.

Ray uploads a local package once per content hash and caches it on each node, so shipping
costs nothing per task once a node has it. Pure: imports neither Ray nor Celery.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sysconfig
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from celeray import toplevel
from celeray.errors import CelerayError

__all__ = [
    "CODE_PACKAGES",
    "EXCLUDES",
    "NODE_REQUIREMENTS",
    "RayEnv",
    "RayEnvError",
    "code_paths",
    "env_var_problem",
    "job_runtime_env",
    "pipeline_extras",
    "transform_package",
]

# What a Ray task imports of this project: ray_jobs, and the core modules ray_jobs imports.
CODE_PACKAGES = ("ray_jobs", "celeray")
# Compiled files differ between hosts and Python builds: shipping them would only change
# the package's hash (a new upload) without being used.
EXCLUDES = ("__pycache__", "*.pyc")
# What a Ray node must have installed besides Python (ray_jobs' imports, psutil for the
# dispatcher's memory check); "ray[default]" also brings the runtime_env agent.
NODE_REQUIREMENTS = ("ray[default]", "pyarrow", "duckdb", "zstandard", "fsspec", "psutil",
                     "deltalake")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names that hold secrets by convention; the pipeline file is no place for them.
_SECRET_NAME = re.compile(r"(?i)(SECRET|PASSW|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_))")
# Set by celeray and Ray themselves (settings, auth, one-machine mode), or the node's own
# (its S3 credential chain); and names that change what code a process loads or runs
# (the interpreter's and the dynamic linker's paths and hooks, the shell's start files).
_RESERVED = ("CELERAY_", "RAY_", "AWS_", "PYTHON", "LD_", "DYLD_", "MALLOC_")
_RESERVED_NAMES = frozenset({"PATH", "HOME", "GCONV_PATH", "GLIBC_TUNABLES", "BASH_ENV", "ENV",
                             "PERL5LIB", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "TMPDIR"})
_URL_USERINFO = re.compile(r"://[^/@\s]*@")


class RayEnvError(CelerayError):
    """A pipeline's ``ray_env`` names an environment variable its Ray tasks may not get."""


def env_var_problem(name: str) -> str | None:
    """Why ``name`` may not be one of a pipeline's ``ray_env.env_vars``, or None if it may.

    The one rule, applied when the pipeline file is validated (:class:`RayEnv`) and again
    when a batch's ``runtime_env`` is built (:func:`pipeline_extras`), so that a value that
    skipped validation (an old plan, a message) cannot reach a Ray worker either.
    """
    if not _ENV_NAME.match(name):
        return f"env_vars name {name!r}: use letters, digits and '_'"
    if _SECRET_NAME.search(name):
        return (f"env_vars name {name!r} looks like a secret; env_vars travel in messages and "
                "Ray's metadata: give nodes secrets through their own environment instead")
    if name.upper().startswith(_RESERVED) or name.upper() in _RESERVED_NAMES:
        return (f"env_vars name {name!r} is reserved (CELERAY_*, RAY_*, AWS_*, PYTHON*, LD_*, "
                "PATH...): celeray, Ray and the node set these, or they change what code runs")
    return None


class RayEnv(BaseModel):
    """``[pipelines.NAME.ray_env]``: what the pipeline's Ray tasks need beyond celeray's code.

    ``pip`` lists requirement specifiers Ray installs into a virtualenv on each node (once
    per node and list; nodes need an index they can reach). ``env_vars`` are plain settings
    of the transform, never secrets: they travel in Celery messages and in Ray's job
    metadata. Secret-looking names (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*_KEY``),
    ``CELERAY_*``, ``RAY_*``, ``AWS_*`` and what changes the code a process loads
    (``PYTHON*``, ``LD_*``, ``PATH``...) are refused (:func:`env_var_problem`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pip: tuple[StrictStr, ...] = ()
    env_vars: dict[str, StrictStr] = Field(default_factory=dict)

    @field_validator("pip")
    @classmethod
    def _check_pip(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for spec in value:
            if not spec.strip():
                raise ValueError("pip has an empty requirement")
            if spec.lstrip().startswith("-"):
                raise ValueError(
                    f"pip entry {spec!r}: options are not allowed, only requirements "
                    "(e.g. 'rapidfuzz==3.9.7'); configure indexes on the nodes"
                )
            if _URL_USERINFO.search(spec):
                raise ValueError(
                    "a pip entry holds a URL with credentials; the pipeline file is no "
                    "place for secrets (configure the index on the nodes)"
                )
        return tuple(s.strip() for s in value)

    @field_validator("env_vars")
    @classmethod
    def _check_env_vars(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if (problem := env_var_problem(name)) is not None:
                raise ValueError(problem)
        return value

    def to_plan(self) -> dict[str, Any] | None:
        """The JSON-able form carried in a job's plan; None when there is nothing to add."""
        if not self.pip and not self.env_vars:
            return None
        return {"pip": list(self.pip), "env_vars": dict(self.env_vars)}


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        return locations[0] if len(locations) == 1 else None
    return spec.origin if spec.origin and spec.origin.endswith(".py") else None


def code_paths() -> list[str]:
    """Local folders of :data:`CODE_PACKAGES`, as this process imports them.

    Only celeray's own: a ``ray_jobs`` from elsewhere on the path raises
    :class:`celeray.toplevel.ShadowedModuleError` rather than being shipped to every node.
    """
    toplevel.check(CODE_PACKAGES)
    paths = []
    for name in CODE_PACKAGES:
        path = _package_dir(name)
        if path is None:
            raise ImportError(f"cannot locate the {name!r} package to ship to Ray nodes")
        paths.append(path)
    return paths


def job_runtime_env() -> dict[str, Any]:
    """The ``runtime_env`` of the ``ray`` worker's Ray job: celeray's own code."""
    return {"py_modules": code_paths(), "excludes": list(EXCLUDES)}


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def transform_package(spec: str | None) -> str | None:
    """The local folder (or ``.py`` file) of the top-level package of ``spec`` to ship.

    ``spec`` is ``"pkg.module:function"``. None when there is no transform, when the
    package cannot be found here (the Ray task then reports the import error), when it is
    celeray's own, or when it is installed (stdlib or site-packages): an installed
    distribution belongs on the nodes or in ``ray_env.pip``. Found without importing it.
    """
    if not spec:
        return None
    top = spec.partition(":")[0].split(".")[0]
    if not top or top in CODE_PACKAGES:
        return None
    try:
        path = _package_dir(top)
    except (ImportError, ValueError):
        return None
    if path is None or os.path.realpath(path).startswith(_installed_roots()):
        return None
    return path


def pipeline_extras(plan: dict[str, Any]) -> dict[str, Any] | None:
    """What a job's Ray tasks need beyond the job's ``runtime_env``, or None.

    ``py_modules`` holds local paths (the transform's package); the dispatcher uploads
    them and adds the job's own ``py_modules``, since a task's ``py_modules`` replaces the
    job's. ``pip`` and ``env_vars`` come from the pipeline's ``ray_env``; an env var name
    :func:`env_var_problem` refuses raises :class:`RayEnvError` (nothing is built).
    """
    extras: dict[str, Any] = {}
    package = transform_package(plan.get("transform"))
    if package:
        extras["py_modules"] = [package]
    ray_env = plan.get("ray_env") or {}
    if ray_env.get("pip"):
        extras["pip"] = list(ray_env["pip"])
    if ray_env.get("env_vars"):
        env_vars = {str(k): str(v) for k, v in dict(ray_env["env_vars"]).items()}
        problems = [p for p in map(env_var_problem, env_vars) if p is not None]
        if problems:
            raise RayEnvError(f"refused the pipeline's ray_env: {'; '.join(problems)}")
        extras["env_vars"] = env_vars
    return extras or None
