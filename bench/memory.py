"""Peak memory of the largest single process in a process tree, sampled with psutil.

A thread samples the RSS of a root process and all its descendants every 50 ms and keeps,
per process, the highest RSS seen. The figure reported is the largest of those: the peak
of the single biggest process, not the sum of the tree (Ray's shared object store would be
counted once per process that maps it). The tree itself is found again every second
(finding it reads every process of the machine, a few ms that would otherwise be taken
from the stack being measured 20 times a second), so a process is sampled from within a
second of its start: one that lives less than that may be missed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psutil

__all__ = ["TreeSampler"]

INTERVAL = 0.05
TREE_EVERY = 20  # samples: the tree is looked up again once a second


class TreeSampler:
    """Sample the tree under ``root()`` until :meth:`stop`; use as a context manager.

    ``root`` is called at each sample, so the root may be a process that starts later; it
    returns a pid or None. ``include_root=False`` leaves the root itself out (supervisord).
    """

    def __init__(self, root: Callable[[], int | None], *, include_root: bool = True) -> None:
        self._root = root
        self._include_root = include_root
        self._peak: dict[int, tuple[int, str]] = {}
        self._first: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.samples = 0
        self._tree: list[psutil.Process] = []

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Take a last sample and stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _procs(self) -> list[psutil.Process]:
        pid = self._root()
        if pid is None:
            return []
        try:
            root = psutil.Process(pid)
            kids = root.children(recursive=True)
        except psutil.Error:
            return []
        return [root, *kids] if self._include_root else kids

    def sample(self) -> None:
        """One sample of every process in the tree."""
        if self.samples % TREE_EVERY == 0 or not self._tree:
            self._tree = self._procs()
        for proc in self._tree:
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            self._first.setdefault(proc.pid, rss)
            best = self._peak.get(proc.pid)
            if best is None or rss > best[0] * 1.05:  # a new peak: its name now (Ray renames)
                self._peak[proc.pid] = (rss, _name(proc))
            elif rss > best[0]:
                self._peak[proc.pid] = (rss, best[1])
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(INTERVAL)
        self._tree = []  # the last sample looks the tree up again
        self.sample()

    def peak(self) -> dict[str, Any]:
        """The largest process seen: ``mb`` its peak RSS, ``start_mb`` its RSS when first seen
        (a long-lived worker may hold memory from earlier work), ``pid``, ``name``, and
        ``processes``, how many processes the tree had in all."""
        if not self._peak:
            return {"mb": None, "start_mb": None, "pid": None, "name": None, "processes": 0}
        pid, (rss, name) = max(self._peak.items(), key=lambda kv: kv[1][0])
        return {"mb": round(rss / 1e6, 1), "start_mb": round(self._first[pid] / 1e6, 1),
                "pid": pid, "name": name, "processes": len(self._peak)}


    def by_name(self) -> dict[str, float]:
        """Peak RSS in MB per process name (the largest process of each name: a Celery
        worker's pool children share its name), largest first."""
        found: dict[str, float] = {}
        for rss, name in self._peak.values():
            found[name] = max(found.get(name, 0.0), round(rss / 1e6, 1))
        return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def _name(proc: psutil.Process) -> str:
    """A short, telling name: Ray workers show their task, Celery its worker name."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if "worker" in cmd and "-Q" in cmd[:-1]:  # celery -A tasks worker -Q io|ray ...
        return f"celery worker -Q {cmd[cmd.index('-Q') + 1]}"
    if any(part.endswith("/gunicorn") for part in cmd):
        return "gunicorn (API)"
    for i, part in enumerate(cmd):
        if part == "-m" and i + 1 < len(cmd):
            return f"python -m {cmd[i + 1]}"
        if part.endswith(("/celery", "/gunicorn", "/ray", "/supervisord")):
            rest = " ".join(cmd[i + 1 : i + 4])
            return f"{part.rsplit('/', 1)[1]} {rest}"[:60]
    return name
