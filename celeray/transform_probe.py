"""Import a pipeline's ``transform`` as a Ray worker would, in a child process.

``celeray validate`` uses it: a transform that is missing, raises on import, lacks its
attribute or is not a callable is reported before a run fails on it. A Ray worker loads
the transform with :func:`celeray.transform_ref.load` from what is installed and from
``PYTHONPATH`` (which the stack inherits from ``celeray up``; a package found there is
shipped to the nodes, :func:`celeray.ray_env.transform_package`), never from the folder
the command was run in. So the child is the same interpreter with the same
``PYTHONPATH``, started with ``-P`` (the current folder is not searched), in an empty
temporary folder (whatever the module writes at import is dropped), with the environment
Ray's workers get (:func:`celeray.ray_private.worker_environ`: celeray's secrets left out)
plus the pipeline's ``ray_env.env_vars``. The module's code runs there: its side effects,
a crash, ``sys.exit`` or a hang end only the child, which is killed with its process group
after :data:`TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from celeray.ray_private import worker_environ
from celeray.transform_ref import TransformLoadError, describe, load

__all__ = ["TIMEOUT", "Probe", "key", "probe", "probe_all"]

TIMEOUT = 60.0  # seconds for one import: a module that loads a model may take a while
_PARALLEL = 4  # children at once
_RESULT = "result.json"
_CHILD = "from celeray.transform_probe import _child; _child()"


@dataclass(frozen=True)
class Probe:
    """What importing one transform gave: ``kind`` None when it loaded; else one of
    :data:`celeray.transform_ref.KINDS`, ``crashed`` or ``timeout``."""

    spec: str
    kind: str | None
    message: str
    missing: str | None = None  # a module not found: the transform's own or one it imports

    @property
    def ok(self) -> bool:
        return self.kind is None


def _child() -> None:
    """The child's side: load ``argv[1]``, write the outcome as JSON to ``argv[2]``, exit."""
    spec, out = sys.argv[1], sys.argv[2]
    try:
        load(spec)
        result = {"kind": None, "message": f"transform {spec!r}: ok"}
    except TransformLoadError as exc:
        result = {"kind": exc.kind, "message": str(exc), "missing": exc.missing}
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by the module
        module = spec.partition(":")[0]
        result = {"kind": "import_failed",
                  "message": f"transform {spec!r}: importing {module!r} raised {describe(exc)}"}
    Path(out).write_text(json.dumps(result), encoding="utf-8")
    os._exit(0)  # not the module's atexit handlers or threads


def _ended(spec: str, code: int, stderr: str) -> Probe:
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    tail = " ".join(stderr.strip().splitlines()[-3:])[-300:]
    module = spec.partition(":")[0]
    return Probe(spec, "crashed", f"transform {spec!r}: importing {module!r} ended the "
                 f"process: it {how}" + (f" ({tail})" if tail else ""))  # fmt: skip


def probe(spec: str, env_vars: Mapping[str, str] | None = None,
          timeout: float = TIMEOUT) -> Probe:  # fmt: skip
    """Import ``spec`` in a child process as a Ray worker would and say what came of it."""
    env = {**worker_environ(os.environ)[0], **(env_vars or {})}
    with tempfile.TemporaryDirectory(prefix="celeray-probe-") as folder:
        out = Path(folder) / _RESULT
        proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _CHILD, spec, str(out)], cwd=folder, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Probe(spec, "timeout", f"transform {spec!r}: importing it did not finish "
                         f"within {timeout:g} s")  # fmt: skip
        finally:
            with contextlib.suppress(ProcessLookupError):  # what the module started, too
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            result = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return _ended(spec, proc.returncode, stderr)
    return Probe(spec, result["kind"], result["message"], result.get("missing"))


def probe_all(
    wanted: Iterable[tuple[str, Mapping[str, str]]], timeout: float = TIMEOUT
) -> dict[tuple[str, tuple[tuple[str, str], ...]], Probe]:
    """:func:`probe` of each distinct ``(spec, env_vars)``, a few at a time.

    Keyed by ``(spec, sorted env_vars items)``: see :func:`key`.
    """
    distinct = {key(spec, env): (spec, env) for spec, env in wanted}
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        futures = {k: pool.submit(probe, spec, env, timeout) for k, (spec, env) in
                   distinct.items()}  # fmt: skip
        return {k: f.result() for k, f in futures.items()}


def key(spec: str, env_vars: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key of one probe in :func:`probe_all`'s answer."""
    return spec, tuple(sorted(env_vars.items()))
