"""A pipeline's ``transform`` (``"module.path:attr"``): its parts, and loading it.

:func:`load` is the one way a transform is loaded: Ray workers load each batch's transform
with it (:mod:`ray_jobs.transforms`), and ``celeray validate`` runs it in a child process
(:mod:`celeray.transform_probe`), so both report a problem in the same words. Each failure
says which of :data:`KINDS` it is: the module is not there, importing it raised, the
attribute is missing, or it is not a callable. Imports only the standard library: Ray nodes
import this module.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import traceback
from collections.abc import Callable
from typing import Any

from celeray.errors import TransformError

__all__ = ["KINDS", "TransformLoadError", "describe", "find", "load", "parts"]

KINDS = ("form", "not_found", "import_failed", "no_attribute", "not_callable")


class TransformLoadError(TransformError):
    """The transform cannot be loaded; ``kind`` (one of :data:`KINDS`) says why."""

    def __init__(self, spec: str, kind: str, message: str, missing: str | None = None) -> None:
        super().__init__(f"transform {spec!r}: {message}")
        self.spec = spec
        self.kind = kind
        self.missing = missing  # the module not found: the transform's own or one it imports


def parts(spec: str) -> tuple[str, str]:
    """``(module, attribute path)`` of ``"module.path:attr"``; nothing is imported."""
    module_name, sep, attr = spec.partition(":")
    names = [*module_name.split("."), *attr.split(".")]
    if not sep or not all(n.isidentifier() for n in names):
        raise TransformLoadError(
            spec, "form",
            "must look like 'module.path:function' (a (pyarrow.Table) -> pyarrow.Table callable)",
        )  # fmt: skip
    return module_name, attr


def describe(exc: BaseException) -> str:
    """``exc`` as ``Type: message (at file:line)``, the line being the last one not Python's."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ")]  # fmt: skip
    return f"{text} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else text


def _is_the_module(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``exc`` says the module itself (or a package above it) is missing, rather
    than something it imports."""
    return exc.name is not None and (module_name + ".").startswith(exc.name + ".")


def load(spec: str) -> Callable[..., Any]:
    """Import the module of ``spec`` and return the callable it names (``attr`` may be dotted).

    Raises :class:`TransformLoadError`; an exception the module's own code raised while
    being imported is chained. ``SystemExit`` and ``KeyboardInterrupt`` pass through.
    """
    module_name, attr = parts(spec)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_the_module(exc, module_name):
            raise TransformLoadError(
                spec, "import_failed", f"importing {module_name!r} raised {describe(exc)}",
                missing=exc.name,
            ) from exc  # fmt: skip
        raise TransformLoadError(
            spec, "not_found",
            f"module {exc.name!r} is not found (not installed here, nor on PYTHONPATH)",
            missing=exc.name,
        ) from None  # fmt: skip
    except Exception as exc:
        raise TransformLoadError(
            spec, "import_failed", f"importing {module_name!r} raised {describe(exc)}"
        ) from exc
    where = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TransformLoadError(
                spec, "no_attribute", f"{where!r} has no attribute {part!r}"
            ) from None
        where = f"{where}.{part}"
    if not callable(obj):
        raise TransformLoadError(
            spec, "not_callable", f"{attr!r} is not a callable but {type(obj).__name__!r} data"
        )
    return obj


def find(spec: str, path: list[str] | None = None) -> None:
    """Raise :class:`TransformLoadError` (``not_found``) when the module of ``spec`` cannot
    be found; nothing is run (``celeray validate --no-import``).

    ``importlib.util.find_spec("a.b.c")`` would import (run) ``a`` and ``a.b`` to find
    ``a.b.c``; this looks each part up with the path finders instead, in the packages'
    search locations, so no module's code runs. Whether the module has the attribute
    cannot be told without running it (:func:`load` does that). ``path`` replaces
    ``sys.path`` for the top-level package (tests).
    """
    module_name, _ = parts(spec)
    names = module_name.split(".")
    locations: Any = path
    for depth in range(len(names)):
        name = ".".join(names[: depth + 1])
        found: Any
        if name in sys.modules and path is None:
            found = getattr(sys.modules[name], "__spec__", None)
        elif depth == 0 and path is None:
            found = importlib.util.find_spec(name)  # a top-level name has no parent to run
        elif depth and locations is None:
            parent = ".".join(names[:depth])
            raise TransformLoadError(spec, "not_found", f"{parent!r} is a module, not a package",
                                     missing=name)  # fmt: skip
        else:
            found = importlib.machinery.PathFinder.find_spec(name, locations)
        if found is None:
            where = f"package {'.'.join(names[:depth])!r}" if depth else "the Python path"
            raise TransformLoadError(
                spec, "not_found",
                f"module {name!r} is not found in {where} of this interpreter (is its package "
                "installed here?)", missing=name,
            )  # fmt: skip
        locations = found.submodule_search_locations
