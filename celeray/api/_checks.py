"""The parts of the health check, each returning ``{"ok": bool, ...details or "error"}``.

Each check has a short timeout of its own and turns every failure into ``ok: false`` with
an error message; none raises. The API process never connects to Ray: :func:`ray` asks the
``ray`` queue's worker (task ``tasks.ray_status``) and waits at most :data:`RAY_WAIT`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psutil

from celeray.api._connections import PING_TIMEOUT, Connections
from celeray.broker import amqp_queue_depths, is_amqp
from celeray.celeryconfig import IO_QUEUE, RAY_QUEUE, TASK_NAMES
from celeray.errors import PipelineFileError

__all__ = ["INSPECT_TIMEOUT", "RAY_WAIT", "broker", "ping", "pipelines", "ray", "system",
           "workers"]

INSPECT_TIMEOUT = 1.0  # seconds workers get to answer a broadcast; a live one needs ms
RAY_WAIT = 5.0  # seconds to wait for tasks.ray_status
RAY_EXPIRES = 2 * RAY_WAIT  # a status request nobody waits for any more is dropped unrun
_POLL = 0.05
DISK_WARN_PERCENT = 95.0


def _failed(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def ping(c: Connections, url: str) -> dict[str, Any]:
    """PING the Redis at ``url``."""
    started = time.perf_counter()
    try:
        c.quick_redis(url).ping()
    except Exception as exc:
        return _failed(exc)
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def broker(c: Connections) -> dict[str, Any]:
    """PING a Redis broker, or open (and close) a connection to a RabbitMQ one."""
    url = c.settings.broker_url
    if not is_amqp(url):
        return ping(c, url)
    started = time.perf_counter()
    try:
        amqp_queue_depths(c.settings, (), timeout=PING_TIMEOUT)
    except Exception as exc:
        return _failed(exc)
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def pipelines(c: Connections, *, details: bool) -> dict[str, Any]:
    """Whether the pipeline file is valid; with ``details``, its problems when it is not.

    Problems quote values from the file (a URL with a password, say), so they are shown
    only to callers with the token.
    """
    try:
        found = c.pipelines()
    except PipelineFileError as exc:
        part = {"ok": False, "error": f"the pipeline file has {len(exc.issues)} problem(s)"}
        if details:
            part["problems"] = [str(i) for i in exc.issues]
        return part
    except Exception as exc:
        return _failed(exc)
    return {"ok": True, "count": len(found)}


def workers(c: Connections) -> dict[str, Any]:
    """Which workers consume ``io`` and ``ray``; both queues need one."""
    try:
        queues = c.client.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
    except Exception as exc:
        return _failed(exc)

    def serving(queue: str) -> list[str]:
        return sorted(w for w, qs in queues.items() if any(q.get("name") == queue for q in qs))

    io, ray_ = serving(IO_QUEUE), serving(RAY_QUEUE)
    part: dict[str, Any] = {"ok": bool(io and ray_), IO_QUEUE: io, RAY_QUEUE: ray_}
    if not part["ok"]:
        missing = [q for q, ws in ((IO_QUEUE, io), (RAY_QUEUE, ray_)) if not ws]
        part["error"] = f"no worker consumes queue(s) {', '.join(missing)}"
    return part


def _all_busy(c: Connections, names: list[str]) -> bool:
    """Whether every slot of every worker in ``names`` is running a task.

    Asks only those workers and stops as soon as each has answered (milliseconds).
    """
    inspect = c.client.control.inspect(destination=names, limit=len(names),
                                       timeout=INSPECT_TIMEOUT)  # fmt: skip
    active, stats = inspect.active() or {}, inspect.stats() or {}
    for name in names:
        slots = ((stats.get(name) or {}).get("pool") or {}).get("max-concurrency")
        if not slots or len(active.get(name) or []) < int(slots):
            return False
    return True


def ray(c: Connections, workers_part: dict[str, Any]) -> dict[str, Any]:
    """The Ray cluster as the ``ray`` worker sees it: resources and alive nodes.

    Not asked when no worker consumes ``ray``. When no answer comes within RAY_WAIT while
    every ``ray`` worker is busy, the part is ok but ``checked: false``: the workers are
    alive and driving Ray, they just have no free slot for the question.
    """
    names = list(workers_part.get(RAY_QUEUE) or [])
    if not names:
        return {"ok": False, "error": f"not checked: no worker consumes queue {RAY_QUEUE!r}"}
    client = c.client
    started = time.monotonic()
    try:
        sent = client.send_task(TASK_NAMES["ray_status"], queue=RAY_QUEUE, expires=RAY_EXPIRES)
        while True:
            meta = client.backend.get_task_meta(sent.id, cache=False)
            if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                break
            if time.monotonic() - started > RAY_WAIT:
                if _all_busy(c, names):
                    note = f"every ray worker is busy; no answer in {RAY_WAIT:g}s"
                    return {"ok": True, "checked": False, "note": note}
                return {"ok": False, "error": f"the ray worker did not answer in {RAY_WAIT:g}s"}
            time.sleep(_POLL)
        client.backend.forget(sent.id)
    except Exception as exc:
        return _failed(exc)
    result = meta.get("result")
    if meta.get("status") != "SUCCESS" or not isinstance(result, dict):
        return {"ok": False, "error": f"{meta.get('status')}: {result}"}
    return {"ok": int(result.get("nodes") or 0) > 0,
            "ms": round((time.monotonic() - started) * 1000, 1), **result}  # fmt: skip


def _local_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme in ("", "file", "local") and "::" not in url:
        return Path(unquote(parts.path))
    return None


def _disk(path: Path) -> dict[str, Any]:
    """Usage of the file system holding ``path`` (its nearest existing folder)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = psutil.disk_usage(str(probe))
    return {"path": str(path), "total": usage.total, "free": usage.free,
            "percent": usage.percent}  # fmt: skip


def system(c: Connections) -> dict[str, Any]:
    """CPU, memory, and disk usage of staging and of each local sink.

    ``ok`` is false only when psutil cannot read them; a nearly full disk or low memory is
    listed under ``warnings`` (the service still answers; runs may fail).
    """
    try:
        memory = psutil.virtual_memory()
        disks: dict[str, dict[str, Any]] = {}
        staging = _local_path(c.settings.effective_staging_url)
        if staging is not None:
            disks["staging"] = _disk(staging)
        try:
            found = c.pipelines()
        except Exception:
            found = {}
        for name, pipeline in found.items():
            sink = _local_path(pipeline.sink)
            if sink is not None:
                disks[f"sink:{name}"] = _disk(sink)
    except Exception as exc:
        return _failed(exc)
    warnings = [f"{label}: disk {d['percent']:g}% full ({d['path']})"
                for label, d in disks.items() if d["percent"] >= DISK_WARN_PERCENT]  # fmt: skip
    free = memory.available / memory.total if memory.total else 1.0
    if free < c.settings.min_free_memory:
        warnings.append(f"memory: only {free:.0%} available")
    return {
        "ok": True,
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "memory": {
            "total": memory.total,
            "available": memory.available,
            "percent": memory.percent,
        },
        "disks": disks,
        "warnings": warnings,
    }
