"""celeray's own top-level modules, and a check that no module of the same name hides them.

The wheel installs ``tasks``, ``ray_jobs`` and ``beat_schedule`` beside the ``celeray``
package (in site-packages); a checkout has them beside it too. These names are the
project's contract (``celery -A tasks``), but Python imports the first module of a name it
finds: a user's own ``tasks.py`` or ``tasks/`` earlier on the path would replace celeray's
without a word. Earlier than site-packages are ``PYTHONPATH``; the folder ``celery -A``
runs in, which Celery puts first while it imports the app; and on Ray workers the folders
their driver ran in (Ray puts its working folder and script folder first).

:func:`check` refuses a module of these names that is not in the folder that holds
``celeray``, naming the file that hides it. It finds modules without running them.
``tasks`` runs it on import (a ``ray_jobs`` or ``beat_schedule`` of someone else's would be
refused before it is used), and ``celeray up`` runs it for the stack's working folder
before anything starts: when a ``tasks.py`` of the user's would be the one a worker loads,
celeray's own code never runs, so only that earlier check can say so.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from celeray.errors import CelerayError

__all__ = ["ALL", "TOP_LEVEL", "ShadowedModuleError", "check", "home", "location", "shadowed"]

TOP_LEVEL = ("tasks", "ray_jobs", "beat_schedule")  # installed beside the celeray package
ALL = ("celeray", *TOP_LEVEL)


class ShadowedModuleError(CelerayError):
    """A module named like one of celeray's comes first on the path, from somewhere else."""


def home() -> Path:
    """The folder that holds the ``celeray`` package: site-packages, or a checkout's root."""
    import celeray

    return Path(celeray.__path__[0]).resolve().parent


def _spec_location(spec: importlib.machinery.ModuleSpec) -> Path | None:
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        origin = Path(spec.origin)
        return origin.parent if spec.submodule_search_locations is not None else origin
    if spec.submodule_search_locations:  # a namespace package: a folder without __init__.py
        return Path(next(iter(spec.submodule_search_locations)))
    return None


def location(name: str, first: Sequence[str | os.PathLike[str]] = ()) -> Path | None:
    """The file (a module) or folder (a package) ``import name`` takes, or None if none.

    ``first`` are folders searched before ``sys.path``, as Celery searches the folder
    ``celery -A`` runs in. A module already imported is where it was imported from. Nothing
    is run: top-level names are found without importing a parent.
    """
    spec = None
    if first:
        spec = importlib.machinery.PathFinder.find_spec(name, [os.fspath(f) for f in first])
    if spec is None:
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            spec = loaded.__spec__
        else:
            spec = importlib.util.find_spec(name)
    return None if spec is None else _spec_location(spec)


def _why(found: Path, first: Sequence[str | os.PathLike[str]]) -> str:
    folder = os.path.realpath(found.parent)
    if any(os.path.realpath(f) == folder for f in first):
        return " (the stack's programs run there: Celery and Ray search that folder first)"
    if folder in map(os.path.realpath, filter(None, os.environ.get("PYTHONPATH", "").split(
            os.pathsep))):
        return " (its folder is on PYTHONPATH)"
    if folder == os.path.realpath(os.getcwd()):
        return " (in the current folder, which `celery -A` searches first)"
    return ""


def _own(name: str, own: Path) -> Path:
    package = own / name
    return package if package.is_dir() else own / f"{name}.py"


def shadowed(
    names: Iterable[str] = TOP_LEVEL, first: Sequence[str | os.PathLike[str]] = ()
) -> list[str]:
    """One message for each of ``names`` that would not be imported from :func:`home`."""
    own = home()
    problems = []
    for name in names:
        found = location(name, first)
        if found is None:
            problems.append(f"celeray's {name!r} cannot be found in {own}: reinstall celeray")
        elif found.resolve().parent != own:
            problems.append(
                f"{found} hides celeray's own {name!r} ({_own(name, own)}){_why(found, first)}: "
                "rename or move it"
            )
    return problems


def check(
    names: Iterable[str] = TOP_LEVEL, first: Sequence[str | os.PathLike[str]] = ()
) -> None:
    """Raise :class:`ShadowedModuleError` naming each module of ``names`` found elsewhere."""
    problems = shadowed(names, first)
    if problems:
        raise ShadowedModuleError("; ".join(problems))
