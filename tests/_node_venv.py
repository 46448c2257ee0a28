"""A virtualenv for a second Ray node: Ray, pyarrow and the data libraries, not celeray.

The packages are the ones this test venv has, at the same versions (a Ray cluster needs
one Ray and one Python), found by walking the installed distributions' requirements from
:data:`celeray.ray_env.NODE_REQUIREMENTS`, and installed with ``--no-deps`` from pip's
cache and configured wheel folders, so building takes seconds, not a resolve.
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = ["build_node_venv", "node_requirements"]

_OWN = {"celeray"}  # never on the node: that is what the test is about


def node_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` of every distribution the node needs (plus ``extra``, e.g. s3fs
    for object storage), as installed here."""
    from celeray.ray_env import NODE_REQUIREMENTS

    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in (*NODE_REQUIREMENTS, *extra)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in _OWN:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this venv does not have either
        if name in pins and not req.extras:
            continue  # its requirements are walked already
        pins[name] = dist.version
        for text in dist.requires or []:
            dep = Requirement(text)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep)
    return sorted(f"{name}=={version}" for name, version in pins.items())


def build_node_venv(folder: Path, extra: tuple[str, ...] = ()) -> tuple[Path, float]:
    """Create the node's virtualenv in ``folder``; return its ``bin`` and the seconds taken."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True,
                   cwd=folder.parent, capture_output=True)
    python = folder / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--quiet", "--disable-pip-version-check", *node_requirements(extra)],
        cwd=folder.parent, capture_output=True, text=True, timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the node venv failed:\n{done.stdout}\n{done.stderr}")
    return folder / "bin", time.perf_counter() - started
